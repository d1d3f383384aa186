"""The VITS engine on tiny random checkpoints built here (no hub), through its real loading path.

Most tests use a checkpoint with zero noise (`noise_scale`, `noise_scale_duration`): VITS draws
its noise for the whole padded batch, so only a noise-free model gives a sentence the same
audio alone and in any batch; that is what the batching tests compare.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.harness import Client, start_pipeline
from tests.worker.vits_checkpoint import HOP, SAMPLING_RATE, build_checkpoint
from voxline.worker.engines import load_engine
from voxline.worker.engines import vits as vits_module
from voxline.worker.engines.base import AudioChunk, Cancellation, EngineError, SynthesisRequest
from voxline.worker.engines.vits import VitsEngine

CHUNK = SAMPLING_RATE // 10  # 100 ms
SENTENCE = "Hello world, this is a test of the tiny voice."
TEXTS = ["hi", SENTENCE, "a medium sentence here", "the longest one of them all, by quite a margin"]


@pytest.fixture(scope="session")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(
        tmp_path_factory.mktemp("vits-plain"), noise_scale=0.0, noise_scale_duration=0.0
    )


@pytest.fixture(scope="session")
def noisy_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(tmp_path_factory.mktemp("vits-noisy"))


@pytest.fixture(scope="session")
def speakers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_checkpoint(
        tmp_path_factory.mktemp("vits-speakers"),
        num_speakers=2,
        speaker_embedding_size=4,
        noise_scale=0.0,
        noise_scale_duration=0.0,
    )


@pytest.fixture
async def engine(plain_dir: Path) -> AsyncIterator[VitsEngine]:
    async with started(VitsEngine(model=str(plain_dir))) as running:
        yield running


class started:
    """`async with started(engine)`: start() then close()."""

    def __init__(self, engine: VitsEngine) -> None:
        self.engine = engine

    async def __aenter__(self) -> VitsEngine:
        await self.engine.start()
        return self.engine

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.close()


async def collect(
    engine: VitsEngine, text: str, cancel: Cancellation | None = None, **fields: Any
) -> list[AudioChunk]:
    request = SynthesisRequest(text, fields.pop("voice", ""), **fields)
    return [c async for c in engine.synthesize(request, cancel or Cancellation())]


def pcm_of(chunks: list[AudioChunk]) -> np.ndarray:
    return np.concatenate([c.pcm for c in chunks]) if chunks else np.zeros(0, np.int16)


def assert_same_audio(a: np.ndarray, b: np.ndarray) -> None:
    assert len(a) == len(b)
    # Batched and solo matmuls round differently: at most one LSB after int16 conversion.
    assert np.abs(a.astype(np.int32) - b.astype(np.int32)).max() <= 1


async def until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


class Gate:
    """Holds the model thread in the engine's first batch until opened, so that requests
    queue up behind it deterministically; records the size of every batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, engine: VitsEngine) -> None:
        model = engine._model
        assert model is not None
        original = model.synthesize
        self.sizes: list[int] = []
        self.entered = threading.Event()
        self.opened = threading.Event()

        def gated(work: list[Any], *args: Any) -> Any:
            self.sizes.append(len(work))
            if len(self.sizes) == 1:
                self.entered.set()
                self.opened.wait(10)
            return original(work, *args)

        monkeypatch.setattr(model, "synthesize", gated)

    async def hold(self, engine: VitsEngine) -> asyncio.Task[list[AudioChunk]]:
        """Start a first request and wait until it holds the model thread."""
        task = asyncio.create_task(collect(engine, "blocker"))
        await asyncio.to_thread(self.entered.wait, 10)
        return task


async def queue_behind(
    monkeypatch: pytest.MonkeyPatch, engine: VitsEngine, requests: list[dict[str, Any]]
) -> tuple[Gate, list[asyncio.Task[list[AudioChunk]]]]:
    """Queue `requests` (collect() arguments) while a first batch holds the thread."""
    gate = Gate(monkeypatch, engine)
    blocker = await gate.hold(engine)
    tasks = [asyncio.create_task(collect(engine, **r)) for r in requests]
    await until(lambda: len(engine._pending) == len(requests))
    return gate, [blocker, *tasks]


# Loading and options


async def test_info_and_audio(engine: VitsEngine) -> None:
    info = engine.info
    assert info.name == "vits" and info.sample_rate == SAMPLING_RATE
    assert info.voices == ("default",) and info.default_voice == "default"
    assert info.languages == ("eng",)  # the tokenizer's language
    assert info.word_timestamps is False and info.speed_range == (0.25, 4.0)
    chunks = await collect(engine, SENTENCE)
    assert all(c.pcm.dtype == np.int16 and c.words == [] for c in chunks)
    assert all(len(c.pcm) == CHUNK for c in chunks[:-1]) and 0 < len(chunks[-1].pcm) <= CHUNK
    pcm = pcm_of(chunks)
    # Whole frames; each of the ~90 tokens (characters and blanks) lasts a few frames.
    assert len(pcm) % HOP == 0
    assert len(SENTENCE) * HOP < len(pcm) < 2 * SAMPLING_RATE
    assert np.abs(pcm).max() > 1000


