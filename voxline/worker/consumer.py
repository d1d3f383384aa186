"""The worker: takes sentence jobs from the stream's consumer group, synthesizes them with its
engine, publishes the audio, acknowledges when done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from redis.exceptions import ResponseError

from voxline.shared import logs, metrics
from voxline.shared.audio.sentences import SentenceEncoder
from voxline.shared.batches import FINAL, BatchStatus, record_failure_in, record_in
from voxline.shared.config import Settings
from voxline.shared.connections import TRANSIENT_ERRORS, Client, connect
from voxline.shared.keys import JOBS_GROUP, JobShard, Keys, cancel_tokens
from voxline.shared.runtime import freeze_startup_objects
from voxline.shared.streams import ensure_jobs_group, read_group, shard_advice
from voxline.shared.tasks import stop
from voxline.shared.wire import Cancel, EventKind, Job
from voxline.worker.cancellations import CancelListener, InFlight
from voxline.worker.engines.base import Cancellation, Engine, EngineError, SynthesisRequest
from voxline.worker.publisher import Outbox, SentencePublisher
from voxline.worker.recovery import Delivery, Recovery
from voxline.worker.registry import Registration

log = logging.getLogger("voxline.worker")

# Upper bound of one blocking read; a job wakes the read at once, this only bounds how long
# a stop request waits.
_BLOCK_MS = 5000


class _Backoff:
    """Exponential reconnect delays: quick after a blip, gentle on an outage."""

    def __init__(self, first: float = 0.05, cap: float = 2.0) -> None:
        self._first, self._cap = first, cap
        self._delay = first

    def next(self) -> float:
        delay = self._delay
        self._delay = min(delay * 2, self._cap)
        return delay

    def reset(self) -> None:
        self._delay = self._first


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(eq=False)
class _Running:
    """A job this worker holds, from the moment it was read until it is acknowledged."""

    task: asyncio.Task[None] | None = None
    token: Cancellation | None = None
    lost: bool = False  # another worker claimed it: stop, and do not acknowledge
    # Acknowledged in the write that carried DONE: off the pending list while its task ends,
    # which the refresh must not take for a claim by another worker.
    acked: bool = False
    batch: bool = False  # a batch job's sentence (read from a batch stream)


class Worker:
    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        worker_id: str | None = None,
        concurrency: int | None = None,
        heartbeat_file: str | None = None,
    ) -> None:
        if concurrency is not None and concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.settings = settings
        self.engine = engine
        self.id = worker_id or new_worker_id()
        self.concurrency = concurrency
        self.heartbeat_file = heartbeat_file
        self.keys = Keys(settings.key_prefix, settings.job_shards)
        self.in_flight = InFlight()
        self.ready = asyncio.Event()
        self._redis: Client | None = None
        self._outbox: Outbox | None = None
        self._registration: Registration | None = None
        self._recovery: Recovery | None = None
        self._running: dict[tuple[str, bytes], _Running] = {}  # by (stream, entry id)
        self._slot_freed = asyncio.Event()
        self._claiming = 0  # slots held for a claim of abandoned jobs under way
        self._next_claim = 0.0  # monotonic time of the next look for abandoned jobs
        self._stopping = False  # set once: the readers end at their next turn
        self.claimed_max = 0  # the most jobs held at once (tests check it never beats slots)

    @property
    def stats(self) -> dict[str, int]:
        return self._registration.stats if self._registration else {}

    async def run(self) -> None:
        """Serve jobs until cancelled (SIGTERM): then stop taking jobs, let in-flight ones
        finish for up to `drain_timeout`, acknowledge them, and return."""
        settings = self.settings
        await self.engine.start()
        self._redis = redis = connect(settings.redis_url)
        reader = connect(settings.redis_url, blocking=True)
        self._outbox = Outbox(redis)
        self._outbox.start()
        self._registration = Registration(
            redis,
            self.keys,
            self.id,
            self.engine.info,
            interval=settings.heartbeat_interval,
            ttl=settings.worker_ttl,
            heartbeat_file=self.heartbeat_file,
            slots=self.slots,
        )
        self._recovery = Recovery(
            redis,
            self.keys,
            self.id,
            claim_idle=settings.claim_idle,
            max_deliveries=settings.max_deliveries,
        )
        listener = CancelListener(settings.redis_url, self.keys, self.in_flight)
        refresher: asyncio.Task[None] | None = None
        try:
            await ensure_jobs_group(redis, self.keys)
            if advice := shard_advice(redis, self.keys):
                log.warning("%s", advice)
            await listener.start()
            await self._registration.start()
            refresher = asyncio.create_task(self._refresh_loop(), name="voxline-refresh")
            freeze_startup_objects()  # after the engine loaded its model
            self.ready.set()
            log.info("worker %s: engine %s, %d slots", self.id, self.engine.info.name, self.slots())
            await self._consume(reader)
        finally:
            # Heartbeat, refresh and cancel listener keep running while in-flight jobs finish:
            # a long drain must not let other workers claim them.
            await self._drain(settings.drain_timeout)
            await self._outbox.close()
            await stop(refresher)
            await self._registration.stop()
            await listener.close()
            await reader.aclose()
            await redis.aclose()
            await self.engine.close()

    def slots(self) -> int:
        """Jobs this worker may hold at once: the engine's measured capacity when it has one
        (capped by an explicit `--concurrency`), else `--concurrency` (default 1)."""
        capacity = self.engine.capacity()
        if capacity is None:
            return self.concurrency or 1
        return min(capacity, self.concurrency) if self.concurrency else capacity

    def _room(self) -> int:
        """Slots neither running a job nor promised to a claim under way."""
        return self.slots() - len(self._running) - self._claiming

    def _batch_room(self) -> int:
        """Slots a batch sentence may take now: batch holds at most `batch_share` of the slots
        (at least one), so real-time sentences always find the rest free."""
        cap = max(1, int(self.slots() * self.settings.batch_share))
        held = sum(1 for r in self._running.values() if r.batch)
        return min(cap - held, self._room())

    async def _free_slots(self, room: Callable[[], int] | None = None) -> int:
        room = room or self._room
        while True:
            free = room()
            if free > 0:
                return free
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _consume(self, reader: Client) -> None:
        """One blocking reader per jobs shard (a cluster runs no XREADGROUP across slots)."""
        tasks = [
            asyncio.create_task(self._read_shard(reader, shard), name=f"voxline-read-{shard.index}")
            for shard in self.keys.job_shards
        ] + [
            asyncio.create_task(
                self._read_batch_shard(reader, shard), name=f"voxline-batch-{shard.index}"
            )
            for shard in self.keys.job_shards
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # The flag, not only the cancel: on Python 3.11 a cancel that races a read's own
            # timeout inside redis-py can be swallowed (and uncancelled) there.
            self._stopping = True
            await stop(*tasks)

    async def _read_shard(self, reader: Client, shard: JobShard) -> None:
        backoff = _Backoff()
        claim_every = max(self.settings.claim_idle / 2, 0.05)
        while not self._stopping:
            _honour_cancel()
            free = await self._free_slots()
            # Abandoned jobs are looked for every claim_every, by whichever reader comes first,
            # before fresh ones: a freed slot goes to the job that has waited longest.
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + claim_every
                if await self._claim_abandoned(free):
                    continue
            # A blocking read is cut short to keep the claim schedule.
            block_ms = int(min(_BLOCK_MS, max((self._next_claim - time.monotonic()) * 1000, 1)))
            deliveries = await self._attempt_read(
                shard, backoff, self._read(reader, shard, self._share(free), block_ms)
            )
            # What the read returned stays pending and is claimed by another worker.
            _honour_cancel()
            if self._stopping:
                return
            if deliveries:
                await self._take(shard, deliveries)

    async def _read_batch_shard(self, reader: Client, shard: JobShard) -> None:
        """Batch sentences of one shard, whenever a slot batch may use is free and no
        real-time sentence wants it: such a slot is offered to the real-time streams first
        (without waiting), and only when they are empty does this wait on the batch stream.
        Claims of abandoned batch jobs ride the real-time reader's claims."""
        backoff = _Backoff()
        while not self._stopping:
            _honour_cancel()
            want = await self._free_slots(self._batch_room)
            deliveries = await self._attempt_read(
                shard, backoff, self._read_batch(reader, shard, want)
            )
            _honour_cancel()
            if self._stopping:
                return
            if deliveries:
                await self._take(shard, deliveries)

    async def _read_batch(self, reader: Client, shard: JobShard, want: int) -> list[Delivery]:
        realtime = dict.fromkeys(shard.streams, ">")
        got = _deliveries(await read_group(reader, self.id, realtime, count=want))
        if got:
            return sorted(got, key=lambda d: d.stream != shard.first)
        batch = {shard.batch: ">"}
        return _deliveries(await read_group(reader, self.id, batch, count=want, block=_BLOCK_MS))

    async def _attempt_read(
        self, shard: JobShard, backoff: _Backoff, read: Awaitable[list[Delivery]]
    ) -> list[Delivery]:
        """One read of a shard; nothing (after a back-off) when Redis failed it."""
        try:
            deliveries = await read
            backoff.reset()
            return deliveries
        except TRANSIENT_ERRORS as exc:  # before ResponseError: CLUSTERDOWN is one
            metrics.redis_error("read")
            delay = backoff.next()
            log.warning("jobs shard %d unreachable (%s); retry in %.2fs", shard.index, exc, delay)
            await asyncio.sleep(delay)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            with contextlib.suppress(*TRANSIENT_ERRORS):  # the stream was deleted
                await ensure_jobs_group(self._redis, self.keys)
        return []

    async def _take(self, shard: JobShard, deliveries: list[Delivery]) -> None:
        """Start what the slots hold room for. Readers of other shards (and this shard's batch
        reader) may have filled the slots meanwhile, as they wait at the same time: the surplus
        goes back to this shard, a real-time job ahead of its queue."""
        assert self._registration is not None
        room = max(self._room(), 0)
        batch_room = max(self._batch_room(), 0)
        take: list[Delivery] = []
        surplus: list[Delivery] = []
        for delivery in deliveries:
            if len(take) >= room:
                surplus.append(delivery)
            elif delivery.stream == shard.batch:
                if batch_room > 0:
                    batch_room -= 1
                    take.append(delivery)
                else:
                    surplus.append(delivery)
            else:
                take.append(delivery)
        # Started before the hand-back's round trip, so no other reader counts their slots free.
        self._start(take)
        if surplus:
            try:
                await self._requeue(shard, surplus)
                await self._registration.bump(handed_back=len(surplus))
            except TRANSIENT_ERRORS as exc:
                metrics.redis_error("read")
                # Still pending here: they look abandoned after claim_idle and are claimed.
                log.warning("could not hand back %d jobs (%s)", len(surplus), exc)
        if take:
            # Let the new jobs send their first commands before this reader sends its next
            # read: time to first audio is on their path, not on the read's.
            await asyncio.sleep(0)

    def _share(self, free: int) -> int:
        """What one shard's reader asks for: its share of the free slots (at least one). The
        readers wait at the same time, and all that they bring beyond the free slots has to be
        handed back; a shard with a burst is served in a few quick reads instead."""
        return max(1, -(-free // self.keys.shards))

    async def _read(
        self, reader: Client, shard: JobShard, free: int, block_ms: int
    ) -> list[Delivery]:
        """Up to `free` jobs of one shard, first sentences first. Only as many as there are free
        slots: the rest stay in the streams for other workers instead of queueing here (a
        session's sentences spread over the pool)."""
        first, rest = shard.streams
        got = _deliveries(await read_group(reader, self.id, {first: ">"}, count=free))
        if len(got) < free:
            # Nothing urgent: wait on both streams (a first sentence arriving still wins). The
            # two share a hash tag, so this is one command on a cluster too.
            streams = {rest: ">"} if got else {first: ">", rest: ">"}
            block = None if got else block_ms
            reply = await read_group(reader, self.id, streams, count=free - len(got), block=block)
            got += sorted(_deliveries(reply), key=lambda d: d.stream != first)
        # COUNT is per stream, so a wait on two can bring one too many; the caller hands the
        # surplus back.
        return got

    async def _requeue(self, shard: JobShard, surplus: list[Delivery]) -> None:
        """Hand jobs to the next free worker, ahead of the queue (they have waited their turn
        already): one transaction on the shard's slot. A batch sentence goes to the back of
        its stream, and its coordinator learns the new entry id before the old one goes."""
        assert self._redis is not None
        batch = [d for d in surplus if d.stream == shard.batch]
        moved: list[tuple[Delivery, bytes]] = []
        if batch:
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery in batch:
                    pipe.xadd(shard.batch, delivery.fields)
                moved = list(zip(batch, await pipe.execute(), strict=True))
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery, entry_id in moved:
                    job = Job.unpack(delivery.fields[b"j"])
                    pipe.hset(self.keys.batch_queued(job.batch), str(job.sentence), entry_id)
                await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            for delivery in surplus:
                if delivery.stream != shard.batch:
                    pipe.xadd(shard.first, delivery.fields)
                pipe.xack(delivery.stream, JOBS_GROUP, delivery.entry_id)
                pipe.xdel(delivery.stream, delivery.entry_id)
            await pipe.execute()

    async def _claim_abandoned(self, free: int) -> bool:
        assert self._recovery is not None and self._registration is not None
        # Claimed jobs are started whatever the count (handing one back would cost it a
        # delivery), so their slots are held while the claim runs; readers returning meanwhile
        # hand their surplus back instead.
        batch = max(self._batch_room(), 0)
        self._claiming = free
        try:
            result = await self._recovery.claim(free, batch)
        except TRANSIENT_ERRORS as exc:
            metrics.redis_error("claim")
            log.warning("could not look for abandoned jobs (%s)", exc)
            return False
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return False  # the readers recreate the group
        finally:
            self._claiming = 0
            self._slot_freed.set()
        self._start(result.deliveries)
        counts = {
            "claimed": len(result.deliveries),
            "dead_lettered": result.dead_lettered,
            "vanished": result.vanished,
        }
        if any(counts.values()):
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._registration.bump(**counts)
        return bool(result.deliveries)

    def _start(self, deliveries: list[Delivery]) -> None:
        self.claimed_max = max(self.claimed_max, len(self._running) + len(deliveries))
        batch_streams = set(self.keys.batch_streams)
        for delivery in deliveries:
            key = (delivery.stream, delivery.entry_id)
            running = self._running[key] = _Running(batch=delivery.stream in batch_streams)
            running.task = asyncio.create_task(self._process(delivery, running))
            running.task.add_done_callback(lambda _t, k=key: self._job_done(k))

    def _job_done(self, key: tuple[str, bytes]) -> None:
        self._running.pop(key, None)
        self._slot_freed.set()

    async def _refresh_loop(self) -> None:
        """Keep this worker's jobs from looking abandoned, notice any it lost, and stop the
        work of sessions whose front end died."""
        assert self._recovery is not None
        interval = max(self.settings.claim_idle / 4, 0.02)
        unleased: set[str] = set()
        while True:
            await asyncio.sleep(interval)
            try:
                held = {key for key, running in self._running.items() if not running.acked}
                lost = await self._recovery.refresh(held)
                unleased = await self._drop_orphans(unleased)
            except TRANSIENT_ERRORS as exc:
                metrics.redis_error("refresh")
                log.warning("could not refresh in-flight jobs (%s)", exc)
                continue
            for key in lost:
                running = self._running.get(key)
                if running is None or running.acked:
                    continue  # finished meanwhile
                log.warning("job %s was claimed by another worker; dropping it", key[1].decode())
                running.lost = True
                if running.token is not None:
                    running.token.set()

    async def _drop_orphans(self, suspects: set[str]) -> set[str]:
        """Cancel in-flight work of sessions whose lease was missing twice in a row (once may
        be a Redis restart that the front end has not re-leased yet); return this round's
        missing leases."""
        assert self._redis is not None
        # A batch job has no front end: it lives while its status hash does.
        alive = {
            job.session_id: self.keys.batch(job.batch)
            if job.batch
            else self.keys.lease(job.session_id)
            for job, _ in self.in_flight.items()
        }
        sessions = sorted(alive)
        if not sessions:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in sessions:
                pipe.exists(alive[session_id])
            found = await pipe.execute()
        missing = {sid for sid, present in zip(sessions, found, strict=True) if not present}
        for session_id in missing & suspects:
            # Not remembered: a lease missing after a Redis restart may come back.
            hits = self.in_flight.apply(Cancel(session_id), remember=False)
            if hits:
                log.warning("session %s lost its front end; stopped %d jobs", session_id, hits)
        return missing

    async def _drain(self, grace: float) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        if not tasks:
            return
        log.info("draining %d in-flight jobs (up to %g s)", len(tasks), grace)
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _process(self, delivery: Delivery, running: _Running) -> None:
        redis = self._redis
        assert redis is not None and self._registration is not None
        counts = {"taken": 1}
        try:
            job = Job.unpack(delivery.fields[b"j"])
        except Exception:
            log.exception("dropping malformed job %r", delivery.entry_id)
            job = None
        try:
            if job is not None:
                await self._run_job(redis, job, delivery, running, counts)
        except asyncio.CancelledError:
            # Past the drain timeout. Cut off before synthesis began: hand it back.
            if not any(counts.get(k) for k in ("failed", "completed", "cancelled")):
                counts["released"] = 1
        except Exception:
            log.exception("job %r failed outside the engine", delivery.entry_id)
        finally:
            await self._settle(redis, delivery, running, counts)

    async def _settle(
        self, redis: Client, delivery: Delivery, running: _Running, counts: dict[str, int]
    ) -> None:
        """Acknowledge a finished job, or leave it to another worker (lost, or released)."""
        assert self._registration is not None and self._recovery is not None
        if running.lost:
            counts = {"lost": 1}
        metrics.job_settled(counts)
        with contextlib.suppress(Exception):
            async with redis.pipeline(transaction=False) as pipe:
                if running.lost:
                    pass
                elif counts.get("released"):
                    self._recovery.release_in(pipe, delivery)
                else:
                    pipe.xack(delivery.stream, JOBS_GROUP, delivery.entry_id)
                    pipe.xdel(delivery.stream, delivery.entry_id)
                self._registration.count(pipe, **counts)
                await pipe.execute()

    async def _run_job(
        self,
        redis: Client,
        job: Job,
        delivery: Delivery,
        running: _Running,
        counts: dict[str, int],
    ) -> None:
        logs.bind_job(job.session_id, job.utterance, job.sentence)  # this job's task only
        stream = "batch" if job.batch else "first" if job.sentence == 0 else "rest"
        metrics.job_started(stream, job.enqueued_at, len(self._running))
        if job.batch:
            await self._run_batch_job(redis, job, running, counts)
            return
        token = running.token = self.in_flight.add(job)
        outbox = self._outbox
        assert outbox is not None
        preflight: asyncio.Task[str] | None = None
        try:
            if self.in_flight.cancelled(job):
                # Heard on the cancel channel before the job was read: no round trip needed.
                counts["skipped_cancelled"] = 1
                return
            publisher = SentencePublisher(
                outbox, self.keys.audio_channel(job.session_id), job, delivery.attempt
            )
            # The checks run while the engine starts: a round trip less before the first audio.
            # Nothing is published until they cleared the sentence.
            preflight = asyncio.create_task(self._preflight(redis, job, publisher, token))

            def settle_in(pipe: Any) -> None:
                # The entry goes in the write that carries DONE: once the front end hears it,
                # the job is off the stream (its next sentence never finds this one there).
                if not running.lost:
                    running.acked = True
                    pipe.xack(delivery.stream, JOBS_GROUP, delivery.entry_id)
                    pipe.xdel(delivery.stream, delivery.entry_id)

            if not running.lost:
                await self._synthesize(job, token, publisher, counts, preflight, settle_in)
        except _Stopped as stopped:
            counts.pop("failed", None)  # an engine error of a sentence nobody is to hear
            counts[stopped.outcome] = 1
            if stopped.outcome == "orphaned":
                # Its front end is gone (died without cancelling): nobody would hear it. Or
                # Redis restarted and the front end has not renewed the lease yet: STARTED is
                # out, and silence would hold a listening caller until stall_timeout. Say why.
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    await publisher.send(EventKind.ERROR, "the session's lease is missing")
        finally:
            self.in_flight.remove(token)
            await stop(preflight)

    async def _run_batch_job(
        self, redis: Client, job: Job, running: _Running, counts: dict[str, int]
    ) -> None:
        """A batch job's sentence: synthesized whole (nobody is listening live), its PCM at the
        asked rate stored for the coordinator, which assembles the file. Checked before the
        engine starts: no latency to win here."""
        token = running.token = self.in_flight.add(job)
        try:
            if self.in_flight.cancelled(job):
                counts["skipped_cancelled"] = 1
                return
            async with redis.pipeline(transaction=False) as pipe:
                pipe.smismember(
                    self.keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
                )
                pipe.hget(self.keys.batch(job.batch), "status")
                flags, status = await pipe.execute()
            if status is None:
                counts["orphaned"] = 1  # the job expired or was deleted
                return
            if any(flags) or BatchStatus(status.decode()) in FINAL:
                counts["skipped_cancelled"] = 1
                return
            pcm, error = await self._synthesize_whole(job, token, counts)
            if running.lost or (pcm is None and not error):
                return
            ttl = self.settings.batch_result_ttl + int(self.settings.batch_timeout)
            try:
                async with redis.pipeline(transaction=True) as pipe:
                    if pcm is not None:
                        record_in(pipe, self.keys, job.batch, job.sentence, pcm, ttl)
                    else:
                        record_failure_in(pipe, self.keys, job.batch, job.sentence, error)
                    await pipe.execute()
            except TRANSIENT_ERRORS as exc:
                # Not recorded: left pending, so it is claimed and made again.
                metrics.redis_error("job")
                log.warning("batch sentence %s/%d not stored (%s)", job.batch, job.sentence, exc)
                counts.clear()
                counts["released"] = 1
        finally:
            self.in_flight.remove(token)

    async def _synthesize_whole(
        self, job: Job, token: Cancellation, counts: dict[str, int]
    ) -> tuple[bytes | None, str]:
        """One sentence's PCM at the job's rate, or why the engine failed; (None, "") when
        it was cancelled."""
        info = self.engine.info
        encoder = SentenceEncoder(
            "pcm", info.sample_rate, job.sample_rate or info.sample_rate, stream=True
        )
        counts.update(started=1, chunks=0)
        began, samples, pcm = time.perf_counter(), 0, bytearray()
        try:
            async with contextlib.aclosing(self.engine.synthesize(_request(job), token)) as chunks:
                async for chunk in chunks:
                    if token.is_set():
                        break
                    counts["chunks"] += 1
                    samples += len(chunk.pcm)
                    pcm += encoder.encode(chunk.pcm)
            if token.is_set():
                counts["cancelled"] = 1
                return None, ""
            pcm += encoder.finish()
        except asyncio.CancelledError:
            counts["released"] = 1  # shutting down: nobody heard anything, hand it back
            raise
        except Exception as exc:
            if not isinstance(exc, EngineError):
                log.exception("batch sentence %s/%d failed", job.batch, job.sentence)
            counts["failed"] = 1
            return None, str(exc) if isinstance(exc, EngineError) else type(exc).__name__
        counts["completed"] = 1
        metrics.synthesized(info.name, time.perf_counter() - began, samples, info.sample_rate)
        return bytes(pcm), ""

    async def _preflight(
        self, redis: Client, job: Job, publisher: SentencePublisher, token: Cancellation
    ) -> str:
        """Whether the sentence may be voiced: "" if so, else the outcome that stops it (its
        token is set, so the engine stops at its next chunk). STARTED rides in the same round
        trip; for a cancelled sentence the front end has stopped listening anyway."""
        # The job is in flight already: a cancel either is marked by now or will find it
        # (the front end marks before it notifies).
        async with redis.pipeline(transaction=False) as pipe:
            pipe.smismember(
                self.keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
            )
            pipe.exists(self.keys.lease(job.session_id))
            publisher.send_in(pipe, EventKind.STARTED, self.id)
            flags, leased, _ = await pipe.execute()
        verdict = "skipped_cancelled" if any(flags) else "" if leased else "orphaned"
        if verdict:
            token.set()
        return verdict

    async def _synthesize(
        self,
        job: Job,
        token: Cancellation,
        publisher: SentencePublisher,
        counts: dict[str, int],
        preflight: asyncio.Task[str],
        settle_in: Callable[[Any], None],
    ) -> None:
        cleared = False

        async def send(
            kind: EventKind, data: object = None, before: Callable[[Any], None] | None = None
        ) -> None:
            nonlocal cleared
            if not cleared:
                if verdict := await preflight:
                    raise _Stopped(verdict)
                cleared = True
            await publisher.send(kind, data, before)

        info = self.engine.info
        encoder = SentenceEncoder(
            job.format,
            info.sample_rate,
            job.sample_rate or info.sample_rate,
            stream=job.stream_audio,
        )
        request = _request(job)
        counts.update(started=1, chunks=0)
        began, samples = time.perf_counter(), 0
        try:
            async with contextlib.aclosing(self.engine.synthesize(request, token)) as chunks:
                async for chunk in chunks:
                    if token.is_set():
                        counts["chunks_after_cancel"] = 1
                        break
                    counts["chunks"] += 1
                    samples += len(chunk.pcm)
                    if job.word_timestamps and chunk.words:
                        await send(EventKind.WORDS, [asdict(w) for w in chunk.words])
                    data = encoder.encode(chunk.pcm)
                    if data:
                        await send(EventKind.AUDIO, data)
            if token.is_set():
                if not cleared and (verdict := await preflight):
                    raise _Stopped(verdict)
                counts["cancelled"] = 1
                return  # the front end has moved on: say nothing more
            tail = encoder.finish()
            if tail:
                await send(EventKind.AUDIO, tail)
            await send(EventKind.DONE, publisher.audio_bytes, settle_in)
            counts["completed"] = 1
            metrics.synthesized(info.name, time.perf_counter() - began, samples, info.sample_rate)
        except _Stopped:
            raise
        except EngineError as exc:
            counts["failed"] = 1
            await send(EventKind.ERROR, str(exc))
        except asyncio.CancelledError:
            # Shutting down past the drain timeout. Nothing heard yet: hand the job back for
            # another worker to take, unnoticed by the client. Part of it heard: a retry would
            # repeat audio, so the sentence fails now rather than on the front end's deadline.
            if publisher.spoke:
                counts["failed"] = 1
                with contextlib.suppress(Exception):
                    await send(EventKind.ERROR, "worker shut down mid-sentence")
            else:
                counts["released"] = 1
            raise
        except TRANSIENT_ERRORS as exc:
            # Redis went away under the sentence: an error event could not reach the front end
            # either, which fails the sentence itself (it notices the loss, or its deadline).
            counts["failed"] = 1
            metrics.redis_error("job")
            log.warning(
                "sentence %s/%d/%d cut off: Redis unreachable (%s)",
                job.session_id,
                job.utterance,
                job.sentence,
                exc,
            )
        except Exception as exc:
            log.exception("sentence %s/%d/%d failed", job.session_id, job.utterance, job.sentence)
            counts["failed"] = 1
            await send(EventKind.ERROR, f"engine failure: {type(exc).__name__}")


class _Stopped(Exception):
    """The pre-flight checks stopped a sentence whose synthesis had begun."""

    def __init__(self, outcome: str) -> None:
        super().__init__(outcome)
        self.outcome = outcome  # "skipped_cancelled" or "orphaned"


def _request(job: Job) -> SynthesisRequest:
    return SynthesisRequest(
        text=job.text,
        voice=job.voice,
        language=job.language,
        speed=job.speed,
        word_timestamps=job.word_timestamps,
        extra=job.extra,
        opens_utterance=job.sentence == 0,
    )


def _honour_cancel() -> None:
    """Raise if the current task was asked to stop. A cancel that lands inside a Redis command
    can be swallowed there (seen with redis-py on fakeredis); the loop must not go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _deliveries(reply: list | None) -> list[Delivery]:
    return [
        Delivery(stream.decode() if isinstance(stream, bytes) else stream, entry_id, fields)
        for stream, batch in (reply or [])
        for entry_id, fields in batch
    ]
