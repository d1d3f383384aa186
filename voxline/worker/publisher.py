"""Publishing a worker's events: one sentence's sequence-numbered events (`SentencePublisher`),
and one outbox that carries every job's events to Redis (`Outbox`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

from voxline.shared.channels import publish_event
from voxline.shared.connections import Client
from voxline.shared.wire import Event, EventKind, Job

# Commands queued on the outbox's pipeline ahead of one message.
Before = Callable[[Any], None]


class Outbox:
    """The worker's publishes, coalesced: what its jobs hand over while a write is out goes
    together in the next one, as one pipeline on one connection.

    A publish per chunk, each on its own round trip, cost the worker a socket write and a pool
    checkout per chunk; at a few hundred streams that was most of its CPU (docs/benchmarks.md,
    relay). An idle outbox sends at once, so a lone sentence waits for nothing.
    """

    def __init__(self, redis: Client) -> None:
        self._redis = redis
        self._pending: list[tuple[str, bytes, Before | None, asyncio.Future[None]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="voxline-outbox")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for *_, done in self._pending:
            if not done.done():
                done.set_exception(ConnectionError("the worker's outbox is closed"))
        self._pending = []

    async def publish(self, channel: str, data: bytes, before: Before | None = None) -> None:
        """Returns once Redis took the message; raises what the write raised. `before` queues
        commands that run just ahead of the publish, in the same write."""
        if self._task is None or self._task.done():
            raise RuntimeError("the outbox is not running")
        done = asyncio.get_running_loop().create_future()
        self._pending.append((channel, data, before, done))
        self._wakeup.set()
        await done

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for channel, data, before, _ in batch:
                        if before is not None:
                            before(pipe)
                        publish_event(pipe, channel, data)
                    await pipe.execute()
            except asyncio.CancelledError:
                self._pending[:0] = batch  # close() fails them
                raise
            except Exception as exc:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for *_, done in batch:
                    if not done.done():
                        done.set_result(None)


class SentencePublisher:
    def __init__(self, outbox: Outbox, channel: str, job: Job, attempt: int = 1) -> None:
        self._outbox = outbox
        self._channel = channel
        self._job = job
        self._attempt = attempt
        self._seq = 0
        self.audio_bytes = 0
        self.spoke = False  # audio or words went out: a retry elsewhere would repeat them

    async def send(self, kind: EventKind, data: Any = None, before: Before | None = None) -> None:
        await self._outbox.publish(self._channel, self._next(kind, data), before)

    def send_in(self, pipe: Any, kind: EventKind, data: Any = None) -> None:
        """Queue the next event on a pipeline (sent with the pipeline's other commands)."""
        publish_event(pipe, self._channel, self._next(kind, data))

    def _next(self, kind: EventKind, data: Any) -> bytes:
        event = Event(kind, self._job.utterance, self._job.sentence, self._seq, data, self._attempt)
        self._seq += 1
        if kind is EventKind.AUDIO:
            self.audio_bytes += len(data)
        if kind in (EventKind.AUDIO, EventKind.WORDS):
            self.spoke = True
        return event.pack()
