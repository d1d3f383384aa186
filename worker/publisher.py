"""Publishes one sentence's events on its session's audio channel, sequence-numbered."""

from __future__ import annotations

from typing import Any

from shared.channels import publish_event
from shared.connections import Client
from shared.wire import Event, EventKind, Job


class SentencePublisher:
    def __init__(self, redis: Client, channel: str, job: Job, attempt: int = 1) -> None:
        self._redis = redis
        self._channel = channel
        self._job = job
        self._attempt = attempt
        self._seq = 0
        self.audio_bytes = 0
        self.spoke = False  # audio or words went out: a retry elsewhere would repeat them

    async def send(self, kind: EventKind, data: Any = None) -> None:
        await publish_event(self._redis, self._channel, self._next(kind, data))

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
