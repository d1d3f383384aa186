"""What the front end learns from the worker registry: here, whether the workers read every
jobs shard it writes to."""

from __future__ import annotations

import httpx

from tests.harness import start_pipeline
from tests.worker.test_recovery import worker_on


async def test_readyz_fails_while_a_worker_reads_fewer_shards_than_are_written(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, job_shards=2) as pipeline:
        async with httpx.AsyncClient(base_url=pipeline.http) as http:
            assert (await http.get("/readyz")).status_code == 200
            await pipeline.stop_workers()
            async with worker_on(pipeline.settings.replace(job_shards=1)):
                reply = await http.get("/readyz")
                assert reply.status_code == 503
                assert "only [1]" in reply.json()["job_shards"]
            # More shards than written is fine: a shard's name does not depend on the count.
            async with worker_on(pipeline.settings.replace(job_shards=3)):
                reply = await http.get("/readyz")
                assert reply.status_code == 200 and "job_shards" not in reply.json()
