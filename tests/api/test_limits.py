"""Duration limits of an utterance and of a connection (the size limits: test_errors.py)."""

from __future__ import annotations

import asyncio

from tests.harness import Client, start_pipeline


async def test_an_utterance_past_its_limit_is_ended_and_the_session_goes_on(
    redis_url: str, key_prefix: str
) -> None:
    async with start_pipeline(redis_url, key_prefix, max_utterance_seconds=0.3) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await client.send("input.text", text="It starts here")
            await asyncio.sleep(0.5)
            await client.send("input.text", text=" and goes on too long.")
            error = await client.expect("error")
            assert error["code"] == "utterance_too_long"
            sentences, done = await client.utterance()
            assert done["utterance_index"] == 0
            assert [s.start["sentence_text"] for s in sentences] == [
                "It starts here and goes on too long."
            ]
            # The connection is fine: the next text opens utterance 1.
            await client.send("input.text", text="A new one.")
            await client.send("input.done")
            _, done = await client.utterance()
            assert done["utterance_index"] == 1


async def test_a_connection_past_its_limit_is_closed(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, max_session_seconds=0.5) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            error = await client.expect("error", timeout=5)
            assert error["code"] == "session_expired"
            assert await client.closed() == 1008
