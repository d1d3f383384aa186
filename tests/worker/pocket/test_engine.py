"""The pocket-tts engine: streaming, batching, cancellation, voices, loading errors; and end to
end through the front end, Redis and a worker."""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.harness import Client, peak_held, start_pipeline
from voxline.worker.engines import load_engine
from voxline.worker.engines.base import Cancellation, EngineError, SynthesisRequest
from voxline.worker.engines.pocket.engine import PocketTTSEngine
from voxline.worker.engines.pocket.loading import ModelNotFound

FRAME = 24  # samples per frame of the tiny codec


@pytest.fixture
async def engine(pocket_dir: Path) -> AsyncIterator[PocketTTSEngine]:
    engine = load_engine("pocket-tts", {"model": str(pocket_dir), "seed": "5"})
    await engine.start()
    yield engine
    await engine.close()


async def collect(engine: PocketTTSEngine, text: str, cancel: Cancellation | None = None, **kw):
    request = SynthesisRequest(text=text, voice=kw.pop("voice", "alba"), extra=kw)
    return [c.pcm async for c in engine.synthesize(request, cancel or Cancellation())]


def wav_b64(seconds: float, rate: int = 16000) -> str:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (np.sin(2 * np.pi * 220 * t) * 8000).astype(np.int16)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return base64.b64encode(buffer.getvalue()).decode()


async def test_info(engine: PocketTTSEngine) -> None:
    info = engine.info
    assert info.name == "pocket-tts" and info.sample_rate == 24000
    assert info.voices == ("alba", "marius") and info.default_voice == "alba"
    assert info.speed_range == (1.0, 1.0)
    assert set(info.extra_fields) == {"initial_codec_chunk_frames", "max_new_tokens", "ref_audio"}
    assert info.task_types == ("CustomVoice", "Base")


async def test_every_frame_is_its_own_chunk(engine: PocketTTSEngine) -> None:
    chunks = await collect(engine, "Hello world.")
    # 6 frames before end of speech may count, then 4 after it for a short text: 11.
    assert [len(c) for c in chunks] == [FRAME] * 11
    assert all(c.dtype == np.int16 for c in chunks)


async def test_initial_codec_chunk_frames_sets_the_first_chunk(engine: PocketTTSEngine) -> None:
    chunks = await collect(engine, "Hello world.", initial_codec_chunk_frames=4)
    assert [len(c) for c in chunks] == [4 * FRAME] + [FRAME] * 7
    alone = await collect(engine, "Hello world.")
    assert sum(len(c) for c in chunks) == sum(len(c) for c in alone)


async def test_max_new_tokens_caps_the_frames(engine: PocketTTSEngine) -> None:
    chunks = await collect(engine, "Hello world.", max_new_tokens=3)
    assert len(chunks) == 3


async def test_batched_sentence_equals_the_sentence_alone(pocket_dir: Path) -> None:
    async def run(texts: list[str]) -> list[np.ndarray]:
        engine = PocketTTSEngine(model=str(pocket_dir), seed=11)
        await engine.start()
        try:
            results = await asyncio.gather(*(collect(engine, t) for t in texts))
            return [np.concatenate(r) for r in results], engine.scheduler.stats.max_batch
        finally:
            await engine.close()

    texts = ["Good morning, how can I help you today?", "Hello world.", "Yes, it is."]
    together, widest = await run(texts)
    assert widest == 3
    alone, _ = await run(texts[:1])  # same seed: the first sentence gets the same noise
    assert np.abs(together[0].astype(int) - alone[0].astype(int)).max() <= 1


async def test_cancel_frees_the_slot_at_the_next_step(pocket_long_dir: Path) -> None:
    engine = PocketTTSEngine(model=str(pocket_long_dir), max_slots=2)
    await engine.start()
    try:
        cancel = Cancellation()
        request = SynthesisRequest(text="Hello world, this runs long.", voice="alba")
        got = 0
        async for _chunk in engine.synthesize(request, cancel):
            got += 1
            if got == 3:
                cancel.set()
                steps = engine.scheduler.stats.steps
        # Stopped within one chunk, and the slot is free again for the next step.
        assert got == 3
        for _ in range(100):
            if engine.scheduler.backbone.free_slots == 2:
                break
            await asyncio.sleep(0.01)
        assert engine.scheduler.backbone.free_slots == 2
        assert engine.scheduler.stats.cancelled == 1
        assert engine.scheduler.stats.steps <= steps + 2
    finally:
        await engine.close()


