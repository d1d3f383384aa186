"""The worker: takes sentence jobs from the stream's consumer group, synthesizes them with its
engine, publishes the audio, acknowledges when done."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from dataclasses import asdict

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.audio.formats import SentenceEncoder
from shared.config import Settings
from shared.connections import connect
from shared.keys import JOBS_GROUP, Keys, cancel_tokens
from shared.streams import ensure_jobs_group
from shared.wire import EventKind, Job
from worker.cancellations import CancelListener, InFlight
from worker.engines.base import Cancellation, Engine, EngineError, SynthesisRequest
from worker.publisher import SentencePublisher
from worker.registry import Registration

log = logging.getLogger("voxline.worker")

# Upper bound of one blocking read; a job wakes the read at once, this only bounds how long
# a stop request waits.
_BLOCK_MS = 5000


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


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
        self.keys = Keys(settings.key_prefix)
        self.in_flight = InFlight()
        self.ready = asyncio.Event()
        self._redis: aioredis.Redis | None = None
        self._registration: Registration | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()
        self.claimed_max = 0  # the most jobs held at once (tests check it never beats slots)

    @property
    def stats(self) -> dict[str, int]:
        return self._registration.stats if self._registration else {}

    async def run(self) -> None:
        """Serve jobs until cancelled; in-flight jobs are finished (bounded) on the way out."""
        await self.engine.start()
        self._redis = redis = connect(self.settings.redis_url)
        reader = connect(self.settings.redis_url, blocking=True)
        self._registration = Registration(
            redis,
            self.keys,
            self.id,
            self.engine.info,
            interval=self.settings.heartbeat_interval,
            ttl=self.settings.worker_ttl,
            heartbeat_file=self.heartbeat_file,
        )
        listener = CancelListener(self.settings.redis_url, self.keys, self.in_flight)
        try:
            await ensure_jobs_group(redis, self.keys)
            await listener.start()
            await self._registration.start()
            self.ready.set()
            log.info(
                "worker %s: engine %s, %d slots",
                self.id,
                self.engine.info.name,
                self.slots(),
            )
            await self._consume(reader)
        finally:
            await self._drain()
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

    async def _free_slots(self) -> int:
        while True:
            free = self.slots() - len(self._tasks)
            if free > 0:
                return free
            self._slot_freed.clear()
            await self._slot_freed.wait()

    async def _consume(self, reader: aioredis.Redis) -> None:
        while True:
            # Take only as many jobs as there are free slots: the rest stay in the stream for
            # other workers instead of queueing here (a session's sentences spread over the pool).
            free = await self._free_slots()
            try:
                reply = await reader.xreadgroup(
                    JOBS_GROUP, self.id, {self.keys.jobs: ">"}, count=free, block=_BLOCK_MS
                )
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await ensure_jobs_group(self._redis, self.keys)  # the stream was deleted
                continue
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("jobs stream unreachable (%s); retrying", exc)
                await asyncio.sleep(0.5)
                continue
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A cancel that landed inside the blocking read can be swallowed there (seen
                # with redis-py on fakeredis): honour it rather than read on.
                raise asyncio.CancelledError
            entries = [entry for _stream, batch in (reply or []) for entry in batch]
            self.claimed_max = max(self.claimed_max, len(self._tasks) + len(entries))
            for entry_id, fields in entries:
                task = asyncio.create_task(self._process(entry_id, fields))
                self._tasks.add(task)
                task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slot_freed.set()

    async def _drain(self, grace: float = 10.0) -> None:
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _process(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        redis = self._redis
        assert redis is not None and self._registration is not None
        counts = {"taken": 1}
        try:
            job = Job.unpack(fields[b"j"])
        except Exception:
            log.exception("dropping malformed job %r", entry_id)
            job = None
        try:
            if job is not None:
                await self._run_job(redis, job, counts)
        except Exception:
            log.exception("job %r failed outside the engine", entry_id)
        finally:
            with contextlib.suppress(Exception):
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.xack(self.keys.jobs, JOBS_GROUP, entry_id)
                    pipe.xdel(self.keys.jobs, entry_id)
                    self._registration.count(pipe, **counts)
                    await pipe.execute()

    async def _run_job(self, redis: aioredis.Redis, job: Job, counts: dict[str, int]) -> None:
        token = self.in_flight.add(job)
        try:
            publisher = SentencePublisher(redis, self.keys.audio_channel(job.session_id), job)
            # After add(): a cancel either is already marked here or will find the job in
            # flight (the front end marks before it notifies). STARTED rides in the same round
            # trip; for a cancelled sentence the front end has stopped listening anyway.
            async with redis.pipeline(transaction=False) as pipe:
                pipe.smismember(
                    self.keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
                )
                publisher.send_in(pipe, EventKind.STARTED, self.id)
                flags, _ = await pipe.execute()
            if any(flags):
                counts["skipped_cancelled"] = 1
            else:
                counts.update(await self._synthesize(job, token, publisher))
        finally:
            self.in_flight.remove(token)

    async def _synthesize(
        self, job: Job, token: Cancellation, publisher: SentencePublisher
    ) -> dict[str, int]:
        info = self.engine.info
        encoder = SentenceEncoder(
            job.format,
            info.sample_rate,
            job.sample_rate or info.sample_rate,
            stream=job.stream_audio,
        )
        request = SynthesisRequest(
            text=job.text,
            voice=job.voice,
            language=job.language,
            speed=job.speed,
            word_timestamps=job.word_timestamps,
            extra=job.extra,
        )
        counts = {"started": 1, "chunks": 0}
        try:
            async with contextlib.aclosing(self.engine.synthesize(request, token)) as chunks:
                async for chunk in chunks:
                    if token.is_set():
                        counts["chunks_after_cancel"] = 1
                        break
                    counts["chunks"] += 1
                    if job.word_timestamps and chunk.words:
                        await publisher.send(EventKind.WORDS, [asdict(w) for w in chunk.words])
                    data = encoder.encode(chunk.pcm)
                    if data:
                        await publisher.send(EventKind.AUDIO, data)
            if token.is_set():
                counts["cancelled"] = 1
                return counts  # the front end has moved on: say nothing more
            tail = encoder.finish()
            if tail:
                await publisher.send(EventKind.AUDIO, tail)
            await publisher.send(EventKind.DONE, publisher.audio_bytes)
            counts["completed"] = 1
        except EngineError as exc:
            counts["failed"] = 1
            await publisher.send(EventKind.ERROR, str(exc))
        except asyncio.CancelledError:
            # Shutting down past the drain grace: say so now rather than leave the front end
            # to time the sentence out.
            counts["failed"] = 1
            with contextlib.suppress(Exception):
                await publisher.send(EventKind.ERROR, "worker shutting down")
            raise
        except Exception as exc:
            log.exception("sentence %s/%d/%d failed", job.session_id, job.utterance, job.sentence)
            counts["failed"] = 1
            await publisher.send(EventKind.ERROR, f"engine failure: {type(exc).__name__}")
        return counts
