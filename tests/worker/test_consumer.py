"""The worker on its own: jobs in through the stream, events out on the session channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from tests.harness import peak_held, pending_jobs, queued_jobs, settled
from tests.shared.test_wire import previous_job_encoding
from voxline.shared.config import Settings
from voxline.shared.connections import connect
from voxline.shared.keys import Keys, batch_session
from voxline.shared.streams import ensure_jobs_group
from voxline.shared.wire import Event, EventKind, Job
from voxline.speech.queue import JobQueue
from voxline.worker.consumer import Worker
from voxline.worker.engines import load_engine
from voxline.worker.engines.tone import ToneEngine
from voxline.worker.runner import JobRunner


@contextlib.asynccontextmanager
async def running_worker(
    redis_url: str,
    prefix: str,
    *,
    concurrency: int = 1,
    shards: int = 1,
    sessions: tuple[str, ...] = ("sess",),
    **options: str,
) -> AsyncIterator[Worker]:
    settings = Settings(redis_url=redis_url, key_prefix=prefix, job_shards=shards)
    worker = Worker(settings, load_engine("tone", options), concurrency=concurrency)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    # The sessions of these tests' jobs have a live front end (which would renew the lease).
    lease = connect(redis_url)
    for session_id in sessions:
        await lease.set(Keys(prefix).lease(session_id), b"1")
    await lease.aclose()
    try:
        yield worker
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def listen(redis_url: str, channel: str) -> AsyncIterator[asyncio.Queue[Event]]:
    client = connect(redis_url, blocking=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    events: asyncio.Queue[Event] = asyncio.Queue()

    async def pump() -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                events.put_nowait(Event.unpack(message["data"]))

    task = asyncio.create_task(pump())
    try:
        yield events
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pubsub.aclose()
        await client.aclose()


def _job(
    sentence: int, text: str = "Hello there.", session_id: str = "sess", **fields: object
) -> Job:
    return Job(
        session_id=session_id,
        utterance=0,
        sentence=sentence,
        text=text,
        voice="tone-mid",
        format="pcm",
        stream_audio=True,
        **fields,  # type: ignore[arg-type]
    )


async def _until_done(events: asyncio.Queue[Event]) -> list[Event]:
    seen: list[Event] = []
    while not seen or seen[-1].kind not in (EventKind.DONE, EventKind.ERROR):
        seen.append(await asyncio.wait_for(events.get(), 10))
    return seen


async def test_events_are_sequenced_and_the_entry_is_acknowledged(
    redis_url: str, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    async with running_worker(redis_url, key_prefix) as worker:
        async with listen(redis_url, keys.audio_channel("sess")) as events:
            await queue.enqueue(_job(0))
            seen = await _until_done(events)
        assert [e.seq for e in seen] == list(range(len(seen)))
        assert seen[0].kind is EventKind.STARTED and seen[0].data == worker.id
        audio = b"".join(e.data for e in seen if e.kind is EventKind.AUDIO)
        assert seen[-1].kind is EventKind.DONE and seen[-1].data == len(audio)
        for _ in range(100):
            if worker.stats["completed"]:
                break
            await asyncio.sleep(0.01)
        assert await pending_jobs(redis, keys) == 0, "acknowledged once finished"
        assert await queued_jobs(redis, keys) == 0, "and deleted"
        assert int(await redis.hget(keys.worker(worker.id), "completed")) == 1
    await redis.aclose()


async def _three_sentences_two_done(redis_url: str, keys: Keys, queue: JobQueue) -> list[Event]:
    """Queue sentences 0..2 of session "sess"; their events until two of them are DONE."""
    async with listen(redis_url, keys.audio_channel("sess")) as events:
        for i in range(3):
            await queue.enqueue(_job(i))
        seen: list[Event] = []
        while sum(e.kind is EventKind.DONE for e in seen) < 2:
            seen.append(await asyncio.wait_for(events.get(), 10))
    return seen


async def _until_skipped(worker: Worker) -> None:
    """The skip and the two siblings are counted as their jobs settle, a moment after the
    siblings' DONE."""
    for _ in range(300):
        if worker.stats["skipped_cancelled"] and worker.stats.get("completed", 0) >= 2:
            return
        await asyncio.sleep(0.01)


async def test_a_sentence_marked_cancelled_is_never_voiced(redis_url: str, key_prefix: str) -> None:
    """Marked before the worker existed (its notice unheard): the engine starts while the
    pre-flight checks run, and stops without publishing anything when they come back."""
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    await queue.cancel("sess", [0], 1)  # one sentence
    async with running_worker(redis_url, key_prefix) as worker:
        seen = await _three_sentences_two_done(redis_url, keys, queue)
        produced = {e.sentence for e in seen if e.kind is not EventKind.STARTED}
        assert produced == {0, 2}, "no audio, words or done for the cancelled sentence"
        await _until_skipped(worker)
        assert worker.stats["skipped_cancelled"] == 1 and worker.stats["completed"] == 2
        assert worker.engine.stats["completed"] == 2
    await redis.aclose()


