from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np
import pytest

from voxline.worker.engines.base import AudioChunk, Cancellation, EngineError, SynthesisRequest
from voxline.worker.engines.tone import ToneEngine

RATE = 24000


async def collect(
    engine: ToneEngine, request: SynthesisRequest, cancel: Cancellation | None = None
) -> list[AudioChunk]:
    return [c async for c in engine.synthesize(request, cancel or Cancellation())]


def pcm_of(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks])


def peak_hz(pcm: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64)))
    return float(np.fft.rfftfreq(len(pcm), 1 / RATE)[int(np.argmax(spectrum))])


async def test_duration_is_proportional_to_text_over_speed() -> None:
    engine = ToneEngine(ms_per_char=50)
    text = "x" * 40  # 2 s at speed 1
    for speed, seconds in [(1.0, 2.0), (2.0, 1.0), (0.5, 4.0)]:
        pcm = pcm_of(await collect(engine, SynthesisRequest(text, "tone-mid", speed=speed)))
        assert len(pcm) == round(seconds * RATE)
    half = pcm_of(await collect(engine, SynthesisRequest("x" * 20, "tone-mid")))
    assert len(half) == RATE


async def test_output_is_deterministic_int16() -> None:
    engine = ToneEngine()
    request = SynthesisRequest("Deterministic bytes, please.", "tone-low")
    first = pcm_of(await collect(engine, request))
    second = pcm_of(await collect(ToneEngine(), request))
    assert first.dtype == np.int16
    assert first.tobytes() == second.tobytes()
    assert np.abs(first).max() > 5000  # audible, not silence


async def test_chunks_have_the_configured_size() -> None:
    engine = ToneEngine(chunk_ms=40)
    chunks = await collect(engine, SynthesisRequest("a" * 21, "tone-mid"))  # 1260 ms
    sizes = [len(c.pcm) for c in chunks]
    assert sizes[:-1] == [960] * (len(sizes) - 1)
    assert 0 < sizes[-1] <= 960
    assert sum(sizes) == round(1.26 * RATE)
    assert engine.stats == {
        "started": 1,
        "chunks": len(chunks),
        "completed": 1,
        "cancelled": 0,
        "failed": 0,
    }


async def test_voices_differ_in_pitch() -> None:
    engine = ToneEngine()
    assert engine.info.voices == ("tone-low", "tone-mid", "tone-high")
    assert engine.info.default_voice == "tone-mid"
    peaks = []
    for voice in engine.info.voices:
        peaks.append(peak_hz(pcm_of(await collect(engine, SynthesisRequest("a" * 20, voice)))))
    assert peaks[0] < peaks[1] < peaks[2]
    assert peaks == pytest.approx([220, 440, 880], abs=2)
    # An empty voice means the default.
    default = pcm_of(await collect(engine, SynthesisRequest("a" * 20, "")))
    assert peak_hz(default) == pytest.approx(440, abs=2)


async def test_cancel_stops_within_one_chunk() -> None:
    engine = ToneEngine(chunk_ms=20)
    cancel = Cancellation()
    received = []
    async for chunk in engine.synthesize(SynthesisRequest("x" * 100, "tone-mid"), cancel):
        received.append(chunk)
        if len(received) == 2:
            cancel.set()
    assert len(received) == 2  # nothing after the cancel
    assert engine.stats["cancelled"] == 1 and engine.stats["completed"] == 0
    assert engine.stats["chunks"] == 2


async def test_a_consumer_that_stops_on_cancel_counts_as_cancelled() -> None:
    # The worker checks the flag itself and closes the stream, as the consumer does.
    engine = ToneEngine()
    cancel = Cancellation()
    request = SynthesisRequest("x" * 100, "tone-mid")
    async with contextlib.aclosing(engine.synthesize(request, cancel)) as chunks:
        async for _chunk in chunks:
            cancel.set()
            break
    assert engine.stats["cancelled"] == 1 and engine.stats["completed"] == 0
    # Closing early without a cancel (say, the consumer failed) is not a cancel.
    async with contextlib.aclosing(engine.synthesize(request, Cancellation())) as chunks:
        async for _chunk in chunks:
            break
    assert engine.stats["cancelled"] == 1 and engine.stats["started"] == 2


async def test_cancel_during_pacing_yields_nothing_more() -> None:
    engine = ToneEngine(chunk_ms=50, rtf=1.0)
    cancel = Cancellation()
    received: list[AudioChunk] = []

    async def consume() -> None:
        async for chunk in engine.synthesize(SynthesisRequest("x" * 100, "tone-mid"), cancel):
            received.append(chunk)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.12)  # two chunks paced at 50 ms, the third under way
    cancel.set()
    await asyncio.wait_for(task, 1)
    assert 1 <= len(received) <= 3
    assert engine.stats["cancelled"] == 1


async def test_rtf_paces_generation_in_real_time() -> None:
    engine = ToneEngine(chunk_ms=50, rtf=1.0, ms_per_char=50)
    started = time.perf_counter()
    chunks = await collect(engine, SynthesisRequest("x" * 6, "tone-mid"))  # 300 ms of audio
    elapsed = time.perf_counter() - started
    assert len(chunks) == 6
    assert 0.28 <= elapsed < 1.0
    fast = ToneEngine(chunk_ms=50, ms_per_char=50)
    started = time.perf_counter()
    await collect(fast, SynthesisRequest("x" * 200, "tone-mid"))  # 10 s of audio
    assert time.perf_counter() - started < 0.5


