"""The embedded default voice: espeak-ng through ctypes, from the `espeakng-loader` wheel.

Real multilingual speech with no download. espeak-ng keeps global state and is not
thread-safe, so every call into it runs on one dedicated thread per process (shared by all
`EspeakEngine` instances); its synth callback streams each buffer back to the event loop as
it is produced, so the first chunk arrives long before the sentence is finished.

Facts checked against the shipped library (espeak-ng via espeakng-loader 0.2.4):
- WORD events: `text_position` is 1-based and counts characters (code points), not UTF-8
  bytes; `length` counts characters too; `audio_position` is ms from the start of the text.
- Events are not one per word: a function word can share its neighbour's event ("of the"),
  numbers are read group by group with repeated or backward positions, "U.S.A." is one
  event. `_WordTimer` therefore times the words of the text, not the events.
- The rate is clamped below at 80 wpm; above 450 wpm espeak switches to its "sonic"
  speed-up, whose event times are approximate (they are clamped to the audio delivered).
- Voice names are the voice files' names ("en", "en-us", "de", "cmn", "pt-br", ...),
  which `espeak_SetVoiceByName` accepts case-insensitively.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
from collections.abc import AsyncGenerator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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

DEFAULT_VOICE = "en"
DEFAULT_WPM = 175
MIN_WPM = 80  # espeak clamps anything slower to 80
MAX_WPM = 800  # faster still shortens the audio, but is hardly intelligible
SPEED_RANGE = (MIN_WPM / DEFAULT_WPM, MAX_WPM / DEFAULT_WPM)
BUFFER_MS = 60  # the callback's buffer: the chunk size, so the time to first audio

# vllm-omni's language names, accepted besides espeak's language codes.
LANGUAGE_NAMES = {
    "Chinese": "cmn",
    "English": "en",
    "French": "fr",
    "German": "de",
    "Italian": "it",
    "Japanese": "ja",
    "Korean": "ko",
    "Portuguese": "pt",
    "Russian": "ru",
    "Spanish": "es",
}

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it, a bad data path calls exit()
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union of int / char* / char[8]: only its size matters
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # priority byte + NUL-terminated code, repeated
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


class _WordTimer:
    """Times the words of the text from espeak's WORD events.

    Each event that starts past everything read so far opens a segment of the text at its
    position; the words in a segment (usually one, more where espeak merged them) share the
    time up to the next segment's start in proportion to their length. A segment's words
    are final once the next one opens, so words stream out as speech goes on.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._offset = 0  # the open segment: text[_offset:...] from _start_ms
        self._start_ms = 0
        self._reach = 0  # end of the furthest event span seen
        self._boundary = -1

    def on_word_event(self, offset: int, length: int, ms: int) -> list[Word]:
        if offset < self._reach or offset <= self._boundary:
            return []  # espeak re-reading inside a word (digit groups, decimals)
        self._reach = offset + max(length, 0)
        self._boundary = offset
        return self._close(offset, ms)

    def finish(self, total_ms: int) -> list[Word]:
        return self._close(len(self.text), total_ms)

    def _close(self, offset: int, end_ms: int) -> list[Word]:
        end_ms = max(end_ms, self._start_ms)  # sonic speed-up can report times out of order
        words = split_words(self.text, self._offset, offset)
        letters = sum(len(w) for w, _, _ in words)
        span, before, out = end_ms - self._start_ms, 0, []
        for word, _, _ in words:
            start = self._start_ms + span * before // letters
            before += len(word)
            out.append(Word(word, start, self._start_ms + span * before // letters))
        self._offset, self._start_ms = offset, end_ms
        return out


@dataclass(eq=False)
class _Job:
    """One synthesis, as the espeak thread sees it."""

    text: bytes
    voice: str
    rate: int
    cancel: Cancellation
    deliver: Callable[[AudioChunk], None]  # thread-safe: posts to the event loop
    timer: _WordTimer | None
    sample_rate: int
    samples: int = 0
    abandoned: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def stop_requested(self) -> bool:
        return self.cancel.is_set() or self.abandoned.is_set()


@dataclass(frozen=True, slots=True)
class _VoiceInfo:
    name: str
    languages: tuple[tuple[int, str], ...]  # (priority, code): lower priority wins


class _Runtime:
    """The process's one espeak-ng instance; every method runs on its one thread."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxline-espeak")
        self.lib: ctypes.CDLL | None = None
        self.sample_rate = 0
        self.voices: dict[str, _VoiceInfo] = {}
        self._job: _Job | None = None
        self._callback = _SynthCallback(self._on_audio)  # kept referenced: C holds a pointer

    def load(self) -> None:
        if self.lib is not None:
            return
        import espeakng_loader

        lib_path, data_path = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
        try:
            lib = ctypes.CDLL(lib_path)
        except OSError as exc:
            raise RuntimeError(f"espeak-ng: cannot load {lib_path}: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, BUFFER_MS, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if rate <= 0 or lib.espeak_SetVoiceByName(DEFAULT_VOICE.encode()) != 0:
            raise RuntimeError(f"espeak-ng: cannot initialize with data at {data_path}")
        lib.espeak_SetSynthCallback(self._callback)
        self.voices = _list_voices(lib, Path(data_path))
        self.sample_rate = rate
        self.lib = lib

    def synthesize(self, job: _Job) -> None:
        lib = self.lib
        assert lib is not None
        if job.stop_requested():
            return  # cancelled while queued behind other sentences
        if lib.espeak_SetVoiceByName(job.voice.encode()) != 0:
            raise EngineError(f"espeak-ng cannot select voice {job.voice!r}")
        lib.espeak_SetParameter(_RATE, job.rate, 0)
        self._job = job
        try:
            status = lib.espeak_Synth(
                job.text, len(job.text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None
            )
        finally:
            self._job = None
        if job.error is not None:
            raise job.error
        if status != 0 and not job.stop_requested():
            raise EngineError(f"espeak-ng synthesis failed (status {status})")

    def _on_audio(self, wav: ctypes._Pointer, count: int, events: ctypes._Pointer) -> int:
        job = self._job
        if job is None:
            return 1
        try:
            if job.stop_requested():
                return 1
            words: list[Word] = []
            i = 0
            while events[i].type != _EVENT_LIST_TERMINATED:
                event = events[i]
                if event.type == _EVENT_WORD and job.timer is not None:
                    words += job.timer.on_word_event(
                        event.text_position - 1, event.length, event.audio_position
                    )
                i += 1
            pcm = np.zeros(0, dtype=np.int16)
            if wav and count > 0:
                # Copied: espeak reuses its buffer for the next call.
                pcm = np.ctypeslib.as_array(wav, shape=(count,)).astype(np.int16, copy=True)
                job.samples += count
            delivered_ms = job.samples * 1000 // job.sample_rate
            if not wav and job.timer is not None:  # a NULL buffer marks the end of the text
                words += job.timer.finish(delivered_ms)
            if words:
                # Event times can run ahead of the audio at sonic rates: never past it.
                words = [
                    Word(w.word, min(w.start_ms, delivered_ms), min(w.end_ms, delivered_ms))
                    for w in words
                ]
            if pcm.size or words:
                job.deliver(AudioChunk(pcm, words))
        except BaseException as exc:  # an exception must not unwind through C
            job.error = exc
            return 1
        return 0


def _list_voices(lib: ctypes.CDLL, data_path: Path) -> dict[str, _VoiceInfo]:
    voices: dict[str, _VoiceInfo] = {}
    listing = lib.espeak_ListVoices(None)
    i = 0
    while listing[i]:
        voice = listing[i].contents
        identifier = voice.identifier.decode()
        languages, p = [], voice.languages
        while p and (priority := ctypes.c_ubyte.from_address(p).value):
            code = ctypes.string_at(p + 1)
            languages.append((priority, code.decode().lower()))
            p += len(code) + 2
        name = identifier.rsplit("/", 1)[-1].lower()
        if languages and _has_dictionary(data_path, identifier, languages[0][1]):
            voices[name] = _VoiceInfo(name, tuple(languages))
        i += 1
    return voices


def _has_dictionary(data_path: Path, identifier: str, language: str) -> bool:
    """Some voices ship without their dictionary (fo, kaa, ...) and speak only silence."""
    dictionary = language.split("-")[0]  # espeak's default: the first language, up to "-"
    for folder in ("lang", "voices"):
        path = data_path / folder / identifier
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "dictionary":
                    dictionary = parts[1]
            break
    return (data_path / f"{dictionary}_dict").is_file()


_runtime: _Runtime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _Runtime()
        return _runtime


def _language_table(voices: dict[str, _VoiceInfo]) -> dict[str, str]:
    """Language code -> the voice espeak ranks best for it (lowest priority, then order)."""
    best: dict[str, tuple[int, int, str]] = {}
    for order, voice in enumerate(voices.values()):
        for priority, code in voice.languages:
            if code not in best or (priority, order) < best[code][:2]:
                best[code] = (priority, order, voice.name)
    return {code: name for code, (_, _, name) in best.items()}


def _own_languages(voice: _VoiceInfo) -> tuple[str, ...]:
    """The codes espeak lists for the voice, best first, then their vllm-omni names: what
    the voice speaks itself (a request for another language switches voice)."""
    codes = list(dict.fromkeys(code for _, code in sorted(voice.languages, key=lambda x: x[0])))
    return (*codes, *(n for n, code in LANGUAGE_NAMES.items() if code in codes))


class EspeakEngine(Engine):
    """espeak-ng voices. `language` other than "Auto" selects the voice: the requested voice
    if it speaks that language (e.g. voice "en-us" for "en"), else the voice espeak ranks
    best for it ("en" -> "en", "zh" -> "cmn"); vllm-omni names ("German") map to codes."""

    def __init__(self) -> None:
        self._info: EngineInfo | None = None
        self._voices: dict[str, _VoiceInfo] = {}
        self._by_language: dict[str, str] = {}

    @property
    def info(self) -> EngineInfo:  # type: ignore[override]
        if self._info is None:
            raise RuntimeError("EspeakEngine.info is known after start()")
        return self._info

    async def start(self) -> None:
        if self._info is not None:
            return
        runtime = _get_runtime()
        await asyncio.get_running_loop().run_in_executor(runtime.executor, runtime.load)
        self._voices = dict(runtime.voices)
        self._by_language = _language_table(self._voices)
        names = [n for n, code in LANGUAGE_NAMES.items() if code in self._by_language]
        self._info = EngineInfo(
            name="espeak",
            sample_rate=runtime.sample_rate,
            voices=tuple(sorted(self._voices)),
            default_voice=DEFAULT_VOICE,
            languages=tuple(sorted(self._by_language)) + tuple(names),
            word_timestamps=True,
            speed_range=SPEED_RANGE,
            voice_languages=tuple(
                (name, _own_languages(self._voices[name])) for name in sorted(self._voices)
            ),
        )

    def resolve_voice(self, voice: str, language: str) -> str:
        """The espeak voice a request speaks with (see the class docstring)."""
        voice = voice or DEFAULT_VOICE
        if voice not in self._voices:
            raise EngineError(f"unknown espeak voice {voice!r}")
        if language == "Auto":
            return voice
        code = LANGUAGE_NAMES.get(language, language).lower()
        if any(code == c for _, c in self._voices[voice].languages):
            return voice
        if code not in self._by_language:
            raise EngineError(f"espeak has no voice for language {language!r}")
        return self._by_language[code]

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        info = self.info
        voice = self.resolve_voice(request.voice, request.language)
        low, high = info.speed_range
        if not low - 1e-9 <= request.speed <= high + 1e-9:
            raise EngineError(f"espeak speed must be {low:.3f}..{high:.3f}, got {request.speed}")
        if "\x00" in request.text:
            raise EngineError("text contains a NUL character")
        rate = min(max(round(DEFAULT_WPM * request.speed), MIN_WPM), MAX_WPM)

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[AudioChunk | None] = asyncio.Queue()

        def deliver(chunk: AudioChunk) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, chunk)

        job = _Job(
            text=request.text.encode(),
            voice=voice,
            rate=rate,
            cancel=cancel,
            deliver=deliver,
            timer=_WordTimer(request.text) if request.word_timestamps else None,
            sample_rate=info.sample_rate,
        )
        runtime = _get_runtime()
        future = loop.run_in_executor(runtime.executor, runtime.synthesize, job)

        def finished(done: asyncio.Future[None]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved here too: a cancelled stream never awaits it
            # Runs after every chunk the thread posted: those were queued before it ended.
            queue.put_nowait(None)

        future.add_done_callback(finished)
        try:
            while (chunk := await queue.get()) is not None:
                if cancel.is_set():
                    return
                yield chunk
            if cancel.is_set():
                return
            try:
                await future
            except EngineError:
                raise
            except Exception as exc:
                raise EngineError(f"espeak-ng failed: {type(exc).__name__}: {exc}") from exc
        finally:
            # Stopped early (cancel, or the consumer closed us): the callback aborts at its
            # next buffer, and a job still queued behind other sentences never starts.
            job.abandoned.set()
            future.cancel()
