"""A batch job's state in Redis, as the front end, the coordinator (arq) and the workers see it.

Every key of one job carries its `{batch-<id>}` hash tag (one Cluster slot), so each step below
is one transaction. The coordinator (batch/coordinator.py) is the only writer of progress; the
front end creates and cancels; a worker records one sentence's audio (or failure).
"""

from __future__ import annotations

import enum
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

from redis.exceptions import WatchError

from voxline.shared.connections import Client
from voxline.shared.keys import Keys


class BatchStatus(enum.StrEnum):
    QUEUED = "queued"  # accepted; the arq job has not started
    RUNNING = "running"
    DONE = "done"  # the file is stored
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL = frozenset({BatchStatus.DONE, BatchStatus.FAILED, BatchStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """What `POST /v1/audio/speech/jobs` asked for (validated by the front end)."""

    text: str
    voice: str
    format: str
    sample_rate: int
    speed: float = 1.0
    language: str = "Auto"
    # The URL as given, for the delivery only (dropped when the job ends), and as shown in the
    # job's status and logs, credentials redacted (batch/callbacks.py).
    callback_url: str = ""
    callback_redacted: str = ""
    # The label of the API key that created the job ("" with keys off): only it sees the job.
    owner: str = ""


def new_batch_id() -> str:
    return secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class BatchState:
    """The status hash, decoded."""

    id: str
    status: BatchStatus
    request: BatchRequest
    total: int  # sentences; 0 until the coordinator split the text
    done: int
    created_at: float
    finished_at: float = 0.0
    error: str = ""
    result: str = ""  # "redis", or the file's path under batch_dir
    bytes: int = 0
    duration: float = 0.0  # seconds of audio
    callback_error: str = ""

    def public(self) -> dict[str, Any]:
        """The job as `GET /v1/audio/speech/jobs/{id}` shows it."""
        out: dict[str, Any] = {
            "id": self.id,
            "object": "speech.job",
            "status": str(self.status),
            "progress": {"sentences_done": self.done, "sentences_total": self.total},
            "created_at": round(self.created_at, 3),
            "voice": self.request.voice,
            "response_format": self.request.format,
            "sample_rate": self.request.sample_rate,
        }
        if self.finished_at:
            out["finished_at"] = round(self.finished_at, 3)
        if self.error:
            out["error"] = self.error
        if self.status is BatchStatus.DONE:
            out["audio_bytes"] = self.bytes
            out["duration"] = round(self.duration, 3)
        if self.request.callback_redacted:
            out["callback_url"] = self.request.callback_redacted
        if self.callback_error:
            out["callback_error"] = self.callback_error
        return out


def _text(value: bytes | None) -> str:
    return value.decode() if value is not None else ""


def parse_state(batch_id: str, raw: dict[bytes, bytes]) -> BatchState | None:
    if not raw or b"status" not in raw:
        return None
    req = BatchRequest(
        text=_text(raw.get(b"text")),
        voice=_text(raw.get(b"voice")),
        format=_text(raw.get(b"format")),
        sample_rate=int(raw.get(b"sample_rate", b"0")),
        speed=float(raw.get(b"speed", b"1")),
        language=_text(raw.get(b"language")) or "Auto",
        callback_url=_text(raw.get(b"callback_url")),
        callback_redacted=_text(raw.get(b"callback_redacted")),
        owner=_text(raw.get(b"owner")),
    )
    return BatchState(
        id=batch_id,
        status=BatchStatus(_text(raw[b"status"])),
        request=req,
        total=int(raw.get(b"total", b"0")),
        done=int(raw.get(b"done", b"0")),
        created_at=float(raw.get(b"created_at", b"0")),
        finished_at=float(raw.get(b"finished_at", b"0")),
        error=_text(raw.get(b"error")),
        result=_text(raw.get(b"result")),
        bytes=int(raw.get(b"bytes", b"0")),
        duration=float(raw.get(b"duration", b"0")),
        callback_error=_text(raw.get(b"callback_error")),
    )


class Batches:
    """The batch jobs' keys: create, read, cancel, and what workers and the coordinator write."""

    def __init__(self, redis: Client, keys: Keys, *, result_ttl: int, timeout: float) -> None:
        self.redis = redis
        self.keys = keys
        self._result_ttl = result_ttl
        # An unfinished job's keys outlive its longest run, so nothing leaks if every arq
        # process is gone for good.
        self._live_ttl = int(timeout) + result_ttl

    async def create(self, batch_id: str, request: BatchRequest) -> None:
        fields = {k: str(v) for k, v in asdict(request).items()}
        fields.update(status=str(BatchStatus.QUEUED), created_at=f"{time.time():.3f}")
        key = self.keys.batch(batch_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            # redis-py's Mapping[FieldT, EncodableT] is invariant in its key: dict[str, str] fails.
            pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
            pipe.expire(key, self._live_ttl)
            await pipe.execute()

    async def get(self, batch_id: str) -> BatchState | None:
        # Replies are bytes (no decode_responses); redis-py types them bytes | str.
        raw = cast(dict[bytes, bytes], await self.redis.hgetall(self.keys.batch(batch_id)))
        return parse_state(batch_id, raw)

    async def status(self, batch_id: str) -> BatchStatus | None:
        raw = cast(bytes | None, await self.redis.hget(self.keys.batch(batch_id), "status"))
        return BatchStatus(raw.decode()) if raw else None

    async def set_fields(self, batch_id: str, **fields: object) -> None:
        """Update a job's hash, only while it exists: a job deleted or expired meanwhile is
        not brought back as a stub."""
        mapping = {k: str(v) for k, v in fields.items()}

        async def update(pipe: Any, current: BatchStatus | None) -> bool:
            if current is None:
                return False
            pipe.hset(self.keys.batch(batch_id), mapping=mapping)
            return True

        await self._transact(batch_id, update)

    async def finish(self, batch_id: str, status: BatchStatus, **fields: object) -> bool:
        """Move an unfinished job to a final status, drop its working keys and start its
        result's TTL; False when it was final already (a cancel and a finish race)."""
        key = self.keys.batch(batch_id)
        mapping = {k: str(v) for k, v in fields.items()}
        mapping.update(status=str(status), finished_at=f"{time.time():.3f}")

        async def end(pipe: Any, current: BatchStatus | None) -> bool:
            if current is None or current in FINAL:
                return False
            pipe.hset(key, mapping=mapping)
            # The request's text is not needed any more, nor the callback URL with whatever
            # credentials it holds (the coordinator calls back with the one it read).
            pipe.hdel(key, "text", "callback_url")
            pipe.expire(key, self._result_ttl)
            pipe.delete(*self.working_keys(batch_id))
            return True

        return await self._transact(batch_id, end)

    async def _transact(
        self, batch_id: str, change: Callable[[Any, BatchStatus | None], Awaitable[bool]]
    ) -> bool:
        """Run `change` on the job's hash as one transaction, decided on its current status;
        again when a worker or another process wrote the hash meanwhile."""
        key = self.keys.batch(batch_id)
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    raw = cast(bytes | None, await pipe.hget(key, "status"))
                    pipe.multi()
                    if not await change(pipe, BatchStatus(raw.decode()) if raw else None):
                        return False
                    await pipe.execute()
                    return True
                except WatchError:
                    continue

    def working_keys(self, batch_id: str) -> list[str]:
        k = self.keys
        return [
            k.batch_sentences(batch_id),
            k.batch_queued(batch_id),
            k.batch_audio(batch_id),
            k.batch_events(batch_id),
        ]


def record_in(pipe: Any, keys: Keys, batch_id: str, sentence: int, pcm: bytes, ttl: int) -> None:
    """A worker's audio for one sentence. The coordinator is woken by the events entry; a
    sentence made twice overwrites its own field, so the file never holds it twice."""
    audio = keys.batch_audio(batch_id)
    pipe.hset(audio, str(sentence), pcm)
    pipe.expire(audio, ttl)  # a late write after the job ended does not live for ever
    pipe.xadd(keys.batch_events(batch_id), {"s": sentence}, maxlen=1000, approximate=True)


def record_failure_in(pipe: Any, keys: Keys, batch_id: str, sentence: int, reason: str) -> None:
    """A sentence that cannot be made fails its job (the first failure is the one reported)."""
    pipe.hsetnx(keys.batch(batch_id), "failed", f"sentence {sentence}: {reason}")
    pipe.xadd(keys.batch_events(batch_id), {"s": sentence}, maxlen=1000, approximate=True)


def wake_in(pipe: Any, keys: Keys, batch_id: str) -> None:
    """Wake the job's coordinator (a cancel)."""
    pipe.xadd(keys.batch_events(batch_id), {"s": -1}, maxlen=1000, approximate=True)
