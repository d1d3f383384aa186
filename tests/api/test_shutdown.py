"""API shutdown (what SIGTERM does to uvicorn): each session finishes the sentence its caller
is hearing, its other work is cancelled in Redis, and it is closed with 1012."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import websockets

from tests.harness import Client, start_pipeline
from voxline.shared.connections import connect
from voxline.shared.keys import Keys, sentence_token
from voxline.worker.engines.tone import ToneEngine

TEXT = "The first sentence plays to its end. The second never starts. Nor does the third."


async def test_shutdown_finishes_the_current_sentence_then_closes_1012(
    redis_url: str, key_prefix: str
) -> None:
    first = TEXT.split(". ")[0] + "."
    expected = ToneEngine().duration_samples(first, 1.0) * 2
    async with start_pipeline(
        redis_url, key_prefix, engine_options={"rtf": "1.0"}, shutdown_grace=10.0
    ) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await client.send("input.text", text=TEXT)
            await client.send("input.done")
            # stream_audio=false: audio.start comes with the whole sentence; wait for the
            # worker to be on it instead.
            while not pipeline.workers[0].engine.stats["started"]:  # type: ignore[attr-defined]
                await asyncio.sleep(0.02)
            pipeline.server.should_exit = True
            await asyncio.sleep(0.3)
            with pytest.raises(OSError):  # no longer accepting
                await websockets.connect(pipeline.ws_url, open_timeout=2)
            code = await client.closed(timeout=15)
        assert code == 1012
        starts = [m for m in client.received if isinstance(m, dict) and m["type"] == "audio.start"]
        dones = [m for m in client.received if isinstance(m, dict) and m["type"] == "audio.done"]
        assert [m["sentence_index"] for m in starts] == [0]
        assert [(d["sentence_index"], d["error"], d["total_bytes"]) for d in dones] == [
            (0, False, expected)
        ]
        assert not any(isinstance(m, dict) and m["type"] == "error" for m in client.received)
        stats = pipeline.workers[0].stats
        assert stats["completed"] == 1
        assert stats["completed"] + stats["skipped_cancelled"] == stats["taken"]
        redis = connect(redis_url)
        try:
            keys = Keys(key_prefix)
            cancelled = set()
            async for key in redis.scan_iter(match=keys.cancelled("*")):
                cancelled |= {m.decode() for m in await redis.smembers(key)}
            assert {sentence_token(0, 1), sentence_token(0, 2)} <= cancelled
        finally:
            await redis.aclose()


async def test_shutdown_closes_an_idle_session_at_once(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, shutdown_grace=10.0) as pipeline:
        async with Client.connect(pipeline, {}) as client:
            async with httpx.AsyncClient() as http:
                assert (await http.get(pipeline.http + "/readyz")).status_code == 200
            loop = asyncio.get_running_loop()
            began = loop.time()
            pipeline.server.should_exit = True
            assert await client.closed(timeout=5) == 1012
            assert loop.time() - began < 2
