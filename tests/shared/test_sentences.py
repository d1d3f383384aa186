from __future__ import annotations

import numpy as np
import pytest
import soxr

from voxline.shared.audio.g711 import alaw_to_pcm16, mulaw_to_pcm16, pcm16_to_alaw, pcm16_to_mulaw
from voxline.shared.audio.sentences import SentenceEncoder
from voxline.shared.audio.wav import parse_wav

RATE = 24000


def speechlike(seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (np.sin(2 * np.pi * 300 * t) * 8000 + np.sin(2 * np.pi * 1200 * t) * 3000).astype(
        np.int16
    )


def chunks(pcm: np.ndarray, size: int = 999) -> list[np.ndarray]:
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def feed(encoder: SentenceEncoder, pcm: np.ndarray) -> list[bytes]:
    return [encoder.encode(c) for c in chunks(pcm)] + [encoder.finish()]


@pytest.mark.parametrize("fmt", ["pcm", "mulaw", "alaw"])
@pytest.mark.parametrize("out_rate", [8000, 16000, RATE])
def test_streamed_output_equals_the_whole_sentence_encoding(fmt: str, out_rate: int) -> None:
    pcm = speechlike()
    streamed = feed(SentenceEncoder(fmt, RATE, out_rate, stream=True), pcm)
    whole = feed(SentenceEncoder(fmt, RATE, out_rate, stream=False), pcm)
    # Streaming delivers along the way; whole-file mode only at the end.
    assert sum(1 for part in streamed[:-1] if part) >= 2
    assert all(part == b"" for part in whole[:-1])
    assert b"".join(streamed) == whole[-1]
    width = 2 if fmt == "pcm" else 1
    if fmt == "pcm":
        assert all(len(part) % 2 == 0 for part in streamed)
    # Duration follows the output rate.
    assert abs(len(whole[-1]) // width - len(pcm) * out_rate // RATE) <= 2


def test_pcm_is_s16le_of_the_resampled_audio() -> None:
    pcm = speechlike()
    out = b"".join(feed(SentenceEncoder("pcm", RATE, 16000, stream=True), pcm))
    expected = soxr.resample(pcm, RATE, 16000, quality="HQ")
    got = np.frombuffer(out, dtype="<i2")
    assert len(got) == len(expected)
    assert np.abs(got.astype(np.int32) - expected).max() <= 4


def test_same_rate_pcm_is_byte_identical() -> None:
    pcm = speechlike(0.1)
    out = b"".join(feed(SentenceEncoder("pcm", RATE, RATE, stream=True), pcm))
    assert out == pcm.astype("<i2").tobytes()


@pytest.mark.parametrize(
    ("fmt", "encode", "decode"),
    [("mulaw", pcm16_to_mulaw, mulaw_to_pcm16), ("alaw", pcm16_to_alaw, alaw_to_pcm16)],
)
def test_g711_output_is_the_g711_of_the_audio(fmt, encode, decode) -> None:  # type: ignore[no-untyped-def]
    pcm = speechlike()
    out = b"".join(feed(SentenceEncoder(fmt, RATE, RATE, stream=True), pcm))
    assert out == encode(pcm)
    assert len(out) == len(pcm)
    assert np.corrcoef(decode(out).astype(float), pcm.astype(float))[0, 1] > 0.999


def test_wav_is_one_complete_file_at_the_output_rate() -> None:
    pcm = speechlike()
    parts = feed(SentenceEncoder("wav", RATE, 8000, stream=False), pcm)
    assert all(p == b"" for p in parts[:-1])
    info = parse_wav(parts[-1])
    assert (info.sample_rate, info.channels, info.sample_width, info.format_tag) == (8000, 1, 2, 1)
    assert abs(len(info.frames) // 2 - len(pcm) // 3) <= 2
    assert parts[-1].count(b"RIFF") == 1


def test_empty_sentence_gives_an_empty_but_valid_file() -> None:
    encoder = SentenceEncoder("wav", RATE, RATE, stream=False)
    info = parse_wav(encoder.finish())
    assert info.frames == b""


def test_wav_cannot_be_streamed_and_unknown_formats_are_named() -> None:
    with pytest.raises(ValueError, match="wav"):
        SentenceEncoder("wav", RATE, RATE, stream=True)
    with pytest.raises(ValueError, match="opus"):
        SentenceEncoder("opus", RATE, RATE, stream=False)


def test_finish_is_final() -> None:
    encoder = SentenceEncoder("pcm", RATE, RATE, stream=True)
    encoder.finish()
    with pytest.raises(RuntimeError):
        encoder.encode(speechlike(0.01))
    with pytest.raises(RuntimeError):
        encoder.finish()
