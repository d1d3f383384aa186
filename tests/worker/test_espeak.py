"""The embedded espeak-ng engine, against the real library."""

from __future__ import annotations

import asyncio
import gc
import threading
import time

import espeakng_loader
import numpy as np
import pytest

from voxline.worker.engines import espeak as espeak_module
from voxline.worker.engines.base import AudioChunk, Cancellation, EngineError, SynthesisRequest
from voxline.worker.engines.espeak import EspeakEngine, _Runtime, _WordTimer

RATE = 22050
SENTENCE = "Hello world, this is a test of the speed."
LONG = " ".join(["The quick brown fox jumps over the lazy dog while the band plays on."] * 12)


@pytest.fixture
async def engine() -> EspeakEngine:
    engine = EspeakEngine()
    await engine.start()
    return engine


async def collect(
    engine: EspeakEngine, request: SynthesisRequest, cancel: Cancellation | None = None
) -> list[AudioChunk]:
    return [c async for c in engine.synthesize(request, cancel or Cancellation())]


def pcm_of(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks]) if chunks else np.zeros(0, np.int16)


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2)))


class ThreadWatch(Cancellation):
    """A cancel flag that records which threads read it and can hold the synthesis thread
    at its Nth read until released. The espeak thread reads it once before synthesis and
    then once per buffer, before delivering that buffer: read 3 is the second buffer."""

    def __init__(self, hold_at: int | None = None) -> None:
        super().__init__()
        self.threads: set[int] = set()
        self.reads_off_loop = 0
        self.release = threading.Event()
        self.held_too_long = False
        self._hold_at = hold_at
        self._loop_thread = threading.get_ident()

    def is_set(self) -> bool:
        if threading.get_ident() != self._loop_thread:
            self.threads.add(threading.get_ident())
            self.reads_off_loop += 1
            if self.reads_off_loop == self._hold_at and not self.release.wait(5):
                self.held_too_long = True
        return super().is_set()


async def test_info_after_start(engine: EspeakEngine) -> None:
    info = engine.info
    assert info.name == "espeak" and info.sample_rate == RATE
    assert info.default_voice == "en" and "en" in info.voices
    assert {"en-us", "de", "fr", "hi", "cmn", "pt-br", "ru"} <= set(info.voices)
    assert {"en", "zh", "de", "German", "Chinese"} <= set(info.languages)
    assert info.word_timestamps is True
    assert info.speed_range == pytest.approx((80 / 175, 800 / 175))
    with pytest.raises(RuntimeError, match="start"):
        _ = EspeakEngine().info


