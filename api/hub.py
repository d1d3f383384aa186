"""What all sessions of one front-end process share: settings, Redis, the return path."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio as aioredis

from api.pool import WorkerPool
from api.queue import JobQueue
from api.returns import ReturnPath
from shared.config import Settings
from shared.connections import connect
from shared.keys import Keys
from shared.streams import ensure_jobs_group

if TYPE_CHECKING:
    from api.session import Session


@dataclass
class Hub:
    settings: Settings
    keys: Keys
    redis: aioredis.Redis
    queue: JobQueue
    returns: ReturnPath
    pool: WorkerPool
    sessions: set[Session] = field(default_factory=set)

    @classmethod
    async def open(cls, settings: Settings) -> Hub:
        keys = Keys(settings.key_prefix)
        redis = connect(settings.redis_url)
        await ensure_jobs_group(redis, keys)
        returns = ReturnPath(settings.redis_url, keys)
        await returns.start()
        return cls(
            settings=settings,
            keys=keys,
            redis=redis,
            queue=JobQueue(
                redis, keys, maxlen=settings.stream_maxlen, session_ttl=settings.session_ttl
            ),
            returns=returns,
            pool=WorkerPool(redis, keys, worker_ttl=settings.worker_ttl),
        )

    async def close(self) -> None:
        await self.returns.close()
        await self.redis.aclose()
