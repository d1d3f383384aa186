"""The output formats: one table, read by validation, the protocol, REST, the SDK and the docs.

Pure data, no codec imports: the SDK reads it without numpy or PyAV. The encoders that make
each format are in `sentences.py` (what a worker makes itself) and `codecs.py` (the
compressed ones, and a connection-long stream of any format).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Framing = Literal["riff", "raw", "mp3", "ogg", "adts", "flac"]
# The names, for the protocol's types (a Literal must be spelled out; a test holds it to FORMATS).
FormatName = Literal["wav", "pcm", "mulaw", "alaw", "mp3", "opus", "aac", "flac"]

MIN_RATE = 8000
MAX_RATE = 48000
TELEPHONY_RATE = 8000
_OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# MPEG-1, -2 and -2.5 layer III rates; also the AAC rates within MIN_RATE..MAX_RATE.
MPEG_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)


@dataclass(frozen=True, slots=True)
class Encoder:
    """How codecs.py makes a compressed format with PyAV (names only: no import of it here)."""

    name: str  # libavcodec encoder
    sample_fmt: str  # the encoder's input format we feed (int16 where it takes it)
    container: str  # libavformat muxer, for whole files
    stream_options: dict[str, str] = field(default_factory=dict)
    file_options: dict[str, str] = field(default_factory=dict)

    def bit_rate(self, rate: int) -> int:
        if self.name == "flac":
            return 0
        if self.name == "libopus":
            return 32000  # transparent for mono speech
        if self.name == "aac":
            # libavcodec's AAC overshoots by about a third (48k gives ~63 kbps on speech);
            # at most 6144 bits per 1024-sample frame and channel.
            return min(48000, 6 * rate)
        return 64000


@dataclass(frozen=True, slots=True)
class Format:
    name: str
    media_type: str
    # A file's extension, where players expect another than the format's name: Ogg Opus is
    # `.ogg`; G.711 files are `.ulaw` / `.alaw` (what sox and ffmpeg recognize).
    extension: str
    framing: Framing
    # Made by a PyAV encoder on the front end (the worker sends PCM); the others a worker
    # encodes itself, sentence by sentence.
    compressed: bool
    # Headerless: any prefix of the bytes plays, so a worker may stream a sentence in pieces
    # and the SDK streams it by default. A WAV header mid-stream plays as a pop.
    headerless: bool
    # The rates it can be encoded at within MIN_RATE..MAX_RATE; None: any of them.
    rates: tuple[int, ...] | None = None
    # The rate when the client asks for none and the engine's own does not fit; None: the
    # engine's rate (or the lowest listed rate at or above it).
    default_rate: int | None = None
    encoder: Encoder | None = None  # the compressed formats'

    @property
    def streamable(self) -> bool:
        """Whether `stream_audio` may ask for it: one continuous stream for the connection.
        Every format but WAV, whose sizes in the header need the end."""
        return self.framing != "riff"


def _raw(name: str, media_type: str, extension: str, default_rate: int | None = None) -> Format:
    return Format(name, media_type, extension, "raw", False, True, default_rate=default_rate)


def _compressed(
    name: str, media_type: str, extension: str, framing: Framing, **spec: Any
) -> Format:
    return Format(name, media_type, extension, framing, True, False, **spec)


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("wav", "audio/wav", "wav", "riff", compressed=False, headerless=False),
        _raw("pcm", "audio/pcm", "pcm"),  # s16le mono
        _raw("mulaw", "audio/basic", "ulaw", default_rate=TELEPHONY_RATE),
        _raw("alaw", "audio/x-alaw-basic", "alaw", default_rate=TELEPHONY_RATE),
        # No bit reservoir when streaming: with it LAME holds frames back longer, and longer
        # still as the stream goes on (measured: 48 ms more lag at 24 kHz, 72+ ms at 48 kHz),
        # which every chunk's latency and every sentence end's padding would pay for.
        _compressed(
            "mp3",
            "audio/mpeg",
            "mp3",
            "mp3",
            rates=MPEG_RATES,
            encoder=Encoder(
                "libmp3lame", "s16p", "mp3", {"reservoir": "0"}, {"id3v2_version": "0"}
            ),
        ),
        _compressed(
            "opus",
            "audio/ogg",
            "ogg",
            "ogg",
            rates=_OPUS_RATES,
            encoder=Encoder("libopus", "s16", "ogg"),
        ),  # Ogg Opus
        _compressed(
            "aac",
            "audio/aac",
            "aac",
            "adts",
            rates=MPEG_RATES,
            encoder=Encoder("aac", "fltp", "adts"),
        ),  # ADTS
        # Streams use 20 ms blocks (not libavcodec's ~100 ms): a sentence end pads one at most.
        _compressed(
            "flac",
            "audio/flac",
            "flac",
            "flac",
            encoder=Encoder("flac", "s16", "flac", file_options={"metadata_header_padding": "0"}),
        ),
    )
}

ALL_FORMATS: tuple[str, ...] = tuple(FORMATS)
COMPRESSED: tuple[str, ...] = tuple(f.name for f in FORMATS.values() if f.compressed)
STREAMABLE: frozenset[str] = frozenset(f.name for f in FORMATS.values() if f.streamable)
HEADERLESS: tuple[str, ...] = tuple(f.name for f in FORMATS.values() if f.headerless)
MEDIA_TYPES: dict[str, str] = {f.name: f.media_type for f in FORMATS.values()}
FILE_EXTENSIONS: dict[str, str] = {f.name: f.extension for f in FORMATS.values()}


def unknown(fmt: str) -> str:
    return f"unknown audio format {fmt!r}; expected one of {list(ALL_FORMATS)}"


def get(fmt: str) -> Format:
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ValueError(unknown(fmt)) from None


def sample_rates(fmt: str) -> tuple[int, ...] | None:
    """The rates `fmt` can be encoded at within MIN_RATE..MAX_RATE; None: any of them."""
    return get(fmt).rates


def default_rate(fmt: str, engine_rate: int) -> int:
    """The output rate when the client asks for none: telephony's 8 kHz for G.711, else
    the engine's own rate, or the lowest rate the codec has at or above it."""
    spec = get(fmt)
    if spec.default_rate is not None:
        return spec.default_rate
    rate = min(max(engine_rate, MIN_RATE), MAX_RATE)
    if spec.rates is None or rate in spec.rates:
        return rate
    return next(r for r in spec.rates if r >= rate)  # MAX_RATE is in every list


def check_rate(fmt: str, rate: int) -> str | None:
    """None when `fmt` can be encoded at `rate`, else why not (naming the allowed rates)."""
    if fmt not in FORMATS:
        return unknown(fmt)
    rates = FORMATS[fmt].rates
    if rates is not None:
        if rate in rates:
            return None
        listed = ", ".join(map(str, rates[:-1])) + f" or {rates[-1]}"
        return f"{fmt} encodes at {listed} Hz"
    if not MIN_RATE <= rate <= MAX_RATE:
        return f"{fmt} encodes at {MIN_RATE} to {MAX_RATE} Hz"
    return None