async def test_real_speech_has_duration_and_energy(engine: EspeakEngine) -> None:
    chunks = await collect(engine, SynthesisRequest(SENTENCE, "en"))
    pcm = pcm_of(chunks)
    assert pcm.dtype == np.int16
    assert 1.5 < len(pcm) / RATE < 3.5  # about 2.2 s at 175 wpm
    assert rms(pcm) > 500
    # Speech, not a tone: energy comes and goes (syllables, pauses).
    frames = pcm[: len(pcm) // 441 * 441].reshape(-1, 441).astype(np.float64)
    energy = np.sqrt((frames**2).mean(axis=1))
    assert energy.max() > 10 * np.percentile(energy, 10)


@pytest.mark.parametrize(
    ("voice", "text"),
    [
        ("de", "Guten Tag, wie geht es Ihnen heute?"),
        ("fr", "Bonjour, comment allez-vous aujourd'hui ?"),
        ("hi", "नमस्ते, आप आज कैसे हैं?"),
        ("cmn", "你好，今天天气很好。"),
        ("ru", "Привет, как у тебя дела сегодня?"),
    ],
)
async def test_several_languages_give_speech(engine: EspeakEngine, voice: str, text: str) -> None:
    pcm = pcm_of(await collect(engine, SynthesisRequest(text, voice)))
    assert len(pcm) / RATE > 0.8
    assert rms(pcm) > 500


async def test_every_advertised_voice_speaks(engine: EspeakEngine) -> None:
    # Voices whose dictionary the wheel lacks speak silence: they must not be advertised.
    silent = []
    for voice in engine.info.voices:
        pcm = pcm_of(await collect(engine, SynthesisRequest("a b c 1 2 3", voice)))
        if len(pcm) < RATE // 4 or rms(pcm) < 200:
            silent.append(voice)
    assert silent == []


async def test_unknown_voice_and_language_are_rejected(engine: EspeakEngine) -> None:
    with pytest.raises(EngineError, match="unknown espeak voice 'klingon-x'"):
        await collect(engine, SynthesisRequest(SENTENCE, "klingon-x"))
    with pytest.raises(EngineError, match="no voice for language 'xx-yy'"):
        await collect(engine, SynthesisRequest(SENTENCE, "en", language="xx-yy"))
    with pytest.raises(EngineError, match="speed"):
        await collect(engine, SynthesisRequest(SENTENCE, "en", speed=0.25))
    # The engine is still fine afterwards.
    assert len(pcm_of(await collect(engine, SynthesisRequest("Still here.", "en")))) > RATE // 2


async def test_language_selects_the_voice(engine: EspeakEngine) -> None:
    assert engine.resolve_voice("en", "Auto") == "en"
    assert engine.resolve_voice("de", "Auto") == "de"
    assert engine.resolve_voice("en", "de") == "de"  # the voice does not speak German
    assert engine.resolve_voice("en", "German") == "de"
    assert engine.resolve_voice("en-us", "en") == "en-us"  # it does speak English
    assert engine.resolve_voice("en", "zh") == "cmn"
    assert engine.resolve_voice("en", "pt-BR") == "pt-br"
    assert engine.resolve_voice("", "Auto") == "en"
    german = pcm_of(await collect(engine, SynthesisRequest("Guten Tag", "en", language="de")))
    assert len(german) > RATE // 4


async def test_word_events_match_the_words(engine: EspeakEngine) -> None:
    chunks = await collect(engine, SynthesisRequest(SENTENCE, "en", word_timestamps=True))
    words = [w for c in chunks for w in c.words]
    duration_ms = len(pcm_of(chunks)) * 1000 // RATE
    assert [w.word for w in words] == [
        "Hello", "world", "this", "is", "a", "test", "of", "the", "speed",
    ]  # fmt: skip
    assert words[0].start_ms == 0
    assert abs(words[-1].end_ms - duration_ms) <= 1
    for before, after in zip(words, words[1:], strict=False):
        assert before.start_ms < after.start_ms
        assert before.start_ms <= before.end_ms == after.start_ms
    # "this" follows the pause after the comma: well into the audio.
    assert words[2].start_ms > 600
    # Words stream out with the audio, not all at the end.
    assert sum(1 for c in chunks if c.words) >= 5
    plain = await collect(engine, SynthesisRequest(SENTENCE, "en"))
    assert all(not c.words for c in plain)


async def test_word_positions_count_characters_not_bytes(engine: EspeakEngine) -> None:
    text = "Héllo wörld, ça été très naïve."
    chunks = await collect(engine, SynthesisRequest(text, "fr", word_timestamps=True))
    words = [w.word for c in chunks for w in c.words]
    assert words == ["Héllo", "wörld", "ça", "été", "très", "naïve"]
    hindi = "नमस्ते दुनिया आप कैसे हैं"
    chunks = await collect(engine, SynthesisRequest(hindi, "hi", word_timestamps=True))
    assert [w.word for c in chunks for w in c.words] == hindi.split()


async def test_numbers_and_merged_words_keep_the_text_words(engine: EspeakEngine) -> None:
    text = "I have 12345 apples and 3.5 pears, don't you?"
    chunks = await collect(engine, SynthesisRequest(text, "en", word_timestamps=True))
    words = [w for c in chunks for w in c.words]
    assert [w.word for w in words] == [
        "I",
        "have",
        "12345",
        "apples",
        "and",
        "3.5",
        "pears",
        "don't",
        "you",
    ]
    starts = [w.start_ms for w in words]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    # "12345" is read as several words: it takes far longer than "have".
    assert words[2].end_ms - words[2].start_ms > 3 * (words[1].end_ms - words[1].start_ms)


def test_word_timer_spreads_merged_words_and_skips_re_reads() -> None:
    text = "the cat of the dog 123"
    timer = _WordTimer(text)
    out = timer.on_word_event(0, 3, 0)
    out += timer.on_word_event(4, 3, 100)
    out += timer.on_word_event(8, 2, 300)  # "of" and "the" share one event
    out += timer.on_word_event(15, 3, 500)
    out += timer.on_word_event(19, 3, 600)
    out += timer.on_word_event(20, 2, 700)  # a re-read inside "123": not a new word
    out += timer.on_word_event(19, 3, 800)  # and a backward one
    out += timer.finish(1000)
    assert [(w.word, w.start_ms, w.end_ms) for w in out] == [
        ("the", 0, 100),
        ("cat", 100, 300),
        ("of", 300, 380),  # 2 of 5 letters of 200 ms
        ("the", 380, 500),
        ("dog", 500, 600),
        ("123", 600, 1000),
    ]


async def test_speed_changes_the_duration(engine: EspeakEngine) -> None:
    normal = len(pcm_of(await collect(engine, SynthesisRequest(SENTENCE, "en"))))
    fast = len(pcm_of(await collect(engine, SynthesisRequest(SENTENCE, "en", speed=2.0))))
    slow = len(pcm_of(await collect(engine, SynthesisRequest(SENTENCE, "en", speed=0.5))))
    assert fast < 0.65 * normal
    assert slow > 1.6 * normal
    top = SynthesisRequest(SENTENCE, "en", speed=engine.info.speed_range[1])
    assert len(pcm_of(await collect(engine, top))) < 0.35 * normal


async def test_first_chunk_arrives_while_synthesis_goes_on(engine: EspeakEngine) -> None:
    # Hold the espeak thread at its second buffer until the first chunk has reached us: an
    # engine that delivered only at the end could not get past that point in time.
    watch = ThreadWatch(hold_at=3)
    chunks = []
    async for chunk in engine.synthesize(SynthesisRequest(LONG, "en"), watch):
        if not chunks:
            assert watch.reads_off_loop <= 3  # synthesis is at its start, held
            watch.release.set()
        chunks.append(chunk)
    assert not watch.held_too_long
    assert len(chunks) > 20
    assert 0 < len(chunks[0].pcm) <= RATE // 10  # buffers of ~60 ms
    assert len(pcm_of(chunks)) / RATE > 20


async def test_cancel_after_the_first_chunk_stops_early(engine: EspeakEngine) -> None:
    full = len(pcm_of(await collect(engine, SynthesisRequest(LONG, "en"))))
    watch = ThreadWatch(hold_at=3)  # the thread waits at buffer 2 until we have cancelled
    received = []
    async for chunk in engine.synthesize(SynthesisRequest(LONG, "en"), watch):
        received.append(chunk)
        watch.set()
        watch.release.set()
    assert len(received) == 1
    assert not watch.held_too_long
    # The callback aborted synthesis right there: no further buffers were produced.
    await asyncio.sleep(0.05)
    assert watch.reads_off_loop == 3
    assert full > 20 * RATE
    # espeak is left clean: the next sentence is whole and carries nothing of the last.
    again = pcm_of(await collect(engine, SynthesisRequest(SENTENCE, "en")))
    assert 1.5 < len(again) / RATE < 3.5


async def test_closing_the_stream_early_aborts_synthesis(engine: EspeakEngine) -> None:
    watch = ThreadWatch(hold_at=3)
    stream = engine.synthesize(SynthesisRequest(LONG, "en"), watch)
    first = await stream.__anext__()
    assert len(first.pcm) > 0
    await stream.aclose()  # the consumer gave up without setting cancel
    watch.release.set()
    await asyncio.sleep(0.05)
    assert watch.reads_off_loop == 3 and not watch.is_set() and not watch.held_too_long


async def test_the_event_loop_stays_responsive(engine: EspeakEngine) -> None:
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.002)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(ticker())
    text = " ".join([LONG] * 3)
    gc.collect()  # a full collection of the suite's heap can pause the loop for 0.4 s
    started = time.perf_counter()
    chunks = await collect(engine, SynthesisRequest(text, "en", speed=0.5))
    elapsed = time.perf_counter() - started
    done.set()
    await task
    assert len(pcm_of(chunks)) / RATE > 100
    # Synthesis took a while (a blocked loop would stall that long), yet the loop kept
    # ticking all along.
    assert elapsed > 0.1  # 0.19-0.3 s seen
    assert len(gaps) > elapsed / 0.01
    assert max(gaps) < 0.1


