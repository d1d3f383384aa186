"""Jobs-stream plumbing both sides need."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.keys import JOBS_GROUP, Keys


async def ensure_jobs_group(redis: aioredis.Redis, keys: Keys) -> None:
    """Create the workers' consumer group (and the streams) if missing.

    Both sides call this at start-up, and workers again when Redis lost the group (a restart
    without persistence). From id 0, not `$`: jobs the front end queued before the group
    existed must be delivered, and the stream holds nothing else (entries are deleted once
    acknowledged).
    """
    for stream in keys.job_streams:
        try:
            await redis.xgroup_create(stream, JOBS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
