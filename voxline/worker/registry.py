"""A worker's entry in the pool registry: engine info for the front end, a heartbeat for
/readyz, and counters an operator (or a test) reads to see what the worker did."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from voxline.shared import metrics
from voxline.shared.capabilities import EngineInfo
from voxline.shared.connections import Client
from voxline.shared.keys import Keys
from voxline.shared.tasks import stop

log = logging.getLogger("voxline.worker.registry")

COUNTERS = (
    "taken",  # jobs read from the stream
    "started",  # jobs whose synthesis began
    "skipped_cancelled",  # jobs never started because they were cancelled while queued
    "completed",
    "cancelled",  # in-flight jobs stopped by a cancel
    "failed",
    "chunks",  # engine chunks generated
    "chunks_after_cancel",  # chunks the engine produced after the cancel flag was set
    "claimed",  # jobs taken over from a dead worker (XAUTOCLAIM)
    "dead_lettered",  # jobs given up on after max_deliveries
    "vanished",  # abandoned jobs trimmed from the stream before they could be claimed
    "released",  # unstarted jobs handed back at shutdown, for another worker to take
    "handed_back",  # jobs read beyond the free slots (several shards at once), put back first
    "lost",  # jobs another worker claimed while this one was cut off
    "orphaned",  # jobs skipped because their session's front end was gone (lease lapsed)
)


class Registration:
    def __init__(
        self,
        redis: Client,
        keys: Keys,
        worker_id: str,
        info: EngineInfo,
        *,
        interval: float,
        ttl: float,
        heartbeat_file: str | None = None,
        slots: Callable[[], int] = lambda: 1,
    ) -> None:
        self._redis = redis
        self._slots = slots
        self._keys = keys
        self._id = worker_id
        self._info = info
        self._interval = interval
        self._ttl = ttl
        self._heartbeat_file = heartbeat_file
        self._task: asyncio.Task[None] | None = None
        self.stats: dict[str, int] = dict.fromkeys(COUNTERS, 0)

    async def start(self) -> None:
        key = self._keys.worker(self._id)
        await self._redis.hset(
            key,
            mapping={
                "info": self._info.pack(),
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": time.time(),
                **dict.fromkeys(COUNTERS, 0),
            },
        )
        await self._beat()
        self._task = asyncio.create_task(self._loop(), name="voxline-heartbeat")

    async def stop(self) -> None:
        await stop(self._task)
        with contextlib.suppress(Exception):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.zrem(self._keys.workers, self._id)
                pipe.delete(self._keys.worker(self._id))
                await pipe.execute()

    def count(self, pipe: Any, **deltas: int) -> None:
        """Add counter deltas locally and to `pipe` (sent with the job's acknowledgement)."""
        key = self._keys.worker(self._id)
        for name, delta in deltas.items():
            if delta:
                self.stats[name] += delta
                pipe.hincrby(key, name, delta)

    async def bump(self, **deltas: int) -> None:
        """Add counter deltas outside a job's own pipeline."""
        async with self._redis.pipeline(transaction=False) as pipe:
            self.count(pipe, **deltas)
            await pipe.execute()

    async def _beat(self) -> None:
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            # The info is rewritten every beat: the hash may be gone (a Redis restart, a beat
            # missed past the TTL), and without it the front end cannot use this worker.
            pipe.hset(
                self._keys.worker(self._id),
                mapping={
                    "info": self._info.pack(),
                    "slots": self._slots(),
                    "shards": self._keys.shards,
                },
            )
            pipe.expire(self._keys.worker(self._id), int(self._ttl) + 1)
            pipe.zadd(self._keys.workers, {self._id: now})
            # Entries of workers that died without deregistering.
            pipe.zremrangebyscore(self._keys.workers, "-inf", now - 10 * self._ttl)
            await pipe.execute()
        if self._heartbeat_file:
            Path(self._heartbeat_file).touch()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self._beat()
            except Exception as exc:
                metrics.redis_error("heartbeat")
                log.warning("heartbeat failed: %s", exc)