async def test_concurrent_requests_are_serialized_and_kept_apart(engine: EspeakEngine) -> None:
    requests = [
        SynthesisRequest("One two three four five.", "en", word_timestamps=True),
        SynthesisRequest("Eins zwei drei.", "de", word_timestamps=True),
        SynthesisRequest(LONG, "en-us", word_timestamps=True),
        SynthesisRequest("Un deux trois quatre cinq six sept.", "fr", word_timestamps=True),
        SynthesisRequest("你好世界", "cmn", word_timestamps=True),
    ]
    alone = [len(pcm_of(await collect(engine, r))) for r in requests]
    watches = [ThreadWatch() for _ in requests]
    results = await asyncio.gather(
        *(collect(engine, r, w) for r, w in zip(requests, watches, strict=True))
    )
    for request, chunks, expected in zip(requests, results, alone, strict=True):
        words = [w.word for c in chunks for w in c.words]
        assert len(pcm_of(chunks)) == pytest.approx(expected, rel=0.03), request.text[:20]
        if request.voice != "cmn":
            assert words == [w.strip(".") for w in request.text.split()]
        else:
            assert "".join(words) == "你好世界"
    # All of it ran on one thread, the same for every request.
    threads = set().union(*(w.threads for w in watches))
    assert len(threads) == 1
    assert threading.get_ident() not in threads


async def test_a_library_that_cannot_load_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    runtime = _Runtime()
    monkeypatch.setattr(espeak_module, "_runtime", runtime)
    monkeypatch.setattr(espeakng_loader, "get_library_path", lambda: "/nonexistent/libespeak.so")
    try:
        with pytest.raises(RuntimeError, match="cannot load /nonexistent/libespeak.so"):
            await EspeakEngine().start()
    finally:
        runtime.executor.shutdown()