async def test_options_parse_and_validate(plain_dir: Path) -> None:
    engine = load_engine(
        "vits",
        {
            "model": str(plain_dir),
            "device": "cpu",
            "dtype": "float32",
            "threads": "1",
            "max_batch": "3",
            "seed": "5",
        },
    )
    assert isinstance(engine, VitsEngine)
    assert (engine.threads, engine.max_batch, engine.seed) == (1, 3, 5)
    defaults = VitsEngine()
    assert defaults.spec.model == "facebook/mms-tts-eng" and defaults.max_batch == 8
    assert defaults.threads == vits_module.available_cpus() and defaults.seed is None
    with pytest.raises(RuntimeError, match="after start"):
        _ = defaults.info
    with pytest.raises(ValueError, match=r"vits.*no option 'voice'.*dtype, max_batch, model"):
        load_engine("vits", {"voice": "x"})


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N, got 'tpu'"),
        ({"dtype": "int8"}, "dtype must be one of auto, float32, bfloat16, float16"),
        ({"max_batch": "0"}, "max_batch must be at least 1"),
        ({"threads": "0"}, "threads must be at least 1"),
        ({"threads": "many"}, "threads='many'"),
        ({"model": ""}, "model must not be empty"),
    ],
)
def test_bad_option_values_are_clear_errors(options: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_engine("vits", options)


async def test_threads_are_set_on_the_model_thread(plain_dir: Path) -> None:
    import torch

    async with started(VitsEngine(model=str(plain_dir), threads=1)):
        executor = vits_module._runtime.executor
        assert executor is not None
        assert executor.submit(torch.get_num_threads).result() == 1


async def test_missing_model_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cases = {
        str(tmp_path / "nowhere"): r"directory '.*nowhere' does not exist",
        str(tmp_path): r"directory '.*' holds no loadable VITS checkpoint",
        "voxline-test/no-such-model": r"'voxline-test/no-such-model' not found locally",
    }
    for model, what in cases.items():
        with pytest.raises(RuntimeError, match=what) as raised:
            await VitsEngine(model=model).start()
        assert "--model DIR" in str(raised.value) and "hf download" in str(raised.value)
    assert "hf download voxline-test/no-such-model" in str(raised.value)
    assert vits_module._runtime.users == 0, "a failed start releases the model thread"


async def test_uroman_checkpoint_without_uroman_fails_at_start(tmp_path: Path) -> None:
    if importlib.util.find_spec("uroman") is not None:
        pytest.skip("uroman is installed here")
    model = build_checkpoint(tmp_path / "uroman", is_uroman=True)
    with pytest.raises(RuntimeError, match=r"romanized with uroman.*pip install uroman"):
        await VitsEngine(model=str(model)).start()


async def test_uroman_romanizes_non_latin_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Uroman:  # stands in for uroman's Romanizer
        def romanize_string(self, text: str) -> str:
            return text.translate(str.maketrans({"ñ": "n", "ж": "zh", "у": "u", "к": "k"}))

    # Imported first, so that transformers' own check for uroman does not see the fake.
    importlib.import_module("transformers.models.vits.tokenization_vits")
    fake = types.ModuleType("uroman")
    fake.Uroman = Uroman  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "uroman", fake)
    model = build_checkpoint(
        tmp_path / "uroman", is_uroman=True, noise_scale=0.0, noise_scale_duration=0.0
    )
    async with started(VitsEngine(model=str(model))) as engine:
        romanized = pcm_of(await collect(engine, "Niño ЖУК"))
        assert_same_audio(romanized, pcm_of(await collect(engine, "nino zhuk")))
        assert len(romanized) > len(pcm_of(await collect(engine, "nino")))


async def test_half_precision_loads_and_speaks(plain_dir: Path) -> None:
    async with started(VitsEngine(model=str(plain_dir), dtype="bfloat16", device="cpu")) as engine:
        pcm = pcm_of(await collect(engine, SENTENCE))
    assert len(pcm) > 0 and np.abs(pcm).max() > 1000


# Requests


