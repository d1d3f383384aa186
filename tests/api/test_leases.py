"""Session leases as the front end keeps them."""

from __future__ import annotations

import asyncio

from tests.harness import Client, start_pipeline
from voxline.shared.connections import connect
from voxline.shared.keys import Keys


async def test_a_sentence_queued_right_after_its_lease_was_lost_still_plays(
    redis_url: str, key_prefix: str
) -> None:
    """A Redis restart without persistence drops every lease; the next renewal round is up to
    lease_ttl/3 away. The job's own enqueue renews its session's lease first, so the worker
    does not skip it as orphaned."""
    async with start_pipeline(redis_url, key_prefix, lease_ttl=30.0) as pipeline:
        redis = connect(redis_url)
        try:
            async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
                session_id = client.received[0]["session_id"]  # type: ignore[index]
                lease = Keys(key_prefix).lease(session_id)
                assert await redis.exists(lease)
                await redis.delete(lease)  # as a restart would; renewal is 10 s away
                await client.send("input.text", text="Played all the same.")
                await client.send("input.done")
                sentences, _ = await client.utterance()
                assert not sentences[0].errors and sentences[0].audio
                assert 0 < await redis.pttl(lease) <= 30_000
            for _ in range(200):  # released when the server sees the close
                if not await redis.exists(lease):
                    break
                await asyncio.sleep(0.01)
            assert not await redis.exists(lease)
        finally:
            await redis.aclose()
    assert pipeline.total("orphaned") == 0 and pipeline.total("completed") == 1
