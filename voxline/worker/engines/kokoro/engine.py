"""Kokoro-82M on ONNX Runtime: a neural voice that runs on CPU.

kokoro-onnx does the parts it does well and is used for them: the vocabulary, espeak-ng
phonemization (under its own lock: espeak-ng is process-global state) and one span's
synthesis (`Kokoro.create`, which trims the model's edge silence). Its `create_stream` is
not used: it cuts by phoneme count, not where a listener can wait, and offers no cancel
between spans. Here instead:

- Spans. Kokoro makes a whole span per call, so first audio waits for the whole span. The
  first sentence of an utterance, when longer than `first_span_chars`, is cut at clause
  marks (`,;:` or a dash): first the shortest clause (at least `MIN_HEAD_CHARS`, so "Sure,"
  or "Well," count) after which this machine can make the rest while the earlier spans play
  (its measured pace, `pace.py`), the rest whole or, if it would not be ready in time, cut
  again, at most `MAX_SPANS` spans in all; when no cut keeps the listener from waiting, the
  sentence stays whole. Later sentences are one span (better prosody; they are made while
  earlier ones play).
- Chunks. A span's audio goes out in `chunk_ms` pieces as soon as the span exists; cancel is
  checked between chunks and before each span, so it stops within one chunk (the span being
  computed when the cancel comes is finished and dropped: ONNX Runtime cannot stop a run).
- Joins. Each span is faded in and out over `FADE_MS` (its trimmed edges need not sit at
  zero) and the spans are separated by the clause pause kokoro-onnx uses (0.1 s): no step
  beyond the signal's own at a join, no gap longer than a comma's.
- Concurrency. Several sentences at once (`capacity()`: as many as the measured real-time
  factor keeps real time) on `streams` ONNX Runtime sessions run from a thread pool (a
  session run holds no GIL), the cores split between them. The spans of the sentences in
  flight take turns on the sessions earliest deadline first (`sessions.py`): an utterance's
  opening clause within half a second, the next span of a playing sentence before its
  listener runs dry.
  Default one stream with every core: on 2 cores two streams of one thread each made 2.25x
  real time against 3.5x for one (bench/kokoro.py, docs/benchmarks.md).
- Voices and languages. Voice names come from the voices file. A voice's first letter picks
  the espeak-ng language of its phonemes (a: en-us, b: en-gb, e: es, f: fr-fr, h: hi, i: it,
  p: pt-br, z: cmn); the Japanese tables (j) get English phonemes, since a Japanese
  grapheme-to-phoneme step (misaki) is not part of this engine — voxline's use is English.
  A request's `language` (en, en-us, en-gb) overrides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import time
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from pydantic import Field

from voxline.shared.capabilities import EngineInfo
from voxline.worker.engines.base import (
    AudioChunk,
    Cancellation,
    Cancelled,
    Engine,
    EngineError,
    SynthesisRequest,
    unless_cancelled,
)
from voxline.worker.engines.kokoro.loading import KokoroMissing, load_voices, resolve
from voxline.worker.engines.kokoro.pace import Pace
from voxline.worker.engines.kokoro.sessions import Sessions
from voxline.worker.engines.options import EngineOptions

log = logging.getLogger("voxline.worker.kokoro")

SAMPLE_RATE = 24000
SPEED_RANGE = (0.5, 2.0)  # what Kokoro's graph is exported for
# The voice the offline recognizer understands best in English among the PyPI tables
# (bench/voices.py, pocketsphinx word error rate on 20 sentences: jm_kumo 0.115,
# jf_gongitsune 0.129, jf_nezumi 0.187, jf_tebukuro 0.518, jf_alpha 0.633; espeak 0.928).
PREFERRED_VOICE = "jm_kumo"
FADE_MS = 4
JOIN_PAUSE_S = 0.1
# "Sure," "Well," "Okay,": how replies open, and a span of their own costs no intelligibility
# (bench/voices.py --heads: recognizer word error rate cut 0.071 against 0.153 whole).
MIN_HEAD_CHARS = 4
MAX_SPANS = 3  # a first sentence is cut at most twice: each join is a pause
# An utterance's opening yields to the next span of a sentence already playing when that is
# due within this long: its first word comes later, rather than a gap in words already heard.
OPENING_WAIT_S = 0.5
# A later sentence is asked for while earlier ones play; when it is needed is not known
# here, so it yields to utterances' openings asked for up to half a second after it.
LATER_SENTENCE_SLACK_S = 1.0
TYPICAL_SENTENCE_S = 3.0  # of speech: what capacity() is counted in
# The longest wait for a span the cut may risk: with the pause, a join is then at most 0.35 s
# of silence, under the 0.44 s the model itself leaves at a comma (bench/voices.py, joins).
MAX_STALL_S = 0.25
_CLAUSE = re.compile(r"[,;:]\s|\s[-–—]\s")  # noqa: RUF001 (the dashes are meant)
_LANG_OF_PREFIX = {
    "a": "en-us",
    "b": "en-gb",
    "e": "es",
    "f": "fr-fr",
    "h": "hi",
    "i": "it",
    "p": "pt-br",
    "z": "cmn",
}
_REQUEST_LANG = {"en": "en-us", "English": "en-us", "en-us": "en-us", "en-gb": "en-gb"}


def _marks(text: str) -> list[tuple[int, int]]:
    """(end of the text before, start of the text after) each clause mark."""
    marks = []
    for match in _CLAUSE.finditer(text):
        cut = match.start() + 1 if text[match.start()] in ",;:" else match.start()
        marks.append((cut, match.end()))
    return marks


def split_first(
    text: str, first_span_chars: int, pace: Pace | None = None, speed: float = 1.0
) -> list[str]:
    """The spans of an utterance's first sentence, cut at clause marks: its first audio is
    then its first clause's compute, not the whole sentence's.

    Without `pace`: the first clause (at least `MIN_HEAD_CHARS`), then the rest. With `pace`
    (the machine's measured speed), the shortest first clause after which the rest can be
    made without the listener waiting more than `MAX_STALL_S` at a join; the rest in as few
    spans as that allows (each as long as is ready in time), `MAX_SPANS` at most. When no
    first clause allows it, the sentence stays whole: a later start rather than a stall."""
    if len(text) <= first_span_chars:
        return [text]
    marks = [
        (c, n)
        for c, n in _marks(text)
        if len(text[:c].strip()) >= MIN_HEAD_CHARS and text[n:].strip()
    ]
    if not marks:
        return [text]
    if pace is None:
        cut, rest = marks[0]
        return [text[:cut].strip(), text[rest:].strip()]
    for i, (cut, rest) in enumerate(marks):
        spans = _schedule(text, marks[i + 1 :], cut, rest, pace, speed)
        if spans is not None:
            return spans
    return [text]


def _schedule(
    text: str, later: list[tuple[int, int]], cut: int, rest: int, pace: Pace, speed: float
) -> list[str] | None:
    """`text` cut first at `cut`, then at as few of the `later` marks as keep every join's
    wait within `MAX_STALL_S`; None when no such cut exists."""
    head = text[:cut].strip()
    spans = [head]
    ready = pace.compute_s(len(head), speed)  # when the span made last is ready
    plays_until = ready + pace.audio_s(len(head), speed) + JOIN_PAUSE_S
    start = rest
    while start < len(text):
        # The longest next span that is ready in time: the rest whole, else up to a mark.
        ends = [(len(text), len(text))]
        if len(spans) < MAX_SPANS - 1:
            ends += [(c, n) for c, n in reversed(later) if c > start]
        fits = [
            (span, done, after)
            for end, after in ends
            if (span := text[start:end].strip())
            and (done := ready + pace.compute_s(len(span), speed)) <= plays_until + MAX_STALL_S
        ]
        if not fits:
            return None
        span, ready, start = fits[0]
        spans.append(span)
        plays_until = max(plays_until, ready) + pace.audio_s(len(span), speed) + JOIN_PAUSE_S
    return spans


def voice_language(voice: str) -> str:
    return _LANG_OF_PREFIX.get(voice[:1], "en-us")


def _faded(audio: np.ndarray) -> np.ndarray:
    n = min(int(SAMPLE_RATE * FADE_MS / 1000), len(audio) // 2)
    if n > 0:
        ramp = np.linspace(0.0, 1.0, n, dtype=np.float32)
        audio = audio.copy()
        audio[:n] *= ramp
        audio[-n:] *= ramp[::-1]
    return audio


def _pcm(audio: np.ndarray) -> np.ndarray:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)


class KokoroOptions(EngineOptions):
    model: str | None = None
    """A Kokoro .onnx file, or a directory holding one (default: the int8 model from PyPI)."""
    voices: str | None = None
    """A voices .bin/.npz file, or a directory holding one (default: the packaged tables)."""
    streams: int = Field(1, ge=1)
    """ONNX Runtime sessions run at once, the cores split between them."""
    threads: int | None = Field(None, ge=1)
    """Threads per session (default: the cores divided by streams)."""
    chunk_ms: int = Field(100, ge=1)
    """Audio per chunk sent, ms."""
    first_span_chars: int = Field(24, ge=1)
    """An utterance's first sentence longer than this is cut at its clauses."""


class KokoroEngine(Engine):
    Options = KokoroOptions

    def __init__(
        self,
        model: str | None = None,
        voices: str | None = None,
        streams: int = 1,
        threads: int | None = None,
        chunk_ms: int = 100,
        first_span_chars: int = 24,
    ) -> None:
        self.model_option, self.voices_option = model, voices
        self.streams = streams
        self.threads = threads or max(1, (os.cpu_count() or 1) // streams)
        self.chunk_samples = SAMPLE_RATE * chunk_ms // 1000
        self.first_span_chars = first_span_chars
        self._kokoros: Sessions[Any] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._info: EngineInfo | None = None
        self._rtf: float | None = None  # measured at start, seconds of work per second made
        self.pace: Pace | None = None  # measured at start, then followed span by span
        self.stats = {"spans": 0, "cancelled": 0}
        self._active = 0  # sentences being made now

    @property
    def info(self) -> EngineInfo:  # type: ignore[override]
        if self._info is None:
            raise RuntimeError("kokoro: start() has not run")
        return self._info

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._pool = ThreadPoolExecutor(self.streams, thread_name_prefix="kokoro")
        try:
            resolved = resolve(self.model_option, self.voices_option)
            tables = load_voices(resolved.voices)
            kokoros = await loop.run_in_executor(self._pool, self._load, resolved, tables)
        except KokoroMissing:
            self._pool.shutdown(wait=False)
            raise
        self._kokoros = Sessions(kokoros)
        voices = tuple(sorted(tables))
        default = PREFERRED_VOICE if PREFERRED_VOICE in tables else voices[0]
        self._info = EngineInfo(
            name="kokoro",
            sample_rate=SAMPLE_RATE,
            voices=voices,
            default_voice=default,
            languages=tuple(_REQUEST_LANG),
            speed_range=SPEED_RANGE,
            voice_languages=tuple((v, (voice_language(v),)) for v in voices),
        )
        # A warm-up span builds ONNX Runtime's kernels; a short and a longer one then give
        # the machine's pace (fixed cost per span, cost per second of audio) and how many
        # streams stay real time.
        await self._span("Hello.", default, 1.0, "en-us")
        # Each the faster of two: a neighbour's burst must not halve the capacity for good.
        timed = [
            min([await self._timed(t, default) for _ in range(2)])
            for t in ("Hello.", "The weather is nice today.")
        ]
        self.pace = Pace.fitted(*timed)
        self._rtf = timed[1][0] / max(timed[1][1], 1e-3)
        log.info(
            "kokoro: %s, voices %s (%d), %d streams x %d threads, warm-up real-time factor "
            "%.2f (%.0f ms per span + %.2f s per second of audio)",
            resolved.source,
            resolved.voices,
            len(voices),
            self.streams,
            self.threads,
            self._rtf,
            self.pace.overhead_s * 1000,
            self.pace.rtf,
        )

    async def _timed(self, text: str, voice: str) -> tuple[float, float]:
        began = time.perf_counter()
        audio = await self._span(text, voice, 1.0, "en-us")
        return time.perf_counter() - began, len(audio) / SAMPLE_RATE

    def _load(self, resolved: Any, tables: dict[str, np.ndarray]) -> list[Any]:
        import onnxruntime as ort  # noqa: PLC0415 (the optional extra, only when chosen)
        from kokoro_onnx import Kokoro  # noqa: PLC0415

        providers = [p for p in ("CUDAExecutionProvider",) if p in ort.get_available_providers()]
        providers.append("CPUExecutionProvider")
        kokoros = []
        for _ in range(self.streams):
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            try:
                session = ort.InferenceSession(
                    str(resolved.model), sess_options=options, providers=providers
                )
            except Exception as exc:  # onnxruntime raises its own classes
                raise KokoroMissing(
                    f"model {resolved.model}: not a Kokoro ONNX model ({exc})"
                ) from None
            kokoro = Kokoro.from_session(session, str(resolved.voices))
            kokoro.voices = tables  # checked above; np.load's lazy file would be re-read per call
            kokoros.append(kokoro)
        return kokoros

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def capacity(self) -> int | None:
        # Sentences that stay real time at once: a stream makes a typical sentence in
        # `share` of its length; a fifth is kept back for the rest of the process. The pace
        # followed span by span, so a machine that gets busier admits fewer. Their spans
        # take turns on the streams by deadline (sessions.py).
        if self.pace is not None:
            seconds = self.pace.overhead_s + self.pace.rtf * TYPICAL_SENTENCE_S
            share = seconds / TYPICAL_SENTENCE_S
        elif self._rtf is not None:
            share = self._rtf
        else:
            return self.streams
        return max(1, math.floor(0.8 * self.streams / max(share, 1e-3)))

    async def _span(
        self,
        text: str,
        voice: str,
        speed: float,
        lang: str,
        deadline: float | None = None,
        cancel: Cancellation | None = None,
    ) -> np.ndarray:
        """One span's audio, made when a stream is free and no span with an earlier
        deadline waits (Cancelled if `cancel` comes first; a span being made is finished)."""
        assert self._kokoros is not None and self._pool is not None
        loop = asyncio.get_running_loop()
        turn = self._kokoros.acquire(loop.time() if deadline is None else deadline)
        kokoro = await (turn if cancel is None else unless_cancelled(turn, cancel))
        try:
            began = time.perf_counter()
            audio, _ = await loop.run_in_executor(
                self._pool, lambda: kokoro.create(text, voice, speed=speed, lang=lang)
            )
            took = time.perf_counter() - began
        finally:
            self._kokoros.release(kokoro)
        self.stats["spans"] += 1
        if self.pace is not None:
            self.pace.observe(len(text), took, len(audio) / SAMPLE_RATE, speed)
        return np.asarray(audio, dtype=np.float32)

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        info = self.info
        if request.voice not in info.voices:
            raise EngineError(f"kokoro has no voice {request.voice!r}")
        if request.word_timestamps:  # the front end refuses it first (info.word_timestamps)
            raise EngineError("kokoro cannot time words: its ONNX export outputs audio only")
        if not SPEED_RANGE[0] <= request.speed <= SPEED_RANGE[1]:
            raise EngineError(f"kokoro speaks at speed {SPEED_RANGE[0]}..{SPEED_RANGE[1]}")
        lang = _REQUEST_LANG.get(request.language) or voice_language(request.voice)
        self._active += 1
        try:
            async with contextlib.aclosing(self._speak(request, lang, cancel)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self._active -= 1

    async def _speak(
        self, request: SynthesisRequest, lang: str, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        # The cut is planned at the pace this sentence will get: the sentences in flight
        # take turns on the streams.
        pace = self.pace.shared(self._active / self.streams) if self.pace else None
        spans = (
            split_first(request.text, self.first_span_chars, pace, request.speed)
            if request.opens_utterance
            else [request.text]
        )
        loop = asyncio.get_running_loop()
        asked = loop.time()
        playing_since: float | None = None  # when this sentence's first chunk went out
        sent_s = 0.0  # seconds of audio it has sent
        for i, span in enumerate(spans):
            if cancel.is_set():
                self.stats["cancelled"] += 1
                return
            if playing_since is not None:
                deadline = playing_since + sent_s  # when its listener runs dry
            else:
                wait = OPENING_WAIT_S if request.opens_utterance else LATER_SENTENCE_SLACK_S
                deadline = asked + wait
            try:
                audio = await self._span(span, request.voice, request.speed, lang, deadline, cancel)
            except Cancelled:
                self.stats["cancelled"] += 1
                return
            except ValueError as exc:  # kokoro-onnx: nothing it can phonemize, bad voice
                raise EngineError(f"kokoro: {exc}") from None
            if len(spans) > 1:
                audio = _faded(audio)
                if i < len(spans) - 1:
                    pause = np.zeros(int(SAMPLE_RATE * JOIN_PAUSE_S), dtype=np.float32)
                    audio = np.concatenate([audio, pause])
            pcm = _pcm(audio)
            for start in range(0, len(pcm), self.chunk_samples):
                if cancel.is_set():
                    self.stats["cancelled"] += 1
                    return
                chunk = pcm[start : start + self.chunk_samples]
                if playing_since is None:
                    playing_since = loop.time()
                sent_s += len(chunk) / SAMPLE_RATE
                yield AudioChunk(chunk)
