"""The speech session on its own: no server, no Redis, no worker. A stand-in backend records the
jobs it is given and hands the session worker events in whatever order a test chooses; the
in-process transport is the client. What comes out must follow the contract: sentences in
order, each framed audio.start / audio / audio.done, a retry's audio instead of a dead
worker's, a gap on the return path failed loudly, nothing after a barge-in."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from voxline.shared import messages
from voxline.shared.capabilities import EngineInfo
from voxline.shared.config import Settings
from voxline.shared.wire import Event, EventKind, Job
from voxline.speech.local import Closed, Frame, LocalSpeech

ENGINE = EngineInfo("stand-in", 24000, ("v",), "v")


@dataclass
class _Queue:
    jobs: list[Job] = field(default_factory=list)
    cancels: list[tuple[str, list[int] | None, int | None]] = field(default_factory=list)
    queued: asyncio.Event = field(default_factory=asyncio.Event)

    async def enqueue(self, *jobs: Job) -> None:
        self.jobs += jobs
        self.queued.set()

    async def cancel(
        self, session_id: str, utterances: list[int] | None = None, sentence: int | None = None
    ) -> None:
        self.cancels.append((session_id, utterances, sentence))

    async def cancel_sentences(self, session_id: str, sentences: list[tuple[int, int]]) -> None:
        pass


@dataclass
class _Returns:
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: dict[str, Callable[[Event], None]] = field(default_factory=dict)

    async def open(self, session_id: str, handler: Callable[[Event], None]) -> None:
        self.handlers[session_id] = handler

    async def release(self, session_id: str) -> None:
        self.handlers.pop(session_id, None)


class _Leases:
    async def acquire(self, session_id: str) -> None:
        pass

    async def release(self, session_id: str) -> None:
        pass


@dataclass
class _Pool:
    info: EngineInfo | None = ENGINE

    async def engine(self) -> tuple[EngineInfo | None, int]:
        return self.info, 1 if self.info else 0


@dataclass
class _Backend:
    settings: Settings = field(default_factory=lambda: Settings(queue_timeout=5, stall_timeout=5))
    queue: _Queue = field(default_factory=_Queue)
    returns: _Returns = field(default_factory=_Returns)
    leases: _Leases = field(default_factory=_Leases)
    pool: _Pool = field(default_factory=_Pool)
    sessions: set[Any] = field(default_factory=set)
    draining: bool = False

    async def overloaded(self) -> str | None:
        return None


@dataclass
class _Run:
    backend: _Backend
    client: LocalSpeech

    @property
    def session_id(self) -> str:
        return self.client.session.id

    def worker(self, job: Job, kind: EventKind, seq: int, data: Any = None, attempt: int = 1):
        """A worker's event for `job`, as the return path hands it over."""
        event = Event(kind, job.utterance, job.sentence, seq, data, attempt)
        self.backend.returns.handlers[self.session_id](event)

    def speak(self, job: Job, *chunks: bytes, attempt: int = 1, first_seq: int = 0) -> None:
        seq = first_seq
        for kind, data in [
            (EventKind.STARTED, "w"),
            *((EventKind.AUDIO, c) for c in chunks),
            (EventKind.DONE, sum(map(len, chunks))),
        ]:
            self.worker(job, kind, seq, data, attempt)
            seq += 1

    async def jobs(self, count: int) -> list[Job]:
        while len(self.backend.queue.jobs) < count:
            self.backend.queue.queued.clear()
            await asyncio.wait_for(self.backend.queue.queued.wait(), 5)
        return self.backend.queue.jobs[:count]

    async def frames_until(self, done: Callable[[Frame], bool]) -> list[Frame]:
        got: list[Frame] = []
        while True:
            frame = await asyncio.wait_for(self.client.next(), 5)
            got.append(frame)
            if done(frame):
                return got


@contextlib.asynccontextmanager
async def _session(backend: _Backend | None = None) -> AsyncIterator[_Run]:
    backend = backend or _Backend()
    backend.returns.connected.set()
    client = LocalSpeech(backend)  # type: ignore[arg-type]
    run = _Run(backend, client)
    try:
        client.configure(response_format="pcm")
        ready = await asyncio.wait_for(client.next(), 5)
        assert isinstance(ready, messages.SessionReady), ready
        yield run
    finally:
        await client.aclose()


def _is(kind: type[Any]) -> Callable[[Frame], bool]:
    return lambda frame: isinstance(frame, kind)


def _shape(frames: list[Frame]) -> list[Any]:
    """Frames as (type, sentence) for messages and the bytes themselves for audio."""
    return [
        f if isinstance(f, bytes | Closed) else (f.type, getattr(f, "sentence_index", None))
        for f in frames
    ]


