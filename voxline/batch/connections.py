"""arq's Redis: the pool the front end enqueues batch jobs on and the arq worker polls."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from arq.connections import ArqRedis

from voxline.shared.config import Settings
from voxline.shared.connections import connect, is_cluster

# The arq functions, by name (the front end enqueues by name; batch/arq_worker.py registers).
SYNTHESIZE_BATCH = "synthesize_batch"


class ArqUnavailable(RuntimeError):
    """arq cannot run on the configured Redis (a Cluster with no arq_redis_url)."""


def arq_url(settings: Settings) -> str:
    url = settings.arq_redis_url or settings.redis_url
    if is_cluster(url):
        raise ArqUnavailable(
            "arq does not speak Redis Cluster: set VOXLINE_ARQ_REDIS_URL to a plain Redis "
            f"(VOXLINE_REDIS_URL is {url.split('@')[-1]!r})"
        )
    return url


def arq_pool(settings: Settings) -> ArqRedis:
    """A client of arq's Redis (fakeredis in the embedded mode, sharing its server)."""
    # connect() gives the waiting pool of every voxline client, or for memory:// the process's
    # in-memory server, which the embedded mode's arq worker then shares.
    client = connect(arq_url(settings))
    assert isinstance(client, aioredis.Redis)  # arq_url() refuses a cluster URL
    return ArqRedis(connection_pool=client.connection_pool)


def arq_job_id(batch_id: str) -> str:
    """arq's id of a batch's job: one arq job per batch, however often it is enqueued."""
    return f"voxline-batch:{batch_id}"


async def enqueue_batch(pool: ArqRedis, queue: str, batch_id: str) -> Any:
    return await pool.enqueue_job(
        SYNTHESIZE_BATCH, batch_id, _job_id=arq_job_id(batch_id), _queue_name=queue
    )
