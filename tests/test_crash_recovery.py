"""SIGKILL a real `voxline worker` process mid-utterance: every sentence is delivered whole or
fails explicitly, none hangs, and the survivor claims what the dead worker held."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid

import pytest
import redis

from tests.conftest import real_redis_or_fail
from tests.harness import REDIS_URL, Client
from tests.processes import voxline_stack
from voxline.shared.keys import JOBS_GROUP, Keys
from voxline.worker.engines.tone import ToneEngine

pytestmark = pytest.mark.multiprocess

SENTENCES = [
    "The first sentence is long enough to be cut in half.",
    "A second one follows it closely.",
    "Then comes a third sentence.",
    "And a fourth closes the utterance.",
]


def _pending(client: redis.Redis, keys: Keys) -> int:
    return sum(client.xpending(s, JOBS_GROUP)["pending"] for s in keys.job_streams)


class _Stack:
    def __init__(self, ws_url: str) -> None:
        self.ws_url = ws_url + "/v1/audio/speech/stream"


async def test_sigkill_of_a_worker_loses_no_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    real_redis_or_fail()
    monkeypatch.setenv("VOXLINE_CLAIM_IDLE", "0.5")
    prefix = f"vxcrash-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    ids = [f"w{i}-{prefix}" for i in range(2)]
    tone = ["--engine", "tone", "--engine-opt", "rtf=1.0", "--engine-opt", "chunk_ms=40"]
    workers = [[*tone, "--concurrency", "1", "--worker-id", w] for w in ids]
    tone_engine = ToneEngine()
    expected = [tone_engine.duration_samples(t, 1.0) * 2 for t in SENTENCES]
    client_redis = redis.Redis.from_url(REDIS_URL)
    try:
        with voxline_stack(prefix, workers) as url:
            async with Client.connect(
                _Stack(url), {"response_format": "pcm", "stream_audio": True}
            ) as client:
                await client.send("input.text", text=" ".join(SENTENCES))
                await client.send("input.done")
                await client.until("audio.start")
                # Kill the worker synthesizing the sentence being heard.
                # Sentence 0 is the first of its utterance: on the first-sentences stream.
                pending = client_redis.xpending_range(
                    keys.job_shard(0).first, JOBS_GROUP, "-", "+", 1
                )[0]
                victim = pending["consumer"].decode()
                pid = int(client_redis.hget(keys.worker(victim), "pid"))
                os.kill(pid, signal.SIGKILL)
                done = await client.until("session.done", timeout=30)
            survivor = next(w for w in ids if w != victim)
            claimed = int(client_redis.hget(keys.worker(survivor), "claimed") or 0)
            assert _pending(client_redis, keys) == 0
    finally:
        client_redis.close()
    assert done["total_sentences"] == len(SENTENCES)
    outcomes = {}
    audio: dict[int, int] = {}
    current = -1
    for message in client.received:
        if isinstance(message, bytes):
            audio[current] = audio.get(current, 0) + len(message)
        elif message["type"] == "audio.start":
            current = message["sentence_index"]
        elif message["type"] == "audio.done":
            outcomes[message["sentence_index"]] = message
    assert sorted(outcomes) == list(range(len(SENTENCES)))
    errored = [i for i, d in outcomes.items() if d["error"]]
    for index, message in outcomes.items():
        assert message["total_bytes"] == audio.get(index, 0)
        if not message["error"]:
            assert message["total_bytes"] == expected[index]  # whole, never doubled
    # The sentence being heard was cut: it fails explicitly; the others all play.
    assert errored == [0]
    assert claimed >= 1


async def test_sigterm_drains_a_worker_and_the_api(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM on a worker: its sentence plays whole, it exits 0 and leaves nothing pending.
    SIGTERM on the API: the sentence being heard ends, then close 1012, exit 0."""
    real_redis_or_fail()
    prefix = f"vxterm-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    tone = ["--engine", "tone", "--engine-opt", "rtf=1.0", "--engine-opt", "chunk_ms=40"]
    workers = [[*tone, "--concurrency", "1", "--worker-id", f"w{i}-{prefix}"] for i in range(2)]
    expected = [ToneEngine().duration_samples(t, 1.0) * 2 for t in SENTENCES]
    procs: list[subprocess.Popen[bytes]] = []
    client_redis = redis.Redis.from_url(REDIS_URL)
    try:
        with voxline_stack(prefix, workers, processes=procs) as url:
            api, *worker_procs = procs
            async with Client.connect(
                _Stack(url), {"response_format": "pcm", "stream_audio": True}
            ) as client:
                await client.send("input.text", text=" ".join(SENTENCES[:2]))
                await client.send("input.done")
                await client.until("audio.start")
                owner = client_redis.xpending_range(
                    keys.job_shard(0).first, JOBS_GROUP, "-", "+", 1
                )[0]
                victim = int(owner["consumer"].decode()[1])
                worker_procs[victim].send_signal(signal.SIGTERM)
                await client.until("session.done", timeout=20)
                assert worker_procs[victim].wait(timeout=20) == 0
                assert not client_redis.exists(keys.worker(owner["consumer"].decode()))
                assert _pending(client_redis, keys) == 0
                drained = [m for m in client.received if isinstance(m, dict)]
                # Now the API, mid-way through the first of two sentences.
                client.received.clear()
                await client.send("input.text", text=" ".join(SENTENCES[2:]))
                await client.send("input.done")
                await client.until("audio.start")
                api.send_signal(signal.SIGTERM)
                code = await client.closed(timeout=20)
                assert api.wait(timeout=20) == 0
    finally:
        client_redis.close()
    dones = [m for m in drained if m["type"] == "audio.done"]
    assert [(d["error"], d["total_bytes"]) for d in dones] == [(False, n) for n in expected[:2]]
    assert code == 1012
    dones = [m for m in client.received if isinstance(m, dict) and m["type"] == "audio.done"]
    assert [(d["sentence_index"], d["error"], d["total_bytes"]) for d in dones] == [
        (0, False, expected[2])
    ]


