"""G.711 against a scalar transcription of the ITU-T reference (Sun's g711.c)."""

from __future__ import annotations

import numpy as np
import pytest

from voxline.shared.audio.g711 import alaw_to_pcm16, mulaw_to_pcm16, pcm16_to_alaw, pcm16_to_mulaw

ALL = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)


def _search(value: int, table: list[int]) -> int:
    for i, end in enumerate(table):
        if value <= end:
            return i
    return len(table)


def ref_linear2ulaw(sample: int) -> int:
    pcm = sample >> 2  # 16-bit to 14-bit, arithmetic shift as the reference's callers do
    if pcm < 0:
        pcm, mask = -pcm, 0x7F
    else:
        mask = 0xFF
    pcm = min(pcm, 32635) + (0x84 >> 2)
    seg = _search(pcm, [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask


def ref_linear2alaw(sample: int) -> int:
    pcm = sample >> 3  # 16-bit to 13-bit
    if pcm >= 0:
        mask = 0xD5
    else:
        mask, pcm = 0x55, -pcm - 1
    seg = _search(pcm, [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
    if seg >= 8:
        return 0x7F ^ mask
    quant = (pcm >> 1) if seg < 2 else (pcm >> seg)
    return ((seg << 4) | (quant & 0xF)) ^ mask


def ref_ulaw2linear(code: int) -> int:
    u = ~code & 0xFF
    t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
    return 0x84 - t if u & 0x80 else t - 0x84


def ref_alaw2linear(code: int) -> int:
    a = code ^ 0x55
    t = (a & 0x0F) << 4
    seg = (a & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a & 0x80 else -t


def test_mulaw_encoder_matches_the_reference_for_every_sample() -> None:
    expected = bytes(ref_linear2ulaw(int(s)) for s in ALL)
    assert pcm16_to_mulaw(ALL) == expected


def test_alaw_encoder_matches_the_reference_for_every_sample() -> None:
    expected = bytes(ref_linear2alaw(int(s)) for s in ALL)
    assert pcm16_to_alaw(ALL) == expected


def test_decoders_match_the_reference_for_every_code() -> None:
    codes = bytes(range(256))
    assert mulaw_to_pcm16(codes).tolist() == [ref_ulaw2linear(c) for c in codes]
    assert alaw_to_pcm16(codes).tolist() == [ref_alaw2linear(c) for c in codes]
    assert mulaw_to_pcm16(codes).dtype == np.int16 and alaw_to_pcm16(codes).dtype == np.int16


def test_known_values() -> None:
    zero = np.zeros(1, dtype=np.int16)
    assert pcm16_to_mulaw(zero) == b"\xff"
    assert pcm16_to_alaw(zero) == b"\xd5"
    extremes = np.array([32767, -32768], dtype=np.int16)
    assert pcm16_to_mulaw(extremes) == b"\x80\x00"
    assert pcm16_to_alaw(extremes) == b"\xaa\x2a"
    assert mulaw_to_pcm16(b"\xff\x7f\x80\x00").tolist() == [0, 0, 32124, -32124]
    assert alaw_to_pcm16(b"\xd5\x55\xaa\x2a").tolist() == [8, -8, 32256, -32256]


@pytest.mark.parametrize(
    ("encode", "decode", "aliases"),
    [(pcm16_to_mulaw, mulaw_to_pcm16, {0x7F: 0xFF}), (pcm16_to_alaw, alaw_to_pcm16, {})],
    ids=["mulaw", "alaw"],
)
def test_round_trip_error_is_bounded_by_the_step_size(encode, decode, aliases) -> None:  # type: ignore[no-untyped-def]
    x = ALL.astype(np.int32)
    err = np.abs(decode(encode(ALL)).astype(np.int32) - x)
    # Companding: the step, so the error, grows with magnitude (at most 1/32 of the value
    # plus half the smallest step); near zero the error is a few units.
    assert np.all(err <= np.abs(x) // 32 + 16)
    assert err[np.abs(x) < 64].max() <= 8
    assert err.max() > 0  # lossy: a codec that returned its input would not be G.711
    # Decoding yields a representative of each code, which encodes back to that code
    # (mu-law's "negative zero" 0x7F decodes to 0 and comes back as 0xFF).
    codes = bytes(range(256))
    assert encode(decode(codes)) == bytes(aliases.get(c, c) for c in codes)


def test_encoders_are_vectorized_over_any_shape_and_reject_other_dtypes() -> None:
    assert pcm16_to_mulaw(ALL.reshape(256, 256)) == pcm16_to_mulaw(ALL)
    assert pcm16_to_alaw(np.zeros(0, dtype=np.int16)) == b""
    with pytest.raises(TypeError):
        pcm16_to_mulaw(np.zeros(4, dtype=np.float32))
