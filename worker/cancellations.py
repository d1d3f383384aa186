"""How cancels reach a worker: the per-session cancel set (checked before a job starts) and
the cancel channel (which stops jobs already in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.connections import connect
from shared.keys import Keys, cancel_tokens
from shared.wire import Cancel, Job
from worker.engines.base import Cancellation

log = logging.getLogger("voxline.worker.cancel")


class InFlight:
    """The jobs this worker is running, each with its cancellation flag."""

    def __init__(self) -> None:
        self._jobs: dict[int, tuple[Job, Cancellation]] = {}

    def add(self, job: Job) -> Cancellation:
        token = Cancellation()
        self._jobs[id(token)] = (job, token)
        return token

    def remove(self, token: Cancellation) -> None:
        self._jobs.pop(id(token), None)

    def apply(self, notice: Cancel) -> int:
        hits = 0
        for job, token in self._jobs.values():
            if notice.matches(job):
                token.set()
                hits += 1
        return hits

    def __len__(self) -> int:
        return len(self._jobs)

    def items(self) -> list[tuple[Job, Cancellation]]:
        return list(self._jobs.values())


async def is_cancelled(redis: aioredis.Redis, keys: Keys, job: Job) -> bool:
    flags = await redis.smismember(
        keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
    )
    return any(flags)


class CancelListener:
    """Subscribes to the cancel channel and flags matching in-flight jobs."""

    def __init__(self, redis_url: str, keys: Keys, in_flight: InFlight) -> None:
        self._client = connect(redis_url, blocking=True)
        self._keys = keys
        self._in_flight = in_flight
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self._task: asyncio.Task[None] | None = None

    async def _recheck(self) -> None:
        for job, token in self._in_flight.items():
            if await is_cancelled(self._client, self._keys, job):
                token.set()

    async def start(self) -> None:
        await self._pubsub.subscribe(self._keys.cancel_channel)
        self._task = asyncio.create_task(self._loop(), name="voxline-cancel-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
            await self._client.aclose()

    async def _loop(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=5.0
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cancel channel lost (%s); reconnecting", exc)
                await asyncio.sleep(0.5)
                # Notices published meanwhile are gone: ask the cancel sets instead.
                with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                    await self._recheck()
                continue
            if message is not None and message["type"] == "message":
                try:
                    self._in_flight.apply(Cancel.unpack(message["data"]))
                except Exception:
                    log.exception("bad cancel notice")
