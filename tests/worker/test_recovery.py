"""Crash recovery: a dead worker's jobs are claimed by a live one (XAUTOCLAIM), retried
transparently when nothing was heard yet, failed explicitly when part of the audio went out,
and dead-lettered after max_deliveries. The dead worker is a "ghost": a consumer that reads a
job (and maybe publishes some of its events) and then never speaks again, as after SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from tests.harness import (
    Client,
    Pipeline,
    pending_jobs,
    queued_jobs,
    settled,
    start_pipeline,
)
from voxline.shared.channels import publish_event
from voxline.shared.config import Settings
from voxline.shared.connections import connect
from voxline.shared.keys import JOBS_GROUP, Keys
from voxline.shared.streams import ensure_jobs_group
from voxline.shared.wire import Event, EventKind, Job
from voxline.worker.consumer import Worker
from voxline.worker.engines import load_engine
from voxline.worker.recovery import Recovery

FAST = {"claim_idle": 0.3, "stall_timeout": 5.0, "queue_timeout": 10.0}
TEXT = "The quick brown fox jumps over the lazy dog."


@contextlib.asynccontextmanager
async def worker_on(settings: Settings, **options: str) -> AsyncIterator[Worker]:
    worker = Worker(settings, load_engine("tone", options), concurrency=1)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Ghost:
    """A consumer that takes jobs and then dies without a word."""

    def __init__(self, pipeline: Pipeline, name: str = "ghost") -> None:
        self.redis = connect(pipeline.settings.redis_url)
        self.keys = Keys(pipeline.settings.key_prefix, pipeline.settings.job_shards)
        self.name = name
        self.streams: dict[bytes, str] = {}  # entry id -> its stream

    async def take(self, count: int = 1, timeout: float = 5.0) -> list[tuple[bytes, Job]]:
        """Wait for `count` jobs to be pending with a dead consumer: this ghost, or the stopped
        worker whose last blocking read Redis answered after it was gone (a real hazard: the
        entry is delivered to a consumer that will never process it)."""
        streams = self.keys.job_streams
        async with asyncio.timeout(timeout):
            while True:
                for shard in self.keys.job_shards:  # one slot per read on a cluster
                    await self.redis.xreadgroup(
                        JOBS_GROUP, self.name, dict.fromkeys(shard.streams, ">")
                    )
                pending = [
                    (stream, p["message_id"])
                    for stream in streams
                    for p in await self.redis.xpending_range(
                        stream, JOBS_GROUP, "-", "+", count + 1
                    )
                ]
                if len(pending) >= count:
                    break
                await asyncio.sleep(0.02)
        taken = []
        for stream, message_id in pending:
            ((entry_id, fields),) = await self.redis.xrange(stream, message_id, message_id)
            self.streams[entry_id] = stream
            taken.append((entry_id, Job.unpack(fields[b"j"])))
        taken.sort(key=lambda t: t[1].sentence)
        assert len(taken) == count
        return taken

    async def publish(self, job: Job, kind: EventKind, seq: int, data: object = None) -> None:
        event = Event(kind, job.utterance, job.sentence, seq, data, attempt=1)
        await publish_event(self.redis, self.keys.audio_channel(job.session_id), event.pack())

    async def pending(self) -> int:
        return await pending_jobs(self.redis, self.keys)

    async def close(self) -> None:
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def ghost_pipeline(
    redis_url: str, key_prefix: str, **overrides: object
) -> AsyncIterator[tuple[Pipeline, Ghost]]:
    """A front end whose only worker has stopped once the session is configured, so that the
    ghost takes the jobs; the test then starts the live worker that recovers them."""
    async with start_pipeline(redis_url, key_prefix, **{**FAST, **overrides}) as pipeline:
        ghost = Ghost(pipeline)
        try:
            yield pipeline, ghost
        finally:
            await ghost.close()


async def reference_audio(pipeline: Pipeline, text: str) -> bytes:
    """What a healthy pipeline delivers for `text` (the tone engine is deterministic)."""
    async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
        await client.send("input.text", text=text)
        await client.send("input.done")
        sentences, _ = await client.utterance()
    return sentences[0].audio


async def test_a_dead_workers_unstarted_sentence_is_retried_transparently(
    redis_url: str, key_prefix: str
) -> None:
    async with ghost_pipeline(redis_url, key_prefix) as (pipeline, ghost):
        expected = await reference_audio(pipeline, TEXT)
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await pipeline.stop_workers()
            await client.send("input.text", text=TEXT)
            await client.send("input.done")
            ((_, job),) = await ghost.take()
            # It got as far as saying it started, then died.
            await ghost.publish(job, EventKind.STARTED, 0, "ghost")
            async with worker_on(pipeline.settings) as rescuer:
                sentences, done = await client.utterance()
                stats = await settled(rescuer, ("completed", "failed", "lost"), 1)
                assert stats["claimed"] == 1
                assert stats["completed"] == 1
        assert done["total_sentences"] == 1
        assert not sentences[0].errors
        assert sentences[0].done["error"] is False
        assert sentences[0].audio == expected
        assert await ghost.pending() == 0
        assert await queued_jobs(ghost.redis, ghost.keys) == 0


async def test_partly_heard_sentence_fails_explicitly_and_is_not_repeated(
    redis_url: str, key_prefix: str
) -> None:
    async with ghost_pipeline(redis_url, key_prefix) as (pipeline, ghost):
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await pipeline.stop_workers()
            await client.send("input.text", text=TEXT + " And a second one.")
            await client.send("input.done")
            (first, second) = await ghost.take(2)
            partial = b"\x01\x00" * 480
            await ghost.publish(first[1], EventKind.STARTED, 0, "ghost")
            await ghost.publish(first[1], EventKind.AUDIO, 1, partial)
            async with worker_on(pipeline.settings) as rescuer:
                sentences, done = await client.utterance()
                outcomes = ("completed", "skipped_cancelled", "cancelled", "failed", "lost")
                stats = await settled(rescuer, outcomes, 2)
        assert done["total_sentences"] == 2
        failed, retried = sentences
        assert failed.audio == partial  # nothing repeated after what was heard
        assert failed.done["error"] is True
        assert failed.done["total_bytes"] == len(partial)
        assert [e["code"] for e in failed.errors] == ["generation_failed"]
        assert "part of the sentence" in failed.errors[0]["message"]
        # The second sentence was never heard: retried whole.
        assert retried.done["error"] is False and not retried.errors
        assert len(retried.audio) > 0
        assert stats["claimed"] == 2
        # The failed one may finish on the worker before its cancel lands (the engine starts
        # while the pre-flight checks run); the front end drops that audio either way.
        assert stats["completed"] >= 1
        assert stats["completed"] + stats["skipped_cancelled"] + stats["cancelled"] == 2
        assert await ghost.pending() == 0


async def test_job_is_dead_lettered_after_max_deliveries(redis_url: str, key_prefix: str) -> None:
    async with ghost_pipeline(redis_url, key_prefix, max_deliveries=1) as (pipeline, ghost):
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await pipeline.stop_workers()
            await client.send("input.text", text=TEXT)
            await client.send("input.done")
            ((entry_id, job),) = await ghost.take()
            await ghost.publish(job, EventKind.STARTED, 0, "ghost")
            async with worker_on(pipeline.settings) as rescuer:
                sentences, _ = await client.utterance()
                stats = dict(rescuer.stats)
        (sentence,) = sentences
        assert sentence.done["error"] is True
        assert [e["code"] for e in sentence.errors] == ["generation_failed"]
        assert "gave up after 1 deliveries" in sentence.errors[0]["message"]
        assert stats["dead_lettered"] == 1 and stats["started"] == 0
        dead = await ghost.redis.xrange(ghost.keys.dead_letters)
        assert len(dead) == 1
        fields = dead[0][1]
        assert fields[b"entry"] == entry_id and fields[b"deliveries"] == b"1"
        assert Job.unpack(fields[b"j"]) == job
        assert await ghost.pending() == 0
        assert await queued_jobs(ghost.redis, ghost.keys) == 0


async def test_events_of_a_superseded_worker_are_ignored(redis_url: str, key_prefix: str) -> None:
    async with ghost_pipeline(redis_url, key_prefix) as (pipeline, ghost):
        expected = await reference_audio(pipeline, TEXT)
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await pipeline.stop_workers()
            await client.send("input.text", text=TEXT)
            await client.send("input.done")
            ((_, job),) = await ghost.take()
            await ghost.publish(job, EventKind.STARTED, 0, "ghost")
            # The rescuer is slow (real time), so the zombie's late audio lands mid-sentence.
            async with worker_on(pipeline.settings, rtf="1.0") as rescuer:
                await client.until("audio.start")
                assert rescuer.stats["claimed"] == 1
                await ghost.publish(job, EventKind.AUDIO, 1, b"\x7f\x7f" * 240)
                await ghost.publish(job, EventKind.DONE, 2, 480)
                done = await client.until("audio.done")
                await client.until("session.done")
        audio = b"".join(m for m in client.received if isinstance(m, bytes))
        assert audio == expected
        assert done["error"] is False and done["total_bytes"] == len(expected)
        assert not any(isinstance(m, dict) and m["type"] == "error" for m in client.received)


async def test_trimmed_abandoned_entries_are_dropped_and_the_rest_retried(
    redis_url: str, key_prefix: str
) -> None:
    async with ghost_pipeline(redis_url, key_prefix) as (pipeline, ghost):
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await pipeline.stop_workers()
            await client.send("input.text", text="One here. Two there. Three everywhere.")
            await client.send("input.done")
            taken = await ghost.take(3)
            # The second entry is trimmed away while pending (as MAXLEN does under backlog).
            await ghost.redis.xdel(ghost.streams[taken[1][0]], taken[1][0])
            async with worker_on(pipeline.settings) as rescuer:
                sentences, _ = await client.utterance(timeout=15)
                stats = dict(rescuer.stats)
        ok = [s.done["error"] for s in sentences]
        assert ok == [False, True, False]  # the vanished one fails on its deadline, explicitly
        assert stats["vanished"] == 1 and stats["claimed"] == 2
        assert await ghost.pending() == 0


async def test_refresh_reports_jobs_claimed_away(redis_url: str, key_prefix: str) -> None:
    """A worker cut off long enough to be presumed dead learns its jobs were taken over."""
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    try:
        await ensure_jobs_group(redis, keys)
        ids = [await redis.xadd(keys.job_shard(0).rest, {"j": b"x"}) for _ in range(2)]
        held = {(keys.job_shard(0).rest, i) for i in ids}
        await redis.xreadgroup(JOBS_GROUP, "a", {keys.job_shard(0).rest: ">"}, count=2)
        a = Recovery(redis, keys, "a", claim_idle=0.05, max_deliveries=3)
        b = Recovery(redis, keys, "b", claim_idle=0.05, max_deliveries=3)
        assert await a.refresh(held) == set()
        assert (await b.claim(5)).deliveries == []  # just refreshed: not abandoned
        await asyncio.sleep(0.1)
        claimed = await b.claim(1)
        assert [d.entry_id for d in claimed.deliveries] == [ids[0]]
        assert claimed.deliveries[0].attempt == 2
        assert await a.refresh(held) == {(keys.job_shard(0).rest, ids[0])}
        # Refreshing never steals back, and keeps the delivery count.
        pending = await redis.xpending_range(keys.job_shard(0).rest, JOBS_GROUP, "-", "+", 10)
        assert {(p["consumer"], p["times_delivered"]) for p in pending} == {(b"b", 2), (b"a", 1)}
    finally:
        await redis.delete(*keys.job_streams)
        await redis.aclose()


@pytest.mark.parametrize("spoke", [False, True])
async def test_shutdown_past_the_drain_timeout(
    redis_url: str, key_prefix: str, spoke: bool
) -> None:
    """A job cut off by the drain timeout goes back to the pool if nothing of it was heard
    (and another worker completes it), else it fails explicitly."""
    settings_overrides = {**FAST, "drain_timeout": 0.3}
    async with start_pipeline(redis_url, key_prefix, **settings_overrides) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm", "stream_audio": True}) as c:
            await pipeline.stop_workers()
            slow_options = {"rtf": "1.0"} if spoke else {"rtf": "1.0", "chunk_ms": "5000"}
            async with worker_on(pipeline.settings, **slow_options) as doomed:
                await c.send("input.text", text=TEXT)
                await c.send("input.done")
                if spoke:
                    await c.until("audio.start")
                else:
                    async with asyncio.timeout(10):
                        while not doomed.engine.stats["started"]:  # type: ignore[attr-defined]
                            await asyncio.sleep(0.02)
            stats = dict(doomed.stats)
            async with worker_on(pipeline.settings) as rescuer:
                done = await c.until("audio.done", timeout=15)
                await c.until("session.done")
                # Its counters are written just after the DONE the client has heard.
                async with asyncio.timeout(5):
                    while not spoke and not rescuer.stats.get("completed"):
                        await asyncio.sleep(0.01)
                rescued = dict(rescuer.stats)
        errors = [m for m in c.received if isinstance(m, dict) and m["type"] == "error"]
        if spoke:
            assert stats["failed"] == 1 and stats["released"] == 0
            assert [e["code"] for e in errors] == ["generation_failed"]
            assert done["error"] is True
            assert rescued["claimed"] == 0
        else:
            assert stats["released"] == 1 and stats["failed"] == 0, stats
            assert not errors and done["error"] is False
            assert rescued["claimed"] == 1 and rescued["completed"] == 1