async def test_sentences_are_relayed_in_order_whatever_order_workers_finish() -> None:
    async with _session() as run:
        run.client.feed("First one. Second one. ")
        run.client.done()
        first, second = await run.jobs(2)
        assert (first.text, second.text) == ("First one.", "Second one.")
        run.speak(second, b"\x02\x02")  # the later sentence's worker is done first
        run.speak(first, b"\x01\x01", b"\x01\x01")
        frames = await run.frames_until(_is(messages.SessionDone))
    assert _shape(frames) == [
        ("audio.start", 0),
        b"\x01\x01",
        b"\x01\x01",
        ("audio.done", 0),
        ("audio.start", 1),
        b"\x02\x02",
        ("audio.done", 1),
        ("session.done", None),
    ]
    done = [f for f in frames if _is(messages.AudioDone)(f)]
    assert [d.total_bytes for d in done] == [4, 2]


async def test_a_retried_job_plays_the_retry_not_the_dead_workers_audio() -> None:
    async with _session() as run:
        run.client.feed("Held back. Retried here. ")
        run.client.done()
        first, second = await run.jobs(2)
        # A worker dies part-way through sentence 1 while sentence 0 is still being heard...
        run.worker(second, EventKind.STARTED, 0, "dead")
        run.worker(second, EventKind.AUDIO, 1, b"\xde\xad")
        # ...and another worker's delivery 2 makes it whole.
        run.speak(second, b"\x0b\x0b", attempt=2)
        run.speak(first, b"\x0a\x0a")
        frames = await run.frames_until(_is(messages.SessionDone))
    audio = [f for f in frames if isinstance(f, bytes)]
    assert audio == [b"\x0a\x0a", b"\x0b\x0b"]
    assert not [f for f in frames if _is(messages.ErrorMessage)(f)]


async def test_a_gap_on_the_return_path_fails_the_sentence_and_stops_its_worker() -> None:
    async with _session() as run:
        run.client.feed("Something is lost. ")
        run.client.done()
        (job,) = await run.jobs(1)
        run.worker(job, EventKind.STARTED, 0, "w")
        run.worker(job, EventKind.AUDIO, 2, b"\x01\x01")  # message 1 never came
        frames = await run.frames_until(_is(messages.SessionDone))
    (error,) = [f for f in frames if isinstance(f, messages.ErrorMessage)]
    assert error.code == "generation_failed" and "message 1 missing" in error.message
    (done,) = [f for f in frames if isinstance(f, messages.AudioDone)]
    assert done.error is True
    assert (run.session_id, [0], 0) in run.backend.queue.cancels, "no worker goes on with it"


async def test_nothing_of_a_sentence_follows_the_barge_in() -> None:
    async with _session() as run:
        run.client.feed("Interrupted mid-way. Never heard. ")
        first, second = await run.jobs(2)
        run.worker(first, EventKind.STARTED, 0, "w")
        run.worker(first, EventKind.AUDIO, 1, b"\x01\x01")
        await run.frames_until(lambda f: isinstance(f, bytes))
        run.client.cancel()
        frames = await run.frames_until(_is(messages.InputCancelled))
        run.worker(first, EventKind.AUDIO, 2, b"\x02\x02")  # the worker had not heard yet
        run.speak(second, b"\x03\x03")
        run.client.close()
        after = await run.frames_until(lambda f: isinstance(f, Closed))
    assert _shape(frames) == [("audio.done", 0), ("input.cancelled", None)]
    cut, cancelled = frames
    assert isinstance(cut, messages.AudioDone) and cut.cancelled is True
    assert isinstance(cancelled, messages.InputCancelled)
    assert cancelled.cancelled_sentences == [0, 1]
    assert after == [Closed(1000)], "no audio of a cancelled utterance"
    assert run.backend.queue.cancels[0] == (run.session_id, [0], None)


async def test_a_session_with_no_worker_is_refused_with_try_again_later() -> None:
    backend = _Backend(pool=_Pool(info=None))
    backend.returns.connected.set()
    client = LocalSpeech(backend)  # type: ignore[arg-type]
    client.configure()
    frames = [frame async for frame in client]
    await client.aclose()
    error, closed = frames
    assert isinstance(error, messages.ErrorMessage) and error.code == "overloaded"
    assert closed == Closed(1013)
    assert backend.sessions == set(), "a refused session leaves nothing behind"


@pytest.mark.parametrize("message", [{"type": "input.text", "text": "Hello."}])
async def test_the_first_message_must_configure_the_session(message: dict[str, Any]) -> None:
    backend = _Backend()
    backend.returns.connected.set()
    client = LocalSpeech(backend)  # type: ignore[arg-type]
    client.transport.send(message)
    error = await asyncio.wait_for(client.next(), 5)
    assert isinstance(error, messages.ErrorMessage) and error.code == "not_configured"
    assert await asyncio.wait_for(client.next(), 5) == Closed(1008)
    await client.aclose()
    assert backend.queue.jobs == []
