"""Redis restarted or unreachable: the front end and the workers stay up, sentences caught in
the outage end with explicit errors at once, /readyz says not ready meanwhile, and sessions
work again as soon as Redis is back. Runs on a redis-server of the test's own."""

from __future__ import annotations

import asyncio
import signal
import time

import httpx
import pytest

from tests.harness import Client, Pipeline, start_pipeline
from tests.redis_servers import RedisServer

# Redis servers of its own, frozen and restarted.
pytestmark = pytest.mark.integration

FAST = {"claim_idle": 0.5, "heartbeat_interval": 0.3, "worker_ttl": 2.0, "lease_ttl": 1.5}


async def _ready(pipeline: Pipeline) -> int:
    async with httpx.AsyncClient() as http:
        return (await http.get(pipeline.http + "/readyz", timeout=5)).status_code


async def _one_sentence(pipeline: Pipeline, text: str = "Back again.") -> dict:
    async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
        await client.send("input.text", text=text)
        await client.send("input.done")
        sentences, _ = await client.utterance(timeout=10)
    return sentences[0].done


async def test_redis_restart_mid_utterance(redis_server: RedisServer) -> None:
    async with start_pipeline(
        redis_server.url, "vxfault", engine_options={"rtf": "1.0"}, **FAST
    ) as pipeline:
        assert (await _one_sentence(pipeline))["error"] is False
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await client.send("input.text", text="A sentence long enough to be cut. And more.")
            await client.send("input.done")
            await asyncio.sleep(0.3)  # the first is being synthesized, the second is queued
            redis_server.kill()
            began = time.monotonic()
            # Both sentences fail explicitly and at once: nothing can reach the client now.
            sentences, done = await client.utterance(timeout=10)
            failed_within = time.monotonic() - began
            assert [s.done["error"] for s in sentences] == [True, True]
            assert all(e["code"] == "generation_failed" for s in sentences for e in s.errors)
            assert done["total_sentences"] == 2
            assert failed_within < 3, failed_within
            # Text sent while Redis is down is refused per sentence; the session stays open.
            await client.send("input.text", text="Nobody hears this.")
            await client.send("input.done")
            sentences, _ = await client.utterance(timeout=10)
            assert [s.done["error"] for s in sentences] == [True]
            assert await _ready(pipeline) == 503
            # A new session is refused as overloaded (try again later), not with a crash.
            async with Client.connect(pipeline) as c2:
                refused = await c2.recv_json()
                assert refused["type"] == "error" and refused["code"] == "overloaded"
                assert await c2.closed() == 1013
            await asyncio.sleep(1.0)
            redis_server.start()
            back = time.monotonic()
            while await _ready(pipeline) != 200:
                assert time.monotonic() - back < 15, "not ready again after Redis came back"
                await asyncio.sleep(0.1)
            recovery = time.monotonic() - back
            # The same connection works again, and so does a new one.
            await client.send("input.text", text="Still here.")
            await client.send("input.done")
            sentences, _ = await client.utterance(timeout=10)
            assert [s.done["error"] for s in sentences] == [False]
        assert (await _one_sentence(pipeline))["error"] is False
        assert all(not task.done() for task in pipeline.worker_tasks)
        print(f"ready again {recovery:.2f} s after Redis restarted")


async def test_redis_frozen_like_a_network_partition(redis_server: RedisServer) -> None:
    """SIGSTOP: connections stay open and nothing answers, not even a reset (a partition looks
    the same). The return path notices by PING within seconds: the sentence being heard fails
    explicitly, /readyz says not ready (and answers), and all works again after SIGCONT."""
    assert redis_server.proc is not None
    async with start_pipeline(
        redis_server.url, "vxfreeze", engine_options={"rtf": "1.0"}, **FAST
    ) as pipeline:
        assert (await _one_sentence(pipeline))["error"] is False
        config = {"response_format": "pcm", "stream_audio": True}
        async with Client.connect(pipeline, config) as client:
            await client.send("input.text", text="A sentence long enough to be cut short.")
            await client.send("input.done")
            await client.until("audio.start")
            redis_server.proc.send_signal(signal.SIGSTOP)
            frozen = time.monotonic()
            try:
                error = await client.until("error", timeout=15)
                noticed = time.monotonic() - frozen
                assert error["code"] == "generation_failed"
                assert (await client.until("audio.done"))["error"] is True
                probe = time.monotonic()
                assert await _ready(pipeline) == 503
                assert time.monotonic() - probe < 4  # the probe itself is bounded
            finally:
                redis_server.proc.send_signal(signal.SIGCONT)
            await client.until("session.done")
            back = time.monotonic()
            while await _ready(pipeline) != 200:
                assert time.monotonic() - back < 20, "not ready again after SIGCONT"
                await asyncio.sleep(0.1)
            await client.send("input.text", text="Still here.")
            await client.send("input.done")
            sentences, _ = await client.utterance(timeout=10)
            assert [s.done["error"] for s in sentences] == [False]
        assert (await _one_sentence(pipeline))["error"] is False
        assert all(not task.done() for task in pipeline.worker_tasks)
    # Well before stall_timeout (10 s), which was the only way to notice before.
    assert noticed < 6, noticed
    print(f"frozen Redis noticed after {noticed:.2f} s")
