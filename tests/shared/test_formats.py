"""The format table (shared/audio/formats.py): what every reader of it relies on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import get_args

import pytest

from voxline.shared.audio.formats import (
    ALL_FORMATS,
    COMPRESSED,
    FILE_EXTENSIONS,
    FORMATS,
    HEADERLESS,
    MEDIA_TYPES,
    STREAMABLE,
    FormatName,
    check_rate,
    default_rate,
    get,
    sample_rates,
)


def test_the_protocols_names_are_the_tables() -> None:
    assert get_args(FormatName) == ALL_FORMATS == tuple(FORMATS)


def test_what_each_format_can_do() -> None:
    # wav's sizes sit in its header, so it is whole-file only; headerless ones play from any
    # prefix (a worker streams them piece by piece); compressed ones the front end encodes.
    assert STREAMABLE == set(ALL_FORMATS) - {"wav"}
    assert HEADERLESS == ("pcm", "mulaw", "alaw")
    assert not set(HEADERLESS) & set(COMPRESSED)
    assert {f.framing for f in FORMATS.values() if f.compressed} == {"mp3", "ogg", "adts", "flac"}
    # The compressed ones name their PyAV encoder; the others a worker encodes itself.
    assert all((f.encoder is not None) == f.compressed for f in FORMATS.values())
    assert FORMATS["opus"].encoder is not None and FORMATS["opus"].encoder.name == "libopus"


def test_file_extensions_are_what_players_expect() -> None:
    assert FILE_EXTENSIONS["opus"] == "ogg" and FILE_EXTENSIONS["mulaw"] == "ulaw"
    assert FILE_EXTENSIONS["mp3"] == "mp3" and set(FILE_EXTENSIONS) == set(ALL_FORMATS)


def test_unknown_formats_are_named() -> None:
    with pytest.raises(ValueError, match=r"unknown audio format 'ogg'; expected one of \['wav'"):
        get("ogg")
    with pytest.raises(ValueError, match="unknown audio format"):
        sample_rates("ogg")
    with pytest.raises(ValueError, match="unknown audio format"):
        default_rate("vorbis", 24000)


def test_media_types_cover_every_format() -> None:
    assert ALL_FORMATS == ("wav", "pcm", "mulaw", "alaw", "mp3", "opus", "aac", "flac")
    assert COMPRESSED == ("mp3", "opus", "aac", "flac")
    assert set(MEDIA_TYPES) == set(ALL_FORMATS)
    assert MEDIA_TYPES["mp3"] == "audio/mpeg" and MEDIA_TYPES["opus"] == "audio/ogg"
    assert all(value.startswith("audio/") for value in MEDIA_TYPES.values())


def test_rate_table() -> None:
    assert sample_rates("opus") == (8000, 12000, 16000, 24000, 48000)
    mpeg = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
    assert sample_rates("mp3") == sample_rates("aac") == mpeg
    for fmt in ("wav", "pcm", "mulaw", "alaw", "flac"):
        assert sample_rates(fmt) is None
    expected = {
        # engine rate: (wav/pcm/flac, mulaw/alaw, opus, mp3/aac)
        8000: (8000, 8000, 8000, 8000),
        16000: (16000, 8000, 16000, 16000),
        22050: (22050, 8000, 24000, 22050),
        24000: (24000, 8000, 24000, 24000),
        44100: (44100, 8000, 48000, 44100),
        20000: (20000, 8000, 24000, 22050),
    }
    for engine, (plain, g711, opus, mpeg_rate) in expected.items():
        assert [default_rate(f, engine) for f in ("wav", "pcm", "flac")] == [plain] * 3
        assert [default_rate(f, engine) for f in ("mulaw", "alaw")] == [g711] * 2
        assert default_rate("opus", engine) == opus
        assert [default_rate(f, engine) for f in ("mp3", "aac")] == [mpeg_rate] * 2
    for fmt in ALL_FORMATS:  # the default is always encodable
        for engine in (8000, 11025, 16000, 22050, 24000, 32000, 44100, 48000):
            assert check_rate(fmt, default_rate(fmt, engine)) is None


def test_check_rate_names_the_allowed_rates() -> None:
    assert check_rate("opus", 24000) is None
    assert check_rate("opus", 22050) == "opus encodes at 8000, 12000, 16000, 24000 or 48000 Hz"
    assert check_rate("mp3", 96000) == (
        "mp3 encodes at 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100 or 48000 Hz"
    )
    assert check_rate("aac", 7350) is not None
    assert check_rate("flac", 22050) is None and check_rate("pcm", 11025) is None
    assert check_rate("flac", 96000) == "flac encodes at 8000 to 48000 Hz"
    assert "unknown audio format 'ogg'" in (check_rate("ogg", 24000) or "")


def test_the_protocols_pages_list_the_tables_formats() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `response_format` |")]
    assert len(rows) == 3, "the WebSocket's, REST's and the batch jobs' tables"
    for row in rows:
        listed = re.findall(r"`([a-z0-9]+)`", row.split("|")[2])
        assert sorted(listed) == sorted(ALL_FORMATS), row
