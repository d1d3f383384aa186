"""Running jobs: each taken job gets a task that checks it, synthesizes it into the sink of its
kind (real-time events, or a batch sentence's PCM) and settles it: acknowledged once, handed
back, or left to the worker that claimed it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from voxline.shared import logs, metrics
from voxline.shared.audio.sentences import SentenceEncoder
from voxline.shared.batches import FINAL, BatchStatus, record_failure_in, record_in
from voxline.shared.config import Settings
from voxline.shared.connections import TRANSIENT_ERRORS, Client
from voxline.shared.keys import Keys, cancel_tokens
from voxline.shared.tasks import stop
from voxline.shared.wire import EventKind, Job
from voxline.worker.cancellations import InFlight
from voxline.worker.engines.base import Cancellation, Engine
from voxline.worker.outcomes import Outcome, Tally
from voxline.worker.publisher import Outbox, SentencePublisher
from voxline.worker.recovery import Delivery, Recovery, acknowledge_in
from voxline.worker.registry import Registration
from voxline.worker.sinks import BatchSink, RealtimeSink
from voxline.worker.slots import EntryKey, Held, Slots
from voxline.worker.synthesis import Stopped, synthesize

log = logging.getLogger("voxline.worker")


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        worker_id: str,
        engine: Engine,
        redis: Client,
        slots: Slots,
        in_flight: InFlight,
        outbox: Outbox,
        recovery: Recovery,
        registration: Registration,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._id = worker_id
        self._engine = engine
        self._redis = redis
        self._slots = slots
        self._in_flight = in_flight
        self._outbox = outbox
        self._recovery = recovery
        self._registration = registration
        self._batch_streams = set(keys.batch_streams)

    def start(self, deliveries: list[Delivery]) -> None:
        """Hold a slot for each and start its task (at once: the readers count the slots)."""
        for delivery in deliveries:
            key = (delivery.stream, delivery.entry_id)
            held = Held(batch=delivery.stream in self._batch_streams)
            self._slots.hold(key, held)
            held.task = asyncio.create_task(self._process(delivery, held))

            def release(_task: asyncio.Task[None], key: EntryKey = key) -> None:
                self._slots.release(key)

            held.task.add_done_callback(release)

    async def drain(self, grace: float) -> None:
        tasks = [h.task for h in self._slots.jobs.values() if h.task is not None]
        if not tasks:
            return
        log.info("draining %d in-flight jobs (up to %g s)", len(tasks), grace)
        _, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _process(self, delivery: Delivery, held: Held) -> None:
        tally = Tally()
        try:
            job = Job.unpack(delivery.fields[b"j"])
        except Exception:
            log.exception("dropping malformed job %r", delivery.entry_id)
            job = None
        try:
            if job is not None:
                await self._run(job, delivery, held, tally)
        except asyncio.CancelledError:
            # Past the drain timeout. Cut off before synthesis began: hand it back.
            if tally.outcome not in (Outcome.FAILED, Outcome.COMPLETED, Outcome.CANCELLED):
                tally.outcome = Outcome.RELEASED
        except Exception:
            log.exception("job %r failed outside the engine", delivery.entry_id)
        finally:
            await self._settle(delivery, held, tally)

    async def _settle(self, delivery: Delivery, held: Held, tally: Tally) -> None:
        """Acknowledge a finished job (unless its DONE write did), hand it back (released), or
        leave it to the worker that claimed it (lost)."""
        if held.lost:
            tally.outcome = Outcome.LOST
        metrics.job_settled(tally.settled_as)
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                if tally.outcome is Outcome.RELEASED:
                    self._recovery.release_in(pipe, delivery)
                elif not held.lost and not held.acked:
                    acknowledge_in(pipe, delivery)
                self._registration.count(pipe, **tally.counters())
                await pipe.execute()

    async def _run(self, job: Job, delivery: Delivery, held: Held, tally: Tally) -> None:
        logs.bind_job(job.session_id, job.utterance, job.sentence)  # this job's task only
        stream = "batch" if job.batch else "first" if job.sentence == 0 else "rest"
        metrics.job_started(stream, job.enqueued_at, len(self._slots.jobs))
        token = held.token = self._in_flight.add(job)
        try:
            if self._in_flight.cancelled(job):
                # Heard on the cancel channel before the job was read: no round trip needed.
                tally.outcome = Outcome.SKIPPED_CANCELLED
            elif job.batch:
                await self._run_batch(job, held, token, tally)
            else:
                await self._run_realtime(job, delivery, held, token, tally)
        finally:
            self._in_flight.remove(token)

    def _encoder(self, fmt: str, job: Job, *, stream: bool) -> SentenceEncoder:
        rate = self._engine.info.sample_rate
        return SentenceEncoder(fmt, rate, job.sample_rate or rate, stream=stream)

    async def _run_realtime(
        self, job: Job, delivery: Delivery, held: Held, token: Cancellation, tally: Tally
    ) -> None:
        publisher = SentencePublisher(
            self._outbox, self._keys.audio_channel(job.session_id), job, delivery.attempt
        )
        preflight = asyncio.create_task(self._preflight(job, publisher, token))

        def settle_in(pipe: Any) -> None:
            # The entry goes in the write that carries DONE: once the front end hears it,
            # the job is off the stream (its next sentence never finds this one there).
            if not held.lost:
                held.acked = True
                acknowledge_in(pipe, delivery)

        sink = RealtimeSink(job, publisher, preflight, settle_in)
        encoder = self._encoder(job.format, job, stream=job.stream_audio)
        try:
            if not held.lost:
                await synthesize(self._engine, job, token, encoder, sink, tally)
        except Stopped as stopped:
            tally.outcome = stopped.outcome  # an engine error of a sentence nobody is to hear
            if stopped.outcome is Outcome.ORPHANED:
                # Its front end is gone (died without cancelling): nobody would hear it. Or
                # Redis restarted and the front end has not renewed the lease yet: STARTED is
                # out, and silence would hold a listening caller until stall_timeout. Say why.
                with contextlib.suppress(*TRANSIENT_ERRORS):
                    await publisher.send(EventKind.ERROR, "the session's lease is missing")
        finally:
            await stop(preflight)

    async def _preflight(
        self, job: Job, publisher: SentencePublisher, token: Cancellation
    ) -> Outcome | None:
        """Whether the sentence may be voiced: None if so, else the outcome that stops it (its
        token is set, so the engine stops at its next chunk). STARTED rides in the same round
        trip; for a cancelled sentence the front end has stopped listening anyway."""
        # The job is in flight already: a cancel either is marked by now or will find it
        # (the front end marks before it notifies).
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.smismember(
                self._keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
            )
            pipe.exists(self._keys.lease(job.session_id))
            publisher.send_in(pipe, EventKind.STARTED, self._id)
            flags, leased, _ = await pipe.execute()
        verdict = Outcome.SKIPPED_CANCELLED if any(flags) else None if leased else Outcome.ORPHANED
        if verdict:
            token.set()
        return verdict

    async def _run_batch(self, job: Job, held: Held, token: Cancellation, tally: Tally) -> None:
        """A batch job's sentence: synthesized whole (nobody is listening live), its PCM at the
        asked rate stored for the coordinator, which assembles the file. Checked before the
        engine starts: no latency to win here."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.smismember(
                self._keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
            )
            pipe.hget(self._keys.batch(job.batch), "status")
            flags, status = await pipe.execute()
        if status is None:
            tally.outcome = Outcome.ORPHANED  # the job expired or was deleted
            return
        if any(flags) or BatchStatus(status.decode()) in FINAL:
            tally.outcome = Outcome.SKIPPED_CANCELLED
            return
        sink = BatchSink(job)
        await synthesize(
            self._engine, job, token, self._encoder("pcm", job, stream=True), sink, tally
        )
        if held.lost or tally.outcome is Outcome.CANCELLED:
            return
        ttl = self._settings.batch_result_ttl + int(self._settings.batch_timeout)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                if sink.pcm is not None:
                    record_in(pipe, self._keys, job.batch, job.sentence, sink.pcm, ttl)
                else:
                    record_failure_in(pipe, self._keys, job.batch, job.sentence, sink.error)
                await pipe.execute()
        except TRANSIENT_ERRORS as exc:
            # Not recorded: left pending, so it is claimed and made again.
            metrics.redis_error("job")
            log.warning("batch sentence %s/%d not stored (%s)", job.batch, job.sentence, exc)
            tally.outcome = Outcome.RELEASED
