"""What all sessions of one front-end process share: settings, Redis, the return path."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from arq.connections import ArqRedis

from voxline.api.pool import WorkerPool
from voxline.api.returns import ReturnPath
from voxline.batch.connections import ArqUnavailable, arq_pool
from voxline.batch.results import Results
from voxline.shared.batches import Batches
from voxline.shared.config import Settings
from voxline.shared.connections import Client, connect
from voxline.shared.keys import Keys
from voxline.shared.streams import ensure_jobs_group, shard_advice
from voxline.speech.backend import LiveSession
from voxline.speech.leases import Leases
from voxline.speech.queue import JobQueue

log = logging.getLogger("voxline.api.hub")


@dataclass
class Hub:
    settings: Settings
    keys: Keys
    redis: Client
    queue: JobQueue
    returns: ReturnPath
    pool: WorkerPool
    leases: Leases
    batches: Batches
    results: Results
    # arq's Redis, where batch jobs are queued; None when arq cannot run here (a Cluster with
    # no arq_redis_url): the batch routes then answer 503 with `batch_unavailable`.
    arq: ArqRedis | None
    batch_unavailable: str = ""
    sessions: set[LiveSession] = field(default_factory=set)
    draining: bool = False  # shutting down: /readyz says not ready, new sessions are refused
    _load: tuple[int, int] = (0, 0)  # (jobs backlog, live worker slots)
    _load_at: float = -1.0

    @classmethod
    async def open(cls, settings: Settings) -> Hub:
        keys = Keys(settings.key_prefix, settings.job_shards)
        redis = connect(settings.redis_url)
        await ensure_jobs_group(redis, keys)
        if advice := shard_advice(redis, keys):
            log.warning("%s", advice)
        returns = ReturnPath(settings.redis_url, keys)
        await returns.start()
        leases = Leases(redis, keys, lease_ttl=settings.lease_ttl, session_ttl=settings.session_ttl)
        leases.start()
        arq: ArqRedis | None = None
        batch_unavailable = ""
        try:
            arq = arq_pool(settings)
        except ArqUnavailable as exc:
            # The real-time path runs on a Cluster; only the batch routes are off.
            batch_unavailable = f"batch synthesis is off: {exc}"
            log.warning("%s", batch_unavailable)
        hub = cls(
            settings=settings,
            keys=keys,
            redis=redis,
            queue=JobQueue(
                redis,
                keys,
                maxlen=settings.stream_maxlen,
                session_ttl=settings.session_ttl,
                leases=leases,
            ),
            returns=returns,
            pool=WorkerPool(
                redis, keys, worker_ttl=settings.worker_ttl, voice_aliases=settings.voice_aliases
            ),
            leases=leases,
            batches=Batches(
                redis,
                keys,
                result_ttl=settings.batch_result_ttl,
                timeout=settings.batch_timeout,
            ),
            results=Results(redis, keys, settings),
            arq=arq,
            batch_unavailable=batch_unavailable,
        )
        returns.on_lost = hub._return_path_lost
        return hub

    def _return_path_lost(self, session_ids: Collection[str] | None) -> None:
        wanted = None if session_ids is None else set(session_ids)
        for session in list(self.sessions):
            if wanted is None or session.id in wanted:
                session.abort_outstanding("lost the connection to Redis; the sentence was aborted")

    async def overloaded(self) -> str | None:
        """Why a new session must be refused now, or None. Measured, not guessed: the jobs
        backlog against the live workers' slots, both cached briefly since every new session
        asks."""
        now = time.monotonic()
        if now - self._load_at > 0.25:
            backlog = await self.queue.backlog()
            await self.pool.engine()
            self._load = (backlog, self.pool.slots)
            self._load_at = now
        backlog, slots = self._load
        limit = self.settings.max_backlog_per_slot * slots
        if slots and backlog > limit:
            return (
                f"the service is at capacity ({backlog} sentences queued for {slots} worker "
                "slots); try again later"
            )
        return None

    async def shutdown(self) -> None:
        """Let every session finish the sentence its caller is hearing, drop the rest of its
        work, and close with 1012; sessions still open after `shutdown_grace` are closed."""
        self.draining = True
        sessions = list(self.sessions)
        if not sessions:
            return
        log.info("shutting down: %d sessions finish their current sentence", len(sessions))
        await asyncio.gather(*(s.shutdown() for s in sessions), return_exceptions=True)
        ended = [asyncio.create_task(s.finished.wait()) for s in sessions]
        _, late = await asyncio.wait(ended, timeout=self.settings.shutdown_grace)
        for task in late:
            task.cancel()
        if late:
            log.warning("%d sessions outlived the shutdown grace; closing them", len(late))
            await asyncio.gather(*(s.force_restart() for s in sessions), return_exceptions=True)

    async def close(self) -> None:
        await self.leases.close()
        await self.returns.close()
        if self.arq is not None:
            await self.arq.aclose()
            # arq_pool hands ArqRedis a pool of its own, which closing the client leaves open.
            await self.arq.connection_pool.disconnect()
        await self.redis.aclose()