async def test_unknown_voice_and_empty_text_fail_clearly(engine: PocketTTSEngine) -> None:
    with pytest.raises(EngineError, match="unknown voice 'nobody'"):
        await collect(engine, "Hello.", voice="nobody")
    with pytest.raises(EngineError, match="empty"):
        await collect(engine, "   ")
    # The engine is still fine afterwards.
    assert len(await collect(engine, "Hello world.")) == 11


async def test_cloned_voice_is_prepared_once(engine: PocketTTSEngine) -> None:
    voices = engine.scheduler.voices
    clip = wav_b64(1.0)
    first = await collect(engine, "Hello world.", ref_audio=clip)
    again = await collect(engine, "Hello again.", ref_audio=clip)
    assert first and again
    assert len(voices._clones) == 1
    assert sum(1 for key in voices._prefixes if key[0].startswith("clone:")) == 1
    with pytest.raises(EngineError, match="ref_audio"):
        await collect(engine, "Hello.", ref_audio="not base64 at all!")


async def test_missing_model_names_it_and_the_offline_way(tmp_path: Path) -> None:
    engine = PocketTTSEngine(model=str(tmp_path / "absent"))
    with pytest.raises(ModelNotFound, match="absent.*--model DIR"):
        await engine.start()


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="max_slots"):
        load_engine("pocket-tts", {"max_slots": "0"})
    with pytest.raises(ValueError, match="dtype"):
        load_engine("pocket-tts", {"dtype": "int3"})
    assert torch.get_num_threads() >= 1


async def test_end_to_end_through_redis(redis_url: str, key_prefix: str, pocket_dir: Path) -> None:
    options = {"model": str(pocket_dir), "max_slots": "2"}
    async with start_pipeline(
        redis_url, key_prefix, engine="pocket-tts", engine_options=options
    ) as p:
        peak = peak_held(p.workers[0])
        async with Client.connect(
            p, {"response_format": "pcm", "stream_audio": True, "voice": "marius"}
        ) as c:
            ready = c.received[0]
            for (
                token
            ) in "Hello world. This is voxline speaking. Yes! One more. And the last.".split():
                await c.send("input.text", text=token + " ")
            await c.send("input.done")
            sentences, done = await c.utterance()
        assert ready["engine"] == "pocket-tts" and ready["voice"] == "marius"
        assert done["total_sentences"] == 5
        for s in sentences:
            assert not s.errors and s.done["error"] is False
            assert s.done["total_bytes"] == len(s.audio) > 0
            assert len(s.frames) >= 2  # streamed frame by frame, not one blob
        # Five sentences queued at once, but the worker held at most its two slots.
        assert peak() <= 2
        assert p.workers[0].slots() <= 2


async def test_barge_in_frees_the_slot_and_publishes_nothing_more(
    redis_url: str, key_prefix: str, pocket_long_dir: Path
) -> None:
    options = {"model": str(pocket_long_dir), "max_slots": "2"}
    long = "This first sentence is long enough to run for many frames before it would end. "
    async with start_pipeline(
        redis_url, key_prefix, engine="pocket-tts", engine_options=options
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            await c.send("input.text", text=long + "Two. Three.")
            await c.expect("audio.start")
            assert isinstance(await c.recv(), bytes)
            await c.send("input.cancel")
            await c.until("input.cancelled")
            done = next(m for m in c.received if isinstance(m, dict) and m["type"] == "audio.done")
            assert done["cancelled"] is True and done["sentence_index"] == 0
        engine = p.workers[0].engine
        for _ in range(200):
            if engine.scheduler.backbone.free_slots == 2 and p.total("cancelled") == 1:
                break
            await asyncio.sleep(0.01)
        assert engine.scheduler.backbone.free_slots == 2  # the slot went back at once
        assert engine.scheduler.stats.cancelled >= 1
    assert p.total("cancelled") == 1
    assert p.total("chunks_after_cancel") <= 1