async def test_bad_requests_are_engine_errors(engine: VitsEngine) -> None:
    for text in ["", "   "]:
        with pytest.raises(EngineError, match="empty text"):
            await collect(engine, text)
    with pytest.raises(EngineError, match="nothing this voice can speak"):
        await collect(engine, "123 ?!")  # no character of the vocabulary
    with pytest.raises(EngineError, match="unknown vits voice 'tone-mid'"):
        await collect(engine, SENTENCE, voice="tone-mid")
    with pytest.raises(EngineError, match=r"speaks \['eng'\] only"):
        await collect(engine, SENTENCE, language="fra")
    with pytest.raises(EngineError, match="speed"):
        await collect(engine, SENTENCE, speed=5.0)
    assert await collect(engine, "ok", language="eng", voice="default")


async def test_speed_is_the_speaking_rate(engine: VitsEngine) -> None:
    normal = len(pcm_of(await collect(engine, SENTENCE)))
    fast = len(pcm_of(await collect(engine, SENTENCE, speed=2.0)))
    slow = len(pcm_of(await collect(engine, SENTENCE, speed=0.5)))
    # Durations are whole frames rounded up per token: about, not exactly, proportional.
    assert fast < 0.75 * normal and slow > 1.5 * normal


async def test_seed_makes_noisy_output_reproducible(noisy_dir: Path) -> None:
    async with started(VitsEngine(model=str(noisy_dir), seed=7)) as seeded:
        first = pcm_of(await collect(seeded, SENTENCE))
        assert_same_audio(first, pcm_of(await collect(seeded, SENTENCE)))
    async with started(VitsEngine(model=str(noisy_dir))) as unseeded:
        a = pcm_of(await collect(unseeded, SENTENCE))
        b = pcm_of(await collect(unseeded, SENTENCE))
    assert len(a) != len(b) or not np.array_equal(a, b), "noise differs without a seed"


async def test_speakers_are_voices(speakers_dir: Path) -> None:
    async with started(VitsEngine(model=str(speakers_dir))) as engine:
        assert engine.info.voices == ("speaker-0", "speaker-1")
        assert engine.info.default_voice == "speaker-0"
        first = pcm_of(await collect(engine, SENTENCE))
        assert_same_audio(first, pcm_of(await collect(engine, SENTENCE, voice="speaker-0")))
        second = pcm_of(await collect(engine, SENTENCE, voice="speaker-1"))
        assert len(first) != len(second) or not np.array_equal(first, second)
        with pytest.raises(EngineError, match="unknown vits voice 'default'"):
            await collect(engine, SENTENCE, voice="default")


# Batching


@pytest.mark.parametrize("batch_decoding", [False, True], ids=["row-decoding", "batch-decoding"])
async def test_waiting_requests_run_as_one_batch_with_solo_audio(
    engine: VitsEngine, monkeypatch: pytest.MonkeyPatch, batch_decoding: bool
) -> None:
    model = engine._model
    assert model is not None and model.batch_decoding is False, "row by row on CPU"
    monkeypatch.setattr(model, "batch_decoding", batch_decoding)  # as on a GPU
    solo = [pcm_of(await collect(engine, text)) for text in TEXTS]
    before = dict(engine.stats)
    gate, tasks = await queue_behind(monkeypatch, engine, [{"text": t} for t in TEXTS])
    gate.opened.set()
    _, *batched = await asyncio.gather(*tasks)
    assert gate.sizes == [1, len(TEXTS)]
    assert engine.stats["forwards"] - before["forwards"] == 2
    assert engine.stats["largest_batch"] == len(TEXTS)
    # Rows of very different lengths: no padding leaks into the shorter ones' audio.
    for alone, together in zip(solo, batched, strict=True):
        assert_same_audio(alone, pcm_of(together))


