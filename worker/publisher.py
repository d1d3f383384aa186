"""Publishes one sentence's events on its session's audio channel, sequence-numbered."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from shared.wire import Event, EventKind, Job


class SentencePublisher:
    def __init__(self, redis: aioredis.Redis, channel: str, job: Job) -> None:
        self._redis = redis
        self._channel = channel
        self._job = job
        self._seq = 0
        self.audio_bytes = 0

    async def send(self, kind: EventKind, data: Any = None) -> None:
        await self._redis.publish(self._channel, self._next(kind, data))

    def send_in(self, pipe: aioredis.client.Pipeline, kind: EventKind, data: Any = None) -> None:
        """Queue the next event on a pipeline (sent with the pipeline's other commands)."""
        pipe.publish(self._channel, self._next(kind, data))

    def _next(self, kind: EventKind, data: Any) -> bytes:
        event = Event(kind, self._job.utterance, self._job.sentence, self._seq, data)
        self._seq += 1
        if kind is EventKind.AUDIO:
            self.audio_bytes += len(data)
        return event.pack()
