"""The msgpack wire codec between front end and workers: jobs, return-path events, cancels.

Front ends and workers of neighbouring versions share one Redis during a rolling upgrade, so
every reader accepts what a version before or after it writes:
- a job is a map of field names (it waits in a stream, where a job written by the previous
  version may still be when the new workers start): a field the reader does not know is
  ignored, a field the writer did not know takes its default. The positional list the
  previous version wrote is read too.
- events and cancels are lists (one per audio chunk: no names to repeat), whose fields are
  only ever added at the end: a reader ignores fields after the ones it knows, and a field
  missing at the end takes its default.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any

import msgpack


@dataclass(frozen=True, slots=True)
class Job:
    """One sentence to synthesize, as queued on the jobs stream."""

    session_id: str
    utterance: int
    sentence: int
    text: str
    voice: str
    format: str = "wav"
    sample_rate: int = 0  # 0: the engine's native rate
    stream_audio: bool = False
    speed: float = 1.0
    language: str = "Auto"
    word_timestamps: bool = False
    enqueued_at: float = 0.0  # unix seconds, for queue-latency metrics
    extra: dict[str, Any] = field(default_factory=dict)  # compatibility fields the engine honours
    batch: str = ""  # the batch job's id; "" for a real-time sentence

    def pack(self) -> bytes:
        return msgpack.packb({name: getattr(self, name) for name in _JOB_FIELDS})

    @classmethod
    def unpack(cls, data: bytes) -> Job:
        raw = msgpack.unpackb(data)
        if isinstance(raw, list):  # the previous version's positional encoding
            raw = dict(zip(_JOB_FIELDS, raw, strict=False))
        if not isinstance(raw, dict):
            raise ValueError(f"a job is a map, not {type(raw).__name__}")
        return cls(**{name: value for name, value in raw.items() if name in _JOB_FIELDS})


# In the order the positional encoding used; new fields go at the end.
_JOB_FIELDS = tuple(f.name for f in fields(Job))


class EventKind(enum.IntEnum):
    STARTED = 0  # a worker took the job (carries the worker id)
    AUDIO = 1  # encoded audio bytes
    WORDS = 2  # word timestamps
    DONE = 3  # the sentence is complete
    ERROR = 4  # generation failed; no more events for this sentence


@dataclass(frozen=True, slots=True)
class Event:
    """One return-path message for one sentence.

    `seq` counts 0, 1, 2, ... per sentence, so the front end can tell a lost message from
    a slow one: several workers may publish on the same session channel at once, so a
    per-session counter would need coordination; a per-sentence one does not.
    """

    kind: EventKind
    utterance: int
    sentence: int
    seq: int
    data: Any = None
    # The job's delivery count: 1, or more after a dead worker's job was claimed by another.
    # The front end follows the newest attempt and ignores a superseded worker's events.
    attempt: int = 1

    def pack(self) -> bytes:
        return msgpack.packb(
            [int(self.kind), self.utterance, self.sentence, self.seq, self.data, self.attempt]
        )

    @classmethod
    def unpack(cls, data: bytes) -> Event:
        kind, utterance, sentence, seq, *rest = msgpack.unpackb(data)
        payload = rest[0] if rest else None
        attempt = rest[1] if len(rest) > 1 else 1
        return cls(EventKind(kind), utterance, sentence, seq, payload, attempt)


@dataclass(frozen=True, slots=True)
class Cancel:
    """Broadcast to workers: stop in-flight work matching this session (and utterance)."""

    session_id: str
    utterance: int | None = None  # None: the whole session
    sentence: int | None = None  # None: the whole utterance

    def pack(self) -> bytes:
        return msgpack.packb([self.session_id, self.utterance, self.sentence])

    @classmethod
    def unpack(cls, data: bytes) -> Cancel:
        return cls(*msgpack.unpackb(data)[:3])

    def matches(self, job: Job) -> bool:
        if job.session_id != self.session_id:
            return False
        if self.utterance is None:
            return True
        if job.utterance != self.utterance:
            return False
        return self.sentence is None or job.sentence == self.sentence