async def test_start_check_rejects_a_batch_decoding_that_leaks_padding(
    engine: VitsEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model, executor = engine._model, vits_module._runtime.executor
    assert model is not None and executor is not None
    assert executor.submit(model._check_decoding).result() is True

    # As with a transformers whose decoder no longer matches the masked copy: here the copy
    # is replaced by the model's own decoder over the padded batch, which leaks padding.
    def leaky(decoder: Any, spectrogram: Any, frames: Any, conditioning: Any) -> Any:
        return decoder(spectrogram, conditioning)[:, 0]

    monkeypatch.setattr(vits_module, "_masked_decode", leaky)
    assert executor.submit(model._check_decoding).result() is False
    assert "decoding row by row" in caplog.text


async def test_batches_hold_one_speed_and_at_most_max_batch(
    plain_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with started(VitsEngine(model=str(plain_dir), max_batch=2)) as engine:
        speeds = [1.0, 1.0, 2.0, 1.0, 2.0]
        requests = [{"text": SENTENCE, "speed": s} for s in speeds]
        gate, tasks = await queue_behind(monkeypatch, engine, requests)
        gate.opened.set()
        _, *results = await asyncio.gather(*tasks)
    # The oldest request's speed first, up to two; the others keep their places.
    assert gate.sizes == [1, 2, 2, 1]
    lengths = {s: len(pcm_of(r)) for s, r in zip(speeds, results, strict=True)}
    assert lengths[2.0] < lengths[1.0]


async def test_bad_text_fails_alone_in_its_batch(
    engine: VitsEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = [{"text": "good words"}, {"text": "42 %"}, {"text": "more words"}]
    gate, tasks = await queue_behind(monkeypatch, engine, requests)
    gate.opened.set()
    _, good, bad, more = await asyncio.gather(*tasks, return_exceptions=True)
    assert gate.sizes == [1, 3]
    assert isinstance(bad, EngineError) and "nothing this voice can speak" in str(bad)
    assert isinstance(good, list) and good and isinstance(more, list) and more


# Cancellation


async def test_cancel_before_start_yields_nothing(engine: VitsEngine) -> None:
    cancel = Cancellation()
    cancel.set()
    assert await collect(engine, SENTENCE, cancel) == []
    assert engine.stats["forwards"] == 0


async def test_cancel_mid_stream_stops_within_one_chunk(engine: VitsEngine) -> None:
    cancel = Cancellation()
    received = []
    async for chunk in engine.synthesize(SynthesisRequest(SENTENCE * 3, ""), cancel):
        received.append(chunk)
        cancel.set()
    assert len(received) == 1
    assert len(pcm_of(await collect(engine, SENTENCE * 3))) > 2 * CHUNK, "it had more to say"


async def test_request_cancelled_while_queued_is_dropped_from_its_batch(
    engine: VitsEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    cancels = [Cancellation() for _ in range(3)]
    requests = [{"text": SENTENCE, "cancel": c} for c in cancels]
    gate, tasks = await queue_behind(monkeypatch, engine, requests)
    cancels[1].set()
    gate.opened.set()
    _, first, dropped, third = await asyncio.gather(*tasks)
    assert gate.sizes == [1, 2]
    assert dropped == [] and first and third
    assert engine.stats["dropped"] == 1


async def test_close_fails_waiting_requests(
    plain_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = VitsEngine(model=str(plain_dir))
    await engine.start()
    gate, tasks = await queue_behind(monkeypatch, engine, [{"text": SENTENCE}])
    await engine.close()
    gate.opened.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert all(isinstance(r, EngineError) and "closed" in str(r) for r in results)
    assert vits_module._runtime.users == 0 and vits_module._runtime.executor is None


# End to end


async def test_session_end_to_end(
    redis_url: str, key_prefix: str, plain_dir: Path, engine: VitsEngine
) -> None:
    options = {"model": str(plain_dir)}
    async with start_pipeline(
        redis_url, key_prefix, engine="vits", engine_options=options, concurrency=3
    ) as pipeline:
        async with Client.connect(pipeline) as client:
            # At the model's own rate (PCM's default is 24 kHz): the bytes are the engine's.
            await client.send("session.config", response_format="pcm", sample_rate=SAMPLING_RATE)
            ready = await client.expect("session.ready")
            assert (ready["engine"], ready["voice"]) == ("vits", "default")
            assert ready["sample_rate"] == SAMPLING_RATE
            await client.send("input.text", text="Hello there. How are you today? ")
            await client.send("input.text", text="Fine, thanks.")
            await client.send("input.done")
            sentences, done = await client.utterance(timeout=30)
    assert done["total_sentences"] == 3
    texts = [s.start["sentence_text"] for s in sentences]
    assert texts == ["Hello there.", "How are you today?", "Fine, thanks."]
    for sentence in sentences:
        assert sentence.errors == [] and sentence.done["error"] is False
        assert sentence.start["format"] == "pcm"
        assert sentence.start["sample_rate"] == SAMPLING_RATE
        assert sentence.done["total_bytes"] == len(sentence.audio) > 0
        # The noise-free voice says the sentence exactly as the engine alone does.
        expected = pcm_of(await collect(engine, sentence.start["sentence_text"]))
        assert_same_audio(np.frombuffer(sentence.audio, dtype="<i2"), expected)


async def test_the_mms_licence_is_stated_at_start_and_in_the_help(
    plain_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    from voxline.cli import main

    mms = shutil.copytree(plain_dir, tmp_path / "mms-tts-eng")  # named as `hf download` keeps it
    caplog.set_level("INFO", logger="voxline.worker.vits")
    async with started(VitsEngine(model=str(mms))):
        pass
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("vits: ")]
    assert "CC-BY-NC-4.0, non-commercial use only" in line
    with pytest.raises(SystemExit):
        main(["worker", "--help"])
    assert "CC-BY-NC-4.0" in "".join(capsys.readouterr().out.split())  # argparse wraps at "-"
