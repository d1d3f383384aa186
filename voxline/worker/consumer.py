"""The worker: takes sentence jobs from the stream's consumer group, synthesizes them with its
engine, publishes the audio, acknowledges when done. This module holds its life cycle (start,
heartbeat, refresh of the jobs it holds, drain); taking jobs is reader.py, running them
runner.py."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from voxline.shared import metrics
from voxline.shared.config import Settings
from voxline.shared.connections import TRANSIENT_ERRORS, Client, connect
from voxline.shared.keys import Keys
from voxline.shared.runtime import freeze_startup_objects
from voxline.shared.streams import ensure_jobs_group, shard_advice
from voxline.shared.tasks import stop
from voxline.shared.wire import Cancel
from voxline.worker.cancellations import CancelListener, InFlight
from voxline.worker.engines.base import Engine
from voxline.worker.publisher import Outbox
from voxline.worker.reader import JobReader
from voxline.worker.recovery import Recovery
from voxline.worker.registry import Registration
from voxline.worker.runner import JobRunner
from voxline.worker.slots import Slots

log = logging.getLogger("voxline.worker")


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
        self.keys = Keys(settings.key_prefix, settings.job_shards)
        self.in_flight = InFlight()
        self.held = Slots(self.slots, settings.batch_share)  # the jobs it holds, by entry
        self.ready = asyncio.Event()
        self._redis: Client | None = None
        self._registration: Registration | None = None
        self._recovery: Recovery | None = None

    @property
    def stats(self) -> dict[str, int]:
        return self._registration.stats if self._registration else {}

    def slots(self) -> int:
        """Jobs this worker may hold at once: the engine's measured capacity when it has one
        (capped by an explicit `--concurrency`), else `--concurrency` (default 1)."""
        capacity = self.engine.capacity()
        if capacity is None:
            return self.concurrency or 1
        return min(capacity, self.concurrency) if self.concurrency else capacity

    async def run(self) -> None:
        """Serve jobs until cancelled (SIGTERM): then stop taking jobs, let in-flight ones
        finish for up to `drain_timeout`, acknowledge them, and return."""
        settings = self.settings
        await self.engine.start()
        self._redis = redis = connect(settings.redis_url)
        reader = connect(settings.redis_url, blocking=True)
        outbox = Outbox(redis)
        outbox.start()
        self._registration = registration = Registration(
            redis,
            self.keys,
            self.id,
            self.engine.info,
            interval=settings.heartbeat_interval,
            ttl=settings.worker_ttl,
            heartbeat_file=self.heartbeat_file,
            slots=self.slots,
        )
        self._recovery = recovery = Recovery(
            redis,
            self.keys,
            self.id,
            claim_idle=settings.claim_idle,
            max_deliveries=settings.max_deliveries,
        )
        runner = JobRunner(
            settings,
            self.keys,
            self.id,
            self.engine,
            redis,
            self.held,
            self.in_flight,
            outbox,
            recovery,
            registration,
        )
        jobs = JobReader(
            settings, self.keys, self.id, redis, self.held, recovery, registration, runner.start
        )
        listener = CancelListener(settings.redis_url, self.keys, self.in_flight)
        refresher: asyncio.Task[None] | None = None
        try:
            await ensure_jobs_group(redis, self.keys)
            if advice := shard_advice(redis, self.keys):
                log.warning("%s", advice)
            await listener.start()
            await registration.start()
            refresher = asyncio.create_task(self._refresh_loop(), name="voxline-refresh")
            freeze_startup_objects()  # after the engine loaded its model
            self.ready.set()
            log.info("worker %s: engine %s, %d slots", self.id, self.engine.info.name, self.slots())
            await jobs.run(reader)
        finally:
            # Heartbeat, refresh and cancel listener keep running while in-flight jobs finish:
            # a long drain must not let other workers claim them.
            await runner.drain(settings.drain_timeout)
            await outbox.close()
            await stop(refresher)
            await registration.stop()
            await listener.close()
            await reader.aclose()
            await redis.aclose()
            await self.engine.close()

    async def _refresh_loop(self) -> None:
        """Keep this worker's jobs from looking abandoned, notice any it lost, and stop the
        work of sessions whose front end died."""
        assert self._recovery is not None
        interval = max(self.settings.claim_idle / 4, 0.02)
        unleased: set[str] = set()
        while True:
            await asyncio.sleep(interval)
            try:
                mine = {key for key, held in self.held.jobs.items() if not held.acked}
                lost = await self._recovery.refresh(mine)
                unleased = await self._drop_orphans(unleased)
            except TRANSIENT_ERRORS as exc:
                metrics.redis_error("refresh")
                log.warning("could not refresh in-flight jobs (%s)", exc)
                continue
            for key in lost:
                held = self.held.jobs.get(key)
                if held is None or held.acked:
                    continue  # finished meanwhile
                log.warning("job %s was claimed by another worker; dropping it", key[1].decode())
                held.lost = True
                if held.token is not None:
                    held.token.set()

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