async def test_sigkill_of_the_api_stops_its_work_and_its_keys_expire(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The front end dies without a word: its leases lapse, the worker stops the sentence in
    flight and skips the queued ones, and the session's keys expire."""
    real_redis_or_fail()
    for name, value in {"LEASE_TTL": "1.5", "SESSION_TTL": "3", "CLAIM_IDLE": "0.5"}.items():
        monkeypatch.setenv(f"VOXLINE_{name}", value)
    prefix = f"vxapikill-{uuid.uuid4().hex[:8]}"
    keys = Keys(prefix)
    worker_id = f"w-{prefix}"
    tone = ["--engine", "tone", "--engine-opt", "rtf=1.0", "--engine-opt", "chunk_ms=40"]
    procs: list[subprocess.Popen[bytes]] = []
    client_redis = redis.Redis.from_url(REDIS_URL)

    def counter(name: str) -> int:
        return int(client_redis.hget(keys.worker(worker_id), name) or 0)

    try:
        with voxline_stack(prefix, [[*tone, "--worker-id", worker_id]], processes=procs) as url:
            async with Client.connect(
                _Stack(url), {"response_format": "pcm", "stream_audio": True}
            ) as client:
                session_id = client.received[0]["session_id"]  # type: ignore[index]
                await client.send("input.text", text=" ".join(SENTENCES))
                await client.send("input.done")
                await client.until("audio.start")
                assert client_redis.exists(keys.lease(session_id))
                queued = sum(client_redis.xlen(s) for s in keys.job_streams) - 1
                assert queued >= 1
                procs[0].send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                # The worker stops the sentence in flight and skips every queued one.
                while counter("cancelled") < 1 or counter("orphaned") < queued:
                    assert time.monotonic() - killed_at < 15, "the worker went on"
                    await asyncio.sleep(0.05)
                stopped_after = time.monotonic() - killed_at
            # The queued ones were stopped by the pre-flight lease check that runs beside the
            # engine's start: none completed.
            assert counter("completed") == 0 and counter("orphaned") == queued
            assert counter("cancelled") == 1
            assert _pending(client_redis, keys) == 0
            assert sum(client_redis.xlen(s) for s in keys.job_streams) == 0
            # Nothing of the session outlives its lease and session_ttl.
            while list(client_redis.scan_iter(match=f"{prefix}:{{{session_id}}}*")):
                assert time.monotonic() - killed_at < 15, "the session's keys stayed"
                await asyncio.sleep(0.1)
    finally:
        client_redis.close()
    # Two lease checks apart (the first miss may be a Redis restart), after a 1.5 s lease.
    assert stopped_after < 6, stopped_after
