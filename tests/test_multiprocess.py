"""The distributed mode for real: `voxline api` and two `voxline worker` processes on Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import redis

from tests.conftest import real_redis_or_fail
from tests.harness import REDIS_URL, Client
from tests.processes import voxline_stack
from voxline.shared.config import Settings

pytestmark = pytest.mark.multiprocess


@dataclass
class Stack:
    url: str
    http: str
    ws_url: str
    prefix: str
    worker_ids: list[str]

    def worker_stats(self) -> dict[str, dict[str, int]]:
        client = redis.Redis.from_url(REDIS_URL)
        stats = {}
        for worker_id in self.worker_ids:
            raw = client.hgetall(f"{self.prefix}:worker:{worker_id}")
            stats[worker_id] = {
                k.decode(): int(v)
                for k, v in raw.items()
                if k not in (b"info", b"host") and v.isdigit()
            }
        client.close()
        return stats


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    real_redis_or_fail()
    prefix = f"vxmp-{uuid.uuid4().hex[:8]}"
    worker_ids = [f"w{i}-{prefix}" for i in range(2)]
    tone = ["--engine", "tone", "--engine-opt", "rtf=0.25", "--engine-opt", "chunk_ms=40"]
    workers = [[*tone, "--concurrency", "4", "--worker-id", w] for w in worker_ids]
    with voxline_stack(prefix, workers) as url:
        yield Stack(
            url,
            url.replace("ws://", "http://"),
            url + "/v1/audio/speech/stream",
            prefix,
            worker_ids,
        )


async def _one_session(stack: Stack, n: int) -> list[str]:
    texts = [f"Session {n} sentence {i} is here." for i in range(4)]
    async with Client.connect(stack, {"response_format": "pcm", "stream_audio": True}) as c:
        # Stream it in small pieces, as an LLM would.
        whole = " ".join(texts)
        for start in range(0, len(whole), 7):
            await c.send("input.text", text=whole[start : start + 7])
        await c.send("input.done")
        sentences, done = await c.utterance(timeout=60)
    assert done["total_sentences"] == 4
    for s in sentences:
        assert not s.errors and s.done["error"] is False
        assert s.done["total_bytes"] == len(s.audio) > 0
    assert [s.start["sentence_text"] for s in sentences] == texts
    return [s.start["sentence_text"] for s in sentences]


async def test_thirty_concurrent_sessions_in_order(stack: Stack) -> None:
    before = stack.worker_stats()
    results = await asyncio.gather(*(_one_session(stack, n) for n in range(30)))
    assert len(results) == 30
    after = stack.worker_stats()
    completed = {w: after[w]["completed"] - before[w].get("completed", 0) for w in after}
    assert sum(completed.values()) == 120
    assert all(count > 0 for count in completed.values()), f"both workers share: {completed}"


async def test_disconnect_stops_the_worker_process(stack: Stack) -> None:
    before = stack.worker_stats()
    async with Client.connect(stack, {"response_format": "pcm", "stream_audio": True}) as c:
        # Five long sentences (paced, seconds each), more than the pool takes at once.
        long = "is a long sentence that takes a few seconds to say"
        await c.send("input.text", text=" ".join(f"Number {i} {long}." for i in range(5)) + " ")
        await c.expect("audio.start", timeout=10)
        await c.recv()
    deadline = time.monotonic() + 10
    while True:
        after = stack.worker_stats()
        delta = {
            k: sum(after[w].get(k, 0) - before[w].get(k, 0) for w in after)
            for k in ("started", "cancelled", "skipped_cancelled", "chunks_after_cancel")
        }
        if delta["cancelled"] + delta["skipped_cancelled"] >= 4 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    # Every started sentence was stopped; every other one was never started. Four of the five
    # became jobs (max_sentences_in_flight); the fifth waited in the session and never will.
    assert delta["cancelled"] == delta["started"] >= 1
    assert delta["cancelled"] + delta["skipped_cancelled"] == Settings().max_sentences_in_flight
    assert delta["chunks_after_cancel"] <= delta["cancelled"]
