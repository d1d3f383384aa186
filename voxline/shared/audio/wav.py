"""Mono RIFF/WAVE files: writing one in memory, and reading one back chunk by chunk."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PCM = 1
ALAW = 6
MULAW = 7
EXTENSIBLE = 0xFFFE

_PCM_WIDTHS = (1, 2, 3, 4)


@dataclass(frozen=True, slots=True)
class WavInfo:
    sample_rate: int
    channels: int
    sample_width: int  # bytes per sample (one channel)
    format_tag: int  # 1 PCM, 6 A-law, 7 mu-law (an EXTENSIBLE file reports its subformat)
    frames: bytes  # the data chunk's payload


def _chunk(tag: bytes, payload: bytes) -> bytes:
    pad = b"\x00" if len(payload) % 2 else b""  # RIFF chunks are word-aligned
    return tag + struct.pack("<I", len(payload)) + payload + pad


def wav_bytes(
    data: bytes, sample_rate: int, *, sample_width: int = 2, format_tag: int = PCM
) -> bytes:
    """A complete mono WAV file holding `data` (little-endian PCM or G.711 bytes)."""
    if format_tag == PCM:
        if sample_width not in _PCM_WIDTHS:
            raise ValueError(f"PCM sample_width must be one of {_PCM_WIDTHS}, got {sample_width}")
    elif format_tag in (ALAW, MULAW):
        if sample_width != 1:
            raise ValueError(f"G.711 (format_tag {format_tag}) has 1-byte samples")
    else:
        raise ValueError(f"format_tag must be 1 (PCM), 6 (A-law) or 7 (mu-law), got {format_tag}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if len(data) % sample_width:
        raise ValueError(f"{len(data)} bytes is not a whole number of {sample_width}-byte samples")
    frames = len(data) // sample_width
    fmt = struct.pack(
        "<HHIIHH",
        format_tag,
        1,
        sample_rate,
        sample_rate * sample_width,
        sample_width,
        sample_width * 8,
    )
    chunks = []
    if format_tag == PCM:
        chunks.append(_chunk(b"fmt ", fmt))
    else:
        # Non-PCM formats carry cbSize and a fact chunk (the frame count), per the RIFF spec.
        chunks.append(_chunk(b"fmt ", fmt + struct.pack("<H", 0)))
        chunks.append(_chunk(b"fact", struct.pack("<I", frames)))
    chunks.append(_chunk(b"data", bytes(data)))
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


_UNKNOWN_SIZE = 0xFFFFFFFF


def wav_stream_header(sample_rate: int) -> bytes:
    """The header of a 16-bit mono WAV stream whose length is not known yet: s16le PCM
    follows it. RIFF and data sizes are 0xFFFFFFFF, the usual convention for a live WAV;
    readers take the data up to the end of the stream."""
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    fmt = struct.pack("<HHIIHH", PCM, 1, sample_rate, sample_rate * 2, 2, 16)
    return (
        b"RIFF"
        + struct.pack("<I", _UNKNOWN_SIZE)
        + b"WAVE"
        + _chunk(b"fmt ", fmt)
        + b"data"
        + struct.pack("<I", _UNKNOWN_SIZE)
    )


def parse_wav(data: bytes) -> WavInfo:
    """Read a WAV file's format and data, skipping chunks it does not need (LIST, fact, ...)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    frames: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        tag = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        start = pos + 8
        # Streamed files often carry a placeholder size: take what is there.
        payload = data[start : min(start + size, len(data))]
        if tag == b"fmt ":
            if len(payload) < 16:
                raise ValueError("fmt chunk is too short")
            tag_, channels, rate, _byte_rate, _align, bits = struct.unpack_from("<HHIIHH", payload)
            if tag_ == EXTENSIBLE:
                if len(payload) < 26:
                    raise ValueError("WAVE_FORMAT_EXTENSIBLE fmt chunk is too short")
                # The subformat GUID starts with the real format tag.
                (tag_,) = struct.unpack_from("<H", payload, 24)
            fmt = (rate, channels, (bits + 7) // 8, tag_)
        elif tag == b"data":
            frames = payload
            if fmt is not None:
                break
        pos = start + size + (size % 2)
    if fmt is None:
        raise ValueError("WAV file has no fmt chunk")
    if frames is None:
        raise ValueError("WAV file has no data chunk")
    rate, channels, width, tag_ = fmt
    return WavInfo(
        sample_rate=rate, channels=channels, sample_width=width, format_tag=tag_, frames=frames
    )
