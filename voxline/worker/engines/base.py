"""The streaming interface every engine implements."""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import unicodedata
from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self, TypeVar

import numpy as np
from pydantic import BaseModel

from voxline.shared.capabilities import EngineInfo
from voxline.shared.messages import Word
from voxline.worker.engines.options import EngineOptions


@dataclass(slots=True)
class AudioChunk:
    """int16 mono PCM at `engine.info.sample_rate`, and the words timed so far.

    A word is delivered once its timing is final, with or after the chunk holding its start;
    a last chunk may carry words only (empty `pcm`).
    """

    pcm: np.ndarray
    words: list[Word] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    text: str
    voice: str
    language: str = "Auto"
    speed: float = 1.0
    word_timestamps: bool = False
    # Compatibility fields the engine advertised in `info.extra_fields` (ref_audio, ...).
    extra: dict[str, Any] = field(default_factory=dict)
    # The utterance's first sentence: the one whose first audio the listener waits for (an
    # engine that makes whole spans may cut it shorter to start sooner).
    opens_utterance: bool = False


class Cancellation:
    """A flag set from the event loop and read between chunks, also from a synthesis thread.

    `wait()` lets an engine that waits on something else (a remote server) stop at once
    instead of at its next chunk."""

    __slots__ = ("_event", "_waiters")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def set(self) -> None:
        self._event.set()
        for loop, waiter in list(self._waiters):
            loop.call_soon_threadsafe(_wake, waiter)

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        """Return once the flag is set."""
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        self._waiters.append(entry)
        try:
            # Checked after registering: a set() in between has either seen the waiter or
            # set the flag before this check.
            if not self._event.is_set():
                await entry[1]
        finally:
            self._waiters.remove(entry)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


T = TypeVar("T")


class Cancelled(Exception):
    """The sentence was cancelled while it waited (on a server, a model session)."""


async def unless_cancelled(awaitable: Awaitable[T], cancel: Cancellation) -> T:
    """`awaitable`'s result, or Cancelled as soon as `cancel` is set: a connect or a first
    answer an upstream is slow to give, or a turn at a busy model, must not hold a cancelled
    sentence's slot."""
    work = asyncio.ensure_future(awaitable)
    stop = asyncio.ensure_future(cancel.wait())
    try:
        await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if work.done():
        return work.result()
    work.cancel()
    with contextlib.suppress(BaseException):
        await work
    raise Cancelled


class EngineError(Exception):
    """Synthesis of one request failed; the message is safe to show the client."""


class EngineUnavailable(RuntimeError):
    """`start()` cannot serve with what was configured (a missing model, voices file or
    upstream); the message says what is wrong and what to do, and is all the operator sees."""


class Engine(ABC):
    """A speech engine, chosen by name (see `worker.engines.ENGINES`).

    `info` may only be known once `start()` has run (espeak lists its voices then).

    Contract of `synthesize`: yield chunks as audio is generated; check `cancel` between
    chunks and stop within ONE chunk once it is set; never block the event loop; raise
    `EngineError` on failure (bad voice, synthesis error).
    """

    info: EngineInfo
    # The engine's options (`--engine-opt key=value`, or VOXLINE_ENGINE_<KEY>): a pydantic
    # model whose fields are the option names, with their types, defaults and limits. The
    # worker validates them once (engines/options.py) and hands them to `from_options`.
    Options: ClassVar[type[BaseModel]] = EngineOptions

    @classmethod
    def from_options(cls, options: BaseModel) -> Self:
        """The engine built from its validated options: by default each field is a keyword
        argument of the constructor (whose defaults match the model's)."""
        return cls(**dict(options))

    async def start(self) -> None:  # noqa: B027 (an optional hook: no-op by default)
        """Load libraries or models; called once per process before any synthesis."""

    async def close(self) -> None:  # noqa: B027
        """Release what `start()` acquired."""

    def capacity(self) -> int | None:
        """How many sentences the engine can serve at once right now (None: no opinion, the
        worker's `--concurrency` decides). The worker never holds more jobs than this."""
        return None

    @abstractmethod
    def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]: ...


_TOKEN = re.compile(r"\S+")


def _is_punctuation(char: str) -> bool:
    return unicodedata.category(char).startswith("P")


def split_words(text: str, start: int = 0, end: int | None = None) -> list[tuple[str, int, int]]:
    """Words of `text[start:end]` as (word, start, end) character offsets into `text`.

    Whitespace-separated, with surrounding punctuation trimmed ("world," -> "world"); tokens
    of punctuation only are dropped.
    """
    words = []
    for match in _TOKEN.finditer(text, start, len(text) if end is None else end):
        a, b = match.span()
        while a < b and _is_punctuation(text[a]):
            a += 1
        while b > a and _is_punctuation(text[b - 1]):
            b -= 1
        if a < b:
            words.append((text[a:b], a, b))
    return words
