"""A deterministic synthetic engine for tests and benchmarks: a sine per voice, its length
proportional to the text, paced at a chosen real-time factor.

For the pipeline benchmarks (bench/pipeline.py) it can also stand for an accelerator with a
fixed time per chunk (`device_ms`), and stamp each chunk with the time it was generated
(`stamp`) so a client can measure what the pipeline adds after the engine.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncGenerator

import numpy as np
from pydantic import Field

from voxline.shared.capabilities import EngineInfo
from voxline.worker.engines.base import (
    AudioChunk,
    Cancellation,
    Engine,
    EngineError,
    SynthesisRequest,
    Word,
    split_words,
)
from voxline.worker.engines.options import EngineOptions

VOICES = {"tone-low": 220.0, "tone-mid": 440.0, "tone-high": 880.0}
DEFAULT_VOICE = "tone-mid"
SPEED_RANGE = (0.25, 4.0)
AMPLITUDE = 0.3 * 32767
FADE_MS = 5  # ramps at both ends so sentences join without clicks
STAMP_BYTES = 8  # `stamp`: a chunk's first 8 bytes are time.monotonic_ns() at its generation


class ToneOptions(EngineOptions):
    sample_rate: int = Field(24000, ge=8000, le=192000)
    """Output sample rate, Hz."""
    chunk_ms: int = Field(40, gt=0)
    """Audio per chunk, ms."""
    ms_per_char: float = Field(60.0, gt=0)
    """Audio per character of text at speed 1, ms."""
    rtf: float = Field(0.0, ge=0)
    """Real-time factor the chunks are paced at (1.0: as fast as they play; 0: at once)."""
    fail_on: str | None = Field(None, min_length=1)
    """Fail a sentence whose text contains this, after its first chunk (fault injection)."""
    device_ms: float = Field(0.0, ge=0)
    """Time every chunk holds the engine's one simulated accelerator, ms (0: none)."""
    stamp: bool = False
    """Stamp each chunk's first 8 bytes with time.monotonic_ns() at its generation."""


class ToneEngine(Engine):
    Options = ToneOptions

    def __init__(
        self,
        *,
        sample_rate: int = 24000,
        chunk_ms: int = 40,
        ms_per_char: float = 60.0,
        rtf: float = 0.0,
        fail_on: str | None = None,
        device_ms: float = 0.0,
        stamp: bool = False,
    ) -> None:
        self.chunk_ms = chunk_ms
        self.chunk_samples = max(1, sample_rate * chunk_ms // 1000)
        self.ms_per_char = ms_per_char
        self.rtf = rtf
        self.fail_on = fail_on or None
        # One device per engine: every chunk, whatever its sentence, holds it for device_ms
        # in turn (FIFO reservations on an absolute schedule, so waits never drift).
        self.device_ms = device_ms
        self._device_free = 0.0
        self.stamp = stamp
        self._tables = {
            freq: _wave_table(freq, sample_rate, self.chunk_samples) for freq in VOICES.values()
        }
        self.info = EngineInfo(
            name="tone",
            sample_rate=sample_rate,
            voices=tuple(VOICES),
            default_voice=DEFAULT_VOICE,
            languages=(),
            word_timestamps=True,
            speed_range=SPEED_RANGE,
        )
        # Observed by tests of the worker; "started" counts generations that began.
        self.stats = {"started": 0, "chunks": 0, "completed": 0, "cancelled": 0, "failed": 0}

    def duration_samples(self, text: str, speed: float = 1.0) -> int:
        seconds = self.ms_per_char * len(text) / speed / 1000
        return round(seconds * self.info.sample_rate)

    def _check(self, request: SynthesisRequest) -> float:
        voice = request.voice or DEFAULT_VOICE
        if voice not in VOICES:
            raise EngineError(f"unknown voice {voice!r}; tone voices are {list(VOICES)}")
        if request.language != "Auto":
            raise EngineError(f"tone speaks only language 'Auto', not {request.language!r}")
        low, high = SPEED_RANGE
        if not low <= request.speed <= high:
            raise EngineError(f"speed must be {low}..{high}, got {request.speed}")
        return VOICES[voice]

    def _words(self, text: str, total: int) -> list[tuple[int, Word]]:
        """(start sample, word): words share the duration in proportion to their length."""
        words = split_words(text)
        letters = sum(len(w) for w, _, _ in words)
        rate = self.info.sample_rate
        timed, before = [], 0
        for word, _, _ in words:
            start, end = total * before // letters, total * (before + len(word)) // letters
            before += len(word)
            timed.append((start, Word(word, start * 1000 // rate, end * 1000 // rate)))
        return timed

    def _samples(self, freq: float, start: int, stop: int, total: int) -> np.ndarray:
        table, period = self._tables[freq]
        offset = start % period
        pcm = table[offset : offset + stop - start].copy()  # a view would share the table
        fade = max(1, self.info.sample_rate * FADE_MS // 1000)
        if start < fade or stop > total - fade:  # only a sentence's ends are ramped
            n = np.arange(start, stop, dtype=np.float64)
            ramp = np.clip(np.minimum(n + 1, total - n) / fade, 0.0, 1.0)
            pcm = np.rint(pcm * ramp).astype(np.int16)
        return pcm

    async def _compute(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        """Wait for the chunk's "compute": its place on the rtf schedule (`due`), then its
        turn on the device."""
        if self.rtf:
            await asyncio.sleep(max(due - loop.time(), 0.0))
        if self.device_ms:
            start = max(loop.time(), self._device_free)
            self._device_free = start + self.device_ms / 1000
            await asyncio.sleep(self._device_free - loop.time())

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        freq = self._check(request)
        total = self.duration_samples(request.text, request.speed)
        words = self._words(request.text, total) if request.word_timestamps else []
        self.stats["started"] += 1
        rate, step = self.info.sample_rate, self.chunk_samples
        loop = asyncio.get_running_loop()
        began = loop.time()
        completed = False
        try:
            for index, start in enumerate(range(0, total, step)):
                if cancel.is_set():
                    return
                stop = min(start + step, total)
                pcm = self._samples(freq, start, stop, total)
                # The chunk's "compute time", before delivery: time to first audio is paced
                # too. The schedule is absolute, so a late wake-up is not carried forward.
                await self._compute(loop, began + stop / rate * self.rtf)
                if cancel.is_set():
                    return
                if self.stamp and len(pcm) * 2 >= STAMP_BYTES:
                    pcm[: STAMP_BYTES // 2].view(np.int64)[0] = time.monotonic_ns()
                self.stats["chunks"] += 1
                yield AudioChunk(pcm, [w for s, w in words if start <= s < stop])
                if index == 0 and self.fail_on is not None and self.fail_on in request.text:
                    self.stats["failed"] += 1
                    raise EngineError(f"tone: injected failure (text contains {self.fail_on!r})")
            completed = True
            self.stats["completed"] += 1
        finally:
            # Also when the consumer saw the cancel first and closed the stream.
            if not completed and cancel.is_set():
                self.stats["cancelled"] += 1


def _wave_table(freq: float, rate: int, chunk: int) -> tuple[np.ndarray, int]:
    """A whole number of periods of the voice's sine (the shortest that ends where it began),
    extended by one chunk so any chunk is a plain slice: no sine is computed per chunk."""
    period = rate // math.gcd(rate, round(freq))
    n = np.arange(period + chunk, dtype=np.float64)
    wave = np.rint(np.sin(2 * np.pi * freq * (n % period) / rate) * AMPLITUDE)
    return wave.astype(np.int16), period
