from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from voxline.shared.audio.wav import parse_wav, wav_bytes


def test_pcm_wav_is_readable_by_the_standard_library() -> None:
    pcm = np.arange(-500, 500, dtype=np.int16).astype("<i2").tobytes()
    data = wav_bytes(pcm, 16000)
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 16000)
        assert w.getnframes() == 1000
        assert w.readframes(1000) == pcm
    assert len(data) == 44 + len(pcm)
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8


@pytest.mark.parametrize("tag", [6, 7])
def test_g711_wav_has_its_format_tag_and_a_fact_chunk(tag: int) -> None:
    payload = bytes(range(255))  # odd length: the data chunk gets a pad byte
    data = wav_bytes(payload, 8000, sample_width=1, format_tag=tag)
    assert len(data) % 2 == 0
    assert struct.unpack_from("<I", data, 4)[0] == len(data) - 8
    assert b"fact" in data and struct.unpack_from("<I", data, data.index(b"fact") + 8)[0] == 255
    info = parse_wav(data)
    assert (info.sample_rate, info.channels, info.sample_width, info.format_tag) == (
        8000,
        1,
        1,
        tag,
    )
    assert info.frames == payload


def test_parse_round_trips_and_skips_unknown_chunks() -> None:
    pcm = np.array([1, -2, 3, -4], dtype="<i2").tobytes()
    plain = wav_bytes(pcm, 24000)
    info = parse_wav(plain)
    assert info == parse_wav(plain) and info.frames == pcm and info.format_tag == 1
    # Insert an odd-sized LIST chunk (with its pad byte) between fmt and data.
    fmt_end = 12 + 8 + 16
    listing = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\x00"
    body = plain[12:fmt_end] + listing + plain[fmt_end:]
    data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
    info = parse_wav(data)
    assert (info.sample_rate, info.sample_width, info.frames) == (24000, 2, pcm)


def test_parse_reads_a_file_written_by_the_wave_module() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(44100)
        w.writeframes(b"\x01\x00\x02\x00" * 10)
    info = parse_wav(buf.getvalue())
    assert (info.channels, info.sample_rate, info.sample_width) == (2, 44100, 2)
    assert info.frames == b"\x01\x00\x02\x00" * 10


def test_parse_tolerates_a_streaming_placeholder_data_size() -> None:
    pcm = b"\x10\x00" * 8
    data = bytearray(wav_bytes(pcm, 8000))
    struct.pack_into("<I", data, 40, 0xFFFFFFFF)
    assert parse_wav(bytes(data)).frames == pcm


def test_parse_extensible_reports_the_subformat() -> None:
    fmt = (
        struct.pack("<HHIIHHHHI", 0xFFFE, 1, 8000, 8000, 1, 8, 22, 8, 0)
        + struct.pack("<H", 7)
        + bytes(14)
    )
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + b"\x02\x00\x00\x00ab"
    info = parse_wav(b"RIFF" + struct.pack("<I", len(body)) + body)
    assert info.format_tag == 7 and info.frames == b"ab"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"RIFX\x00\x00\x00\x00WAVE",
        b"RIFF\x04\x00\x00\x00WAVE",
        b"RIFF\x0c\x00\x00\x00WAVEdata\x00\x00\x00\x00",
    ],
    ids=["empty", "not-riff", "no-chunks", "no-fmt"],
)
def test_parse_rejects_broken_files(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_wav(data)


def test_parse_rejects_a_file_without_data() -> None:
    data = wav_bytes(b"", 8000)
    with pytest.raises(ValueError, match="no data"):
        parse_wav(data[:36])


@pytest.mark.parametrize(
    ("kwargs", "length"),
    [
        ({"format_tag": 3}, 2),
        ({"format_tag": 7, "sample_width": 2}, 2),
        ({"sample_width": 5}, 5),
        ({}, 3),
    ],
)
def test_wav_bytes_rejects_inconsistent_arguments(kwargs: dict[str, int], length: int) -> None:
    with pytest.raises(ValueError):
        wav_bytes(b"\x00" * length, 8000, **kwargs)