async def test_fail_on_raises_after_the_first_chunk() -> None:
    engine = ToneEngine(fail_on="BOOM")
    received = []
    with pytest.raises(EngineError, match="BOOM"):
        async for chunk in engine.synthesize(
            SynthesisRequest("This goes BOOM now.", "tone-mid"), Cancellation()
        ):
            received.append(chunk)
    assert len(received) == 1
    assert engine.stats["failed"] == 1 and engine.stats["completed"] == 0
    # Other sentences are fine.
    assert await collect(engine, SynthesisRequest("Fine one.", "tone-mid"))
    assert engine.stats["completed"] == 1


async def test_word_timestamps_are_monotonic_and_within_the_duration() -> None:
    engine = ToneEngine()
    text = "Alpha beta, gamma delta-epsilon!"
    chunks = await collect(engine, SynthesisRequest(text, "tone-mid", word_timestamps=True))
    words = [w for c in chunks for w in c.words]
    duration_ms = len(pcm_of(chunks)) * 1000 // RATE
    assert [w.word for w in words] == ["Alpha", "beta", "gamma", "delta-epsilon"]
    assert words[0].start_ms == 0 and words[-1].end_ms == duration_ms
    for before, after in zip(words, words[1:], strict=False):
        assert before.start_ms < before.end_ms <= after.start_ms < after.end_ms
    # Longer words take longer.
    lengths = [w.end_ms - w.start_ms for w in words]
    assert lengths[3] > lengths[0] > lengths[1]
    # Each word comes with the chunk that holds its start.
    offset = 0
    for chunk in chunks:
        end = offset + len(chunk.pcm) * 1000 / RATE
        assert all(offset - 1 <= w.start_ms < end for w in chunk.words)
        offset = end
    plain = await collect(engine, SynthesisRequest(text, "tone-mid"))
    assert all(not c.words for c in plain)


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (SynthesisRequest("hi", "alloy"), "unknown voice"),
        (SynthesisRequest("hi", "tone-mid", language="German"), "Auto"),
        (SynthesisRequest("hi", "tone-mid", speed=8.0), "speed"),
    ],
)
async def test_requests_it_cannot_honour_are_engine_errors(
    request_: SynthesisRequest, message: str
) -> None:
    engine = ToneEngine()
    with pytest.raises(EngineError, match=message):
        await collect(engine, request_)
    assert engine.stats["started"] == 0


def test_info_advertises_the_capabilities() -> None:
    info = ToneEngine(sample_rate=16000).info
    assert info.name == "tone" and info.sample_rate == 16000
    assert info.languages == () and info.word_timestamps is True
    assert info.speed_range == (0.25, 4.0)


async def test_pacing_is_on_an_absolute_schedule() -> None:
    """A late wake-up is not carried forward: the n-th chunk is due n chunk lengths after the
    start, whatever the loop did in between."""
    engine = ToneEngine(chunk_ms=20, rtf=1.0, ms_per_char=20)
    started = time.perf_counter()
    arrivals = []
    async for _chunk in engine.synthesize(SynthesisRequest("x" * 25, "tone-mid"), Cancellation()):
        arrivals.append(time.perf_counter() - started)
        time.sleep(0.015)  # the consumer blocks the loop for most of a chunk each time
    assert len(arrivals) == 25
    # Relative sleeps would drift by ~15 ms a chunk (0.9 s in all); absolute ones stay on time.
    assert arrivals[-1] < 0.5 + 0.1


async def test_device_ms_serializes_chunks_across_sentences() -> None:
    """One device per engine: N sentences at once take N times as long as one."""
    engine = ToneEngine(chunk_ms=80, device_ms=10, ms_per_char=8)  # 10 chunks a sentence
    request = SynthesisRequest("x" * 100, "tone-mid")
    started = time.perf_counter()
    await collect(engine, request)
    alone = time.perf_counter() - started
    started = time.perf_counter()
    await asyncio.gather(*(collect(engine, request) for _ in range(4)))
    together = time.perf_counter() - started
    assert 0.09 <= alone < 0.2
    assert together >= 0.39 and together / alone > 3.0


async def test_stamp_writes_the_generation_time_into_each_chunk() -> None:
    engine = ToneEngine(chunk_ms=40, stamp=True)
    before = time.monotonic_ns()
    chunks = await collect(engine, SynthesisRequest("x" * 10, "tone-mid"))
    after = time.monotonic_ns()
    stamps = [int(c.pcm[:4].view(np.int64)[0]) for c in chunks if len(c.pcm) >= 4]
    assert len(stamps) == len(chunks) and stamps == sorted(stamps)
    assert before <= stamps[0] and stamps[-1] <= after
    plain = pcm_of(await collect(ToneEngine(chunk_ms=40), SynthesisRequest("x" * 10, "tone-mid")))
    stamped = pcm_of(chunks)
    mask = np.ones(len(plain), dtype=bool)
    for i in range(len(chunks)):
        mask[i * 960 : i * 960 + 4] = False
    assert np.array_equal(plain[mask], stamped[mask]), "only the first 8 bytes of a chunk change"