async def test_a_cancel_heard_before_the_job_is_read_skips_it_unstarted(
    redis_url: str, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    async with running_worker(redis_url, key_prefix) as worker:
        await queue.cancel("sess", [0], 1)
        for _ in range(200):  # the notice reached the worker's cancel listener
            if worker.in_flight.cancelled(_job(1)):
                break
            await asyncio.sleep(0.01)
        assert worker.in_flight.cancelled(_job(1)) and not worker.in_flight.cancelled(_job(2))
        seen = await _three_sentences_two_done(redis_url, keys, queue)
        assert {e.sentence for e in seen} == {0, 2}, "not even STARTED for the cancelled one"
        await _until_skipped(worker)
        assert worker.stats["skipped_cancelled"] == 1 and worker.stats["started"] == 2
        assert worker.engine.stats["started"] == 2, "its synthesis never began"
    await redis.aclose()


async def test_malformed_entries_are_dropped_not_retried(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    async with running_worker(redis_url, key_prefix) as worker:
        await redis.xadd(keys.job_shard(0).rest, {"j": b"\xc1 not msgpack"})
        for _ in range(200):
            if worker.stats["taken"]:
                break
            await asyncio.sleep(0.01)
        assert worker.stats["taken"] == 1 and worker.stats["started"] == 0
        assert await pending_jobs(redis, keys) == 0
    await redis.aclose()


async def test_a_worker_takes_no_more_jobs_than_it_has_slots(
    redis_url: str, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    async with running_worker(redis_url, key_prefix, concurrency=2, rtf="1.0") as worker:
        for i in range(5):
            await queue.enqueue(_job(i, "A sentence that takes a while."))
        await asyncio.sleep(0.3)
        assert len(worker.in_flight) == 2
        assert await pending_jobs(redis, keys) == 2, "the other three wait for any worker"
    await redis.aclose()


async def test_readers_of_several_shards_never_overfill_the_slots(
    redis_url: str, key_prefix: str
) -> None:
    """One reader per shard, all waiting at once: jobs landing on every shard together wake
    them all, and what does not fit goes back to its shard, to be served next."""
    keys = Keys(key_prefix, 3)
    sessions = {keys.shard_of(f"s{i}").index: f"s{i}" for i in range(50)}
    assert len(sessions) == 3
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    async with running_worker(
        redis_url, key_prefix, shards=3, sessions=tuple(sessions.values()), rtf="0.2"
    ) as worker:
        peak = peak_held(worker)
        async with contextlib.AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(listen(redis_url, keys.audio_channel(sid)))
                for sid in sessions.values()
            ]
            for _ in range(3):  # several rounds: the readers must be waiting each time
                await queue.enqueue(*(_job(1, session_id=sid) for sid in sessions.values()))
                for events in streams:
                    assert (await _until_done(events))[-1].kind is EventKind.DONE
        assert peak() == 1
        assert worker.stats["completed"] == 9 and worker.stats["handed_back"] >= 2
        assert await pending_jobs(redis, keys) == 0 and await queued_jobs(redis, keys) == 0
    await redis.aclose()


@pytest.mark.parametrize("concurrency", [0, -1])
def test_concurrency_must_be_positive(concurrency: int) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        Worker(Settings(), load_engine("tone"), concurrency=concurrency)


class _Measured(ToneEngine):
    """A tone engine that reports a capacity, as an engine measuring its speed does."""

    slots = 3

    def capacity(self) -> int | None:
        return self.slots


@pytest.mark.parametrize(("concurrency", "held"), [(None, 3), (2, 2)])
async def test_claims_follow_the_engines_capacity(
    redis_url: str, key_prefix: str, concurrency: int | None, held: int
) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    await redis.set(keys.lease("sess"), b"1")
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix)
    engine = _Measured(rtf=1.0)
    worker = Worker(settings, engine, concurrency=concurrency)
    peak = peak_held(worker)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(worker.ready.wait(), 10)
    try:
        assert worker.slots() == held  # an explicit --concurrency caps the engine's figure
        for i in range(6):
            await queue.enqueue(_job(i, "A sentence that takes a while."))
        await asyncio.sleep(0.3)
        assert len(worker.in_flight) == held
        assert await pending_jobs(redis, keys) == held
        engine.slots = 1  # capacity fell: no new claim until in-flight work drops below it
        await settled(worker, ("completed",), held)
        assert peak() == held
        assert len(worker.in_flight) <= 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def test_work_of_a_session_whose_front_end_died_stops(
    redis_url: str, key_prefix: str
) -> None:
    """No lease, no work: a queued job of a session without a lease is skipped, and an in-flight
    one stops within a few refresh rounds once the lease lapses (the API died)."""
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix, claim_idle=0.4)
    worker = Worker(settings, load_engine("tone", {"rtf": "1.0"}), concurrency=1)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
        await redis.set(keys.lease("sess"), b"1", px=500)  # renewed by nobody
        async with listen(redis_url, keys.audio_channel("sess")) as events:
            await queue.enqueue(_job(0, "A long sentence that would take seconds to say."))
            await queue.enqueue(_job(1, "Another one queued behind it."))
            first = await asyncio.wait_for(events.get(), 5)
            assert first.kind is EventKind.STARTED
            loop = asyncio.get_running_loop()
            began = loop.time()
            while worker.stats["cancelled"] + worker.stats["orphaned"] < 2:
                await asyncio.sleep(0.05)
                assert loop.time() - began < 5, worker.stats
        assert worker.stats["cancelled"] == 1 and worker.stats["orphaned"] == 1
        assert worker.stats["completed"] == 0
        assert not await redis.exists(keys.lease("sess"))
        assert await pending_jobs(redis, keys) == 0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def test_batch_sentences_wait_for_real_time_ones_and_keep_to_their_share(
    redis_url: str, key_prefix: str
) -> None:
    """Real-time sentences queued at the same time as batch ones start first, and batch work
    never holds more than `batch_share` of the slots (here 1 of 2)."""
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    batch_id = "b" * 24
    await redis.hset(keys.batch(batch_id), mapping={"status": "running"})
    await redis.set(keys.lease("sess"), b"1")
    shard = keys.shard_of(batch_session(batch_id))
    await ensure_jobs_group(redis, keys)
    for i in range(4):  # queued first
        job = _job(
            i, "A batch sentence that takes a while.", batch_session(batch_id), batch=batch_id
        )
        await redis.xadd(shard.batch, {"j": job.pack()})
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    await queue.enqueue(_job(0, "A real-time sentence."), _job(1, "Another real-time one."))
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix, batch_share=0.5)
    worker = Worker(settings, ToneEngine(rtf=0.5), concurrency=2)
    peak = peak_held(worker)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        await asyncio.sleep(0.2)
        first = [job.batch for job, _ in worker.in_flight.items()]
        assert first == ["", ""], "the real-time sentences took both slots"
        most_batch = 0
        for _ in range(1000):
            running = [job.batch for job, _ in worker.in_flight.items()]
            most_batch = max(most_batch, sum(1 for b in running if b))
            if await redis.hlen(keys.batch_audio(batch_id)) == 4:
                break
            await asyncio.sleep(0.01)
        assert await redis.hlen(keys.batch_audio(batch_id)) == 4
        assert most_batch == 1
        assert peak() <= 2
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def test_a_job_acknowledged_with_its_done_is_never_taken_for_lost(
    redis_url: str, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the write that carries DONE (and the acknowledgement) and the end of its task,
    a job is off the pending list but still running here: the refresh must not read that as
    another worker having claimed it (a false warning, and its counts filed as lost)."""
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=1000, session_ttl=60)
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix, claim_idle=0.08)
    worker = Worker(settings, ToneEngine(), concurrency=1)
    # The moment after DONE, held open for several refresh rounds (one every 20 ms).
    settle, release = JobRunner._settle, asyncio.Event()

    async def slow_settle(*args: Any) -> None:
        await release.wait()
        await settle(*args)

    monkeypatch.setattr(JobRunner, "_settle", slow_settle)
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.ready.wait(), 10)
        await redis.set(keys.lease("sess"), b"1")
        async with listen(redis_url, keys.audio_channel("sess")) as events:
            await queue.enqueue(_job(0))
            assert (await _until_done(events))[-1].kind is EventKind.DONE
        assert await pending_jobs(redis, keys) == 0  # acknowledged with DONE
        await asyncio.sleep(0.2)
        release.set()
        stats = await settled(worker, ("completed", "lost"), 1)
        assert stats.get("lost", 0) == 0 and stats["completed"] == 1
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def test_jobs_written_by_the_previous_and_a_newer_version_are_both_served(
    redis_url: str, key_prefix: str
) -> None:
    """A rolling upgrade: the stream holds a job a front end of the previous version queued
    (positional encoding) and one from a newer front end (a field this worker does not
    know); this worker serves both, audio and DONE, and drops neither as malformed."""
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    await ensure_jobs_group(redis, keys)
    shard = keys.shard_of("sess")
    old, new = _job(0, "From the previous version."), _job(1, "From a newer one.")
    newer = msgpack.unpackb(new.pack()) | {"priority": 3}
    await redis.xadd(shard.first, {"j": previous_job_encoding(old)})
    await redis.xadd(shard.rest, {"j": msgpack.packb(newer)})
    async with running_worker(redis_url, key_prefix) as worker:
        async with listen(redis_url, keys.audio_channel("sess")) as events:
            seen = [await _until_done(events), await _until_done(events)]
        for sentence in seen:
            assert sentence[-1].kind is EventKind.DONE, sentence[-1]
            assert any(e.kind is EventKind.AUDIO for e in sentence)
        assert sorted(s[-1].sentence for s in seen) == [0, 1]
        stats = await settled(worker, ("completed",), 2)
        assert stats["completed"] == 2 and not stats.get("malformed")
    await redis.aclose()
