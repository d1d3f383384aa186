"""Jobs-stream plumbing both sides need."""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from shared.keys import JOBS_GROUP, Keys


async def ensure_jobs_group(redis: aioredis.Redis, keys: Keys) -> None:
    """Create the workers' consumer group (and the stream) if missing.

    Both sides call this at start-up: a group created only after the front end had queued
    jobs with id `$` would never deliver those jobs.
    """
    try:
        await redis.xgroup_create(keys.jobs, JOBS_GROUP, id="$", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise
