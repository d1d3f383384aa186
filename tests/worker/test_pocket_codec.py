"""Streaming codec decode == transformers' whole-utterance decode, chunk by chunk and batched."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import PocketTTSAudioTokenizerConfig, PocketTTSAudioTokenizerModel
from transformers.models.pocket_tts.processing_pocket_tts import PocketTTSProcessor

from voxline.worker.engines.pocket.codec import CodecState, StreamingDecoder

LATENT_DIM = 8
WINDOW = 16  # decoder transformer positions: 4 latent frames at latent_stride 4
FRAMES = 24  # 96 transformer positions: the window is exceeded many times over
TOLERANCE = 1e-5  # max abs error relative to the reference's peak (float32 gives ~5e-7)


def tiny_config(**overrides: Any) -> PocketTTSAudioTokenizerConfig:
    """Every code path of the real decoder at toy size: grouped upsampling, GQA, dilated
    residual convs, a window the stream outgrows, a fade-in spanning several frames."""
    fields: dict[str, Any] = dict(
        encoder_config=None,
        hidden_size=32,
        num_filters=4,
        upsampling_ratios=[3, 2],
        latent_stride=4,  # frame_size 24 samples: the 120-sample fade-in covers 5 frames
        latent_dim=LATENT_DIM,
        upsample_groups=8,
        num_hidden_layers=2,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        sliding_window=WINDOW,
        num_residual_layers=2,
        # at the default 0.01 the random transformer barely moves the audio, so a wrong
        # attention window would hide under the tolerance
        layer_scale_initial_scale=1.0,
    )
    fields |= overrides
    return PocketTTSAudioTokenizerConfig(**{k: v for k, v in fields.items() if v is not ...})


def build(tmp_path: Path, **overrides: Any) -> PocketTTSAudioTokenizerModel:
    """A random codec, round-tripped through the real save/load path."""
    torch.manual_seed(0)
    PocketTTSAudioTokenizerModel(tiny_config(**overrides)).save_pretrained(tmp_path)
    return PocketTTSAudioTokenizerModel.from_pretrained(tmp_path).eval()


@pytest.fixture(scope="module")
def codec(tmp_path_factory: pytest.TempPathFactory) -> PocketTTSAudioTokenizerModel:
    return build(tmp_path_factory.mktemp("codec"))


def latents(frames: int, seed: int) -> torch.Tensor:
    return torch.randn(frames, LATENT_DIM, generator=torch.Generator().manual_seed(seed))


def reference(codec: PocketTTSAudioTokenizerModel, frames: torch.Tensor) -> torch.Tensor:
    """`PocketTTSProcessor.decode` itself (decode + fade-in), minus the text side it ignores."""
    processor = SimpleNamespace(
        audio_tokenizer=codec,
        fade_in_duration=0.005,
        feature_extractor=SimpleNamespace(sampling_rate=codec.config.sampling_rate),
    )
    return PocketTTSProcessor.decode(processor, frames)


def stream(decoder: StreamingDecoder, frames: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state, chunks, start = decoder.new_state(), [], 0
    for size in sizes:
        chunks.append(decoder.step(frames[None, start : start + size], [state])[0])
        start += size
    assert start == len(frames)
    return torch.cat(chunks)


def assert_matches(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert got.shape == want.shape
    error = (got - want.to(got)).abs().max() / want.abs().max()
    assert error <= TOLERANCE, f"relative error {error:.2e}"


def split(total: int, pattern: list[int]) -> list[int]:
    sizes: list[int] = []
    while sum(sizes) < total:
        sizes.append(min(pattern[len(sizes) % len(pattern)], total - sum(sizes)))
    return sizes


def test_loads_through_save_pretrained(codec: PocketTTSAudioTokenizerModel) -> None:
    assert codec.encoder is None and codec.decoder is not None
    assert codec.config.sliding_window == WINDOW
    decoder = StreamingDecoder(codec)
    assert (decoder.frame_size, decoder.sample_rate) == (24, 24000)


def test_one_frame_at_a_time_matches_reference(codec: PocketTTSAudioTokenizerModel) -> None:
    frames = latents(FRAMES, seed=1)
    got = stream(StreamingDecoder(codec), frames, [1] * FRAMES)
    want = reference(codec, frames)
    assert_matches(got, want)
    assert got[0] == 0  # the fade-in starts from silence


@pytest.mark.parametrize("pattern", [[2], [3], [5, 1, 7, 2], [FRAMES]], ids=str)
def test_any_chunking_matches_reference(
    codec: PocketTTSAudioTokenizerModel, pattern: list[int]
) -> None:
    frames = latents(FRAMES, seed=2)
    assert_matches(
        stream(StreamingDecoder(codec), frames, split(FRAMES, pattern)), reference(codec, frames)
    )


def test_random_chunkings_match_reference(codec: PocketTTSAudioTokenizerModel) -> None:
    rng = random.Random(3)
    decoder = StreamingDecoder(codec)
    frames = latents(FRAMES, seed=3)
    want = reference(codec, frames)
    for _ in range(3):
        assert_matches(
            stream(decoder, frames, split(FRAMES, [rng.randint(1, 6) for _ in range(8)])), want
        )


def test_batched_streams_at_different_offsets_match_each_alone(
    codec: PocketTTSAudioTokenizerModel,
) -> None:
    decoder = StreamingDecoder(codec)
    rng = random.Random(4)
    calls = 14
    sizes = [rng.randint(1, 3) for _ in range(calls)]  # one n per call, shared by its rows
    # (first call, last call) of each stream: joining late, leaving early, spanning everything
    spans = [(0, calls - 1), (0, 4), (3, calls - 1), (6, 9), (9, calls - 1), (13, 13)]
    total = [sum(sizes[a : b + 1]) for a, b in spans]
    frames = [latents(n, seed=10 + i) for i, n in enumerate(total)]
    states = [decoder.new_state() for _ in spans]
    done = [0] * len(spans)
    audio: list[list[torch.Tensor]] = [[] for _ in spans]
    for call, n in enumerate(sizes):
        rows = [i for i, (a, b) in enumerate(spans) if a <= call <= b]
        if call % 3 == 2:  # a new order regathers the carries; the same order reuses them
            rng.shuffle(rows)
        batch = torch.stack([frames[i][done[i] : done[i] + n] for i in rows])
        out = decoder.step(batch, [states[i] for i in rows])
        assert out.shape == (len(rows), n * decoder.frame_size)
        for i, row in zip(rows, out, strict=True):
            audio[i].append(row)
            done[i] += n
    for i, (a, b) in enumerate(spans):
        got = torch.cat(audio[i])
        assert_matches(got, reference(codec, frames[i]))
        alone = stream(StreamingDecoder(codec), frames[i], sizes[a : b + 1])
        assert_matches(got, alone)


def test_streams_are_independent(codec: PocketTTSAudioTokenizerModel) -> None:
    decoder = StreamingDecoder(codec)
    a, b = latents(6, seed=5), latents(6, seed=6)
    alone = stream(decoder, b, [1] * 6)
    state_a, state_b = decoder.new_state(), decoder.new_state()
    assert state_a is not state_b and state_a.frames == state_b.frames == 0
    got = []
    for i in range(6):
        decoder.step(a[None, i : i + 1], [state_a])  # interleaved, in separate calls
        got.append(decoder.step(b[None, i : i + 1], [state_b])[0])
    assert torch.equal(torch.cat(got), alone)
    assert state_a.frames == state_b.frames == 6


def test_replicate_padding_and_conv_shortcut(tmp_path: Path) -> None:
    codec = build(tmp_path, pad_mode="replicate", use_conv_shortcut=True)
    decoder = StreamingDecoder(codec)
    first, second = latents(12, seed=7), latents(9, seed=8)
    assert_matches(stream(decoder, first, [1] * 12), reference(codec, first))
    # a fresh row replicates its own first sample while a running row keeps its history
    old, new = decoder.new_state(), decoder.new_state()
    head = decoder.step(first[None, :3], [old])[0]
    out = decoder.step(torch.stack([first[3:6], second[:3]]), [old, new])
    tail = decoder.step(torch.stack([second[3:9], first[6:12]]), [new, old])
    assert_matches(torch.cat([head, out[0], tail[1]]), reference(codec, first))
    assert_matches(torch.cat([out[1], tail[0]]), reference(codec, second))


@pytest.mark.parametrize(
    "overrides",
    [
        dict(use_causal_conv=False),
        dict(trim_right_ratio=0.5),
        dict(pad_mode="reflect"),
        dict(encoder_config=..., decoder_config=None),  # `...`: keep the encoder
    ],
    ids=["non-causal", "trim-left", "reflect", "no-decoder"],
)
def test_rejects_what_cannot_stream_exactly(overrides: dict[str, Any]) -> None:
    codec = PocketTTSAudioTokenizerModel(tiny_config(**overrides)).eval()
    with pytest.raises(ValueError):
        StreamingDecoder(codec)


def test_step_checks_its_arguments(codec: PocketTTSAudioTokenizerModel) -> None:
    decoder = StreamingDecoder(codec)
    state = decoder.new_state()
    with pytest.raises(ValueError):
        decoder.step(latents(2, seed=9)[None], [state, decoder.new_state()])
    with pytest.raises(ValueError):
        decoder.step(latents(2, seed=9).expand(2, 2, LATENT_DIM), [state, state])
    assert state.frames == 0
    empty: list[CodecState] = []
    assert decoder.step(torch.zeros(0, 2, LATENT_DIM), empty).shape == (0, 48)


def test_a_failed_step_leaves_the_states_usable(
    codec: PocketTTSAudioTokenizerModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    # keys are appended in place: a call dying after the transformer must not corrupt them.
    # Failing on consecutive calls hits both an in-place append and a move to new buffers.
    decoder = StreamingDecoder(codec)
    frames = [latents(FRAMES, seed=12), latents(FRAMES, seed=13)]
    states = [decoder.new_state(), decoder.new_state()]
    audio: list[list[torch.Tensor]] = [[], []]
    for start in range(FRAMES):
        batch = torch.stack([f[start : start + 1] for f in frames])
        if 5 <= start <= 9:
            with monkeypatch.context() as patch:
                patch.setattr(decoder, "_fade_in", lambda *_: 1 / 0)
                with pytest.raises(ZeroDivisionError):
                    decoder.step(batch, states)
            assert [s.frames for s in states] == [start, start]
        for row, out in zip(audio, decoder.step(batch, states), strict=True):
            row.append(out)
    for row, f in zip(audio, frames, strict=True):
        assert_matches(torch.cat(row), reference(codec, f))


def test_bfloat16(codec: PocketTTSAudioTokenizerModel) -> None:
    # The dtype a GPU worker runs in; the device is whatever this machine has.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = (
        PocketTTSAudioTokenizerModel.from_pretrained(codec.name_or_path, dtype=torch.bfloat16)
        .to(device)
        .eval()
    )
    frames = latents(FRAMES, seed=11)
    got = stream(StreamingDecoder(gpu), frames, split(FRAMES, [1, 2, 3]))
    want = reference(gpu, frames)
    assert got.dtype == torch.float32 and got.device.type == "cpu"
    assert (got - want).abs().max() / want.abs().max() < 0.05  # bfloat16 rounding
