"""Client audio formats: one continuous encoded stream per connection, or one file.

The compressed encoders are PyAV (libav*) codec contexts, made once per stream. The stream
framing (Ogg pages, ADTS headers, the FLAC header; MP3 frames need none) is written here
rather than by libavformat's muxers: the Ogg muxer always keeps its newest page back (it
may have to become the EOS page) and PyAV cannot flush it, so a sentence's end would stay
unplayable until the next sentence. Whole files (`encode_file`) do go through the muxers,
seekable, so that they get what only a finished file can carry (MP3's LAME tag with the
encoder delay, FLAC's sample count and MD5, Ogg's end trimming).
"""

from __future__ import annotations

import io
import secrets
import struct
import zlib
from fractions import Fraction

import av
import numpy as np

from voxline.shared.audio.formats import COMPRESSED, FORMATS, MPEG_RATES, Encoder, check_rate
from voxline.shared.audio.g711 import pcm16_to_alaw, pcm16_to_mulaw
from voxline.shared.audio.wav import wav_bytes, wav_stream_header

_ADTS_RATE_INDEX = {r: i for i, r in enumerate((96000, 88200, 64000, *reversed(MPEG_RATES)))}


def _codec(fmt: str) -> Encoder:
    encoder = FORMATS[fmt].encoder
    assert encoder is not None, f"{fmt} is not a compressed format"
    return encoder


def _samples(pcm: bytes) -> np.ndarray:
    if len(pcm) % 2:
        raise ValueError(f"{len(pcm)} bytes is not a whole number of 16-bit samples")
    return np.frombuffer(pcm, dtype="<i2")  # int16 on the little-endian hosts we run on


# --- Ogg ----------------------------------------------------------------------------------

_BIT_REVERSED = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))


def _ogg_crc(page: bytes) -> int:
    # Ogg's CRC-32 is zlib's polynomial unreflected, with no inversions: run zlib's (C) CRC
    # over bit-reversed bytes, undo its inversions and bit-reverse the result.
    raw = zlib.crc32(page.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


class _OggStream:
    """One Ogg logical bitstream, paged as packets come: nothing is held back."""

    BOS, EOS = 2, 4

    def __init__(self) -> None:
        self.serial = secrets.randbits(32)
        self._sequence = 0

    def pages(self, packets: list[tuple[bytes, int]], flags: int = 0) -> bytes:
        """Pages holding (packet, granule after it) in order; EOS goes on the last page."""
        out = []
        start = 0
        while start < len(packets):
            lacing = bytearray()
            end = start
            while end < len(packets):  # at most 255 lacing values a page
                size = len(packets[end][0])
                values = b"\xff" * (size // 255) + bytes((size % 255,))
                if end > start and len(lacing) + len(values) > 255:
                    break
                lacing += values
                end += 1
            last = end == len(packets)
            page_flags = flags if last else flags & ~self.EOS
            body = [data for data, _ in packets[start:end]]
            out.append(self._page(body, bytes(lacing), packets[end - 1][1], page_flags))
            start = end
        return b"".join(out)

    def _page(self, packets: list[bytes], lacing: bytes, granule: int, flags: int) -> bytes:
        head = struct.pack(
            "<4sBBqIIIB", b"OggS", 0, flags, granule, self.serial, self._sequence, 0, len(lacing)
        )
        self._sequence += 1
        page = b"".join((head, lacing, *packets))
        return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


# --- stream framings ------------------------------------------------------------------------


def _packet_end(packet: av.Packet) -> int:
    """Where an encoded packet's samples end (PyAV types both fields Optional; an encoder's
    packets carry them)."""
    assert packet.pts is not None and packet.duration is not None
    return packet.pts + packet.duration


class _Framing:
    """How encoder packets go on the wire. This base is MP3's: its frames self-delimit."""

    def __init__(self, ctx: av.AudioCodecContext) -> None:
        self.rate = ctx.sample_rate

    def header(self) -> bytes:
        return b""

    def wrap(self, packets: list[av.Packet]) -> bytes:
        return b"".join(bytes(p) for p in packets)

    def finish(self, packets: list[av.Packet], end: int) -> bytes:
        """The last packets; `end` is where the real audio stops (in input samples)."""
        return self.wrap(packets)


class _Adts(_Framing):
    def __init__(self, ctx: av.AudioCodecContext) -> None:
        super().__init__(ctx)
        # Profile AAC LC (object type 2, written minus one), the rate's index, mono.
        self._fixed = (0xFF, 0xF1, 0x40 | _ADTS_RATE_INDEX[self.rate] << 2, 0x40)

    def wrap(self, packets: list[av.Packet]) -> bytes:
        out = bytearray()
        for packet in packets:
            size = packet.size + 7  # 13 bits, header included; then buffer fullness 0x7FF (VBR)
            b0, b1, b2, b3 = self._fixed
            out += bytes((b0, b1, b2, b3 | size >> 11, size >> 3 & 0xFF, (size & 7) << 5 | 0x1F))
            out += b"\xfc"  # fullness' low bits, one raw data block
            out += bytes(packet)
        return bytes(out)


class _Flac(_Framing):
    def __init__(self, ctx: av.AudioCodecContext) -> None:
        super().__init__(ctx)
        # The encoder's STREAMINFO leaves the total length 0: unknown, as a live stream's is.
        self._streaminfo = bytes(ctx.extradata or b"")[:34]

    def header(self) -> bytes:
        return b"fLaC" + b"\x80" + len(self._streaminfo).to_bytes(3, "big") + self._streaminfo


class _OggOpus(_Framing):
    def __init__(self, ctx: av.AudioCodecContext) -> None:
        super().__init__(ctx)
        self._head = bytes(ctx.extradata or b"")  # OpusHead, from libopus
        (self._pre_skip,) = struct.unpack_from("<H", self._head, 10)  # at 48 kHz
        self._ogg = _OggStream()
        self._published = 0  # the granule of the last page out

    def _granule(self, end: int) -> int:
        # Granules count 48 kHz samples decoded, pre-skip included; Opus rates divide 48000.
        return end * (48000 // self.rate) + self._pre_skip

    def header(self) -> bytes:
        vendor = b"voxline"
        tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
        return self._ogg.pages([(self._head, 0)], _OggStream.BOS) + self._ogg.pages([(tags, 0)])

    def wrap(self, packets: list[av.Packet], flags: int = 0, end: int | None = None) -> bytes:
        paged = [(bytes(p), self._granule(_packet_end(p))) for p in packets]
        if end is not None:
            # End trimming: the last granule drops the padding, but never below the page
            # before (granules do not go back; that audio is out already).
            last = paged[-2][1] if len(paged) > 1 else self._published
            paged[-1] = (paged[-1][0], max(self._granule(end), last))
        self._published = paged[-1][1]
        return self._ogg.pages(paged, flags)

    def finish(self, packets: list[av.Packet], end: int) -> bytes:
        return self.wrap(packets, _OggStream.EOS, end)


_FRAMINGS: dict[str, type[_Framing]] = {
    "mp3": _Framing,
    "opus": _OggOpus,
    "aac": _Adts,
    "flac": _Flac,
}


def _open_encoder(fmt: str, rate: int, *, stream: bool) -> av.AudioCodecContext:
    codec = _codec(fmt)
    ctx = av.CodecContext.create(codec.name, "w")
    assert isinstance(ctx, av.AudioCodecContext)  # an audio encoder's
    _configure(ctx, fmt, rate, stream=stream)
    ctx.open()
    return ctx


def _configure(ctx: av.AudioCodecContext, fmt: str, rate: int, *, stream: bool) -> None:
    codec = _codec(fmt)
    ctx.sample_rate = rate
    ctx.layout = "mono"
    ctx.format = codec.sample_fmt
    ctx.time_base = Fraction(1, rate)
    ctx.bit_rate = codec.bit_rate(rate)
    if stream:
        options = dict(codec.stream_options)
        if fmt == "flac":
            options["frame_size"] = str(rate // 50)
        ctx.options = options


def _frame(samples: np.ndarray, fmt: str, rate: int, pts: int) -> av.AudioFrame:
    if fmt == "fltp":
        data = samples.astype(np.float32)
        data *= 1 / 32768
    else:
        data = samples
    frame = av.AudioFrame.from_ndarray(data.reshape(1, -1), format=fmt, layout="mono")
    frame.sample_rate = rate
    frame.pts = pts
    frame.time_base = Fraction(1, rate)
    return frame


class _CodecStream:
    """A compressed stream: whole codec frames to the encoder, the rest waits in a FIFO."""

    def __init__(self, fmt: str, rate: int) -> None:
        self.rate = rate
        self._ctx = _open_encoder(fmt, rate, stream=True)
        self._sample_fmt = _codec(fmt).sample_fmt
        self._frame_size = self._ctx.frame_size
        self._framing = _FRAMINGS[fmt](self._ctx)
        self._pending = np.zeros(0, dtype=np.int16)  # under one frame
        self._pts = 0  # samples handed to the encoder, padding included
        self._covered = 0  # where the packets so far end, in those samples
        self._end = 0  # where the audio fed so far ends, in those samples
        self.padded = 0  # silence between sentences (a stream's end pads uncounted)

    def header(self) -> bytes:
        return self._framing.header()

    def encode(self, samples: np.ndarray) -> bytes:
        if self._pending.size:
            samples = np.concatenate((self._pending, samples))
        whole = len(samples) - len(samples) % self._frame_size
        packets = self._feed(samples[:whole]) if whole else []
        self._pending = samples[whole:].copy()  # a copy: the caller's buffer may change
        self._end = self._pts + len(self._pending)
        return self._framing.wrap(packets) if packets else b""

    def end_sentence(self) -> bytes:
        start = self._pts
        packets, end = self._drain()
        if self._pts != start:
            self.padded += self._pts - end
        return self._framing.wrap(packets) if packets else b""

    def close(self) -> bytes:
        packets, end = self._drain()
        if not packets and isinstance(self._framing, _OggOpus):
            # Ogg needs an EOS page, and pages need a packet: one frame of silence, which
            # end trimming then drops again.
            packets = self._feed(np.zeros(self._frame_size, dtype=np.int16))
        return self._framing.finish(packets, end) if packets else b""

    def _feed(self, samples: np.ndarray) -> list[av.Packet]:
        # PyAV splits a frame of several codec frames in C; whole frames pass straight on.
        frame = _frame(samples, self._sample_fmt, self.rate, self._pts)
        self._pts += len(samples)
        packets = self._ctx.encode(frame)
        if packets:
            self._covered = _packet_end(packets[-1])
        return packets

    def _drain(self) -> tuple[list[av.Packet], int]:
        """Silence until the packets carry every sample fed so far; returns those packets
        and the end of the real audio."""
        end = self._end
        packets: list[av.Packet] = []
        if self._covered >= end:
            return packets, end
        pad = np.zeros(self._frame_size - len(self._pending), dtype=np.int16)
        packets += self._feed(np.concatenate((self._pending, pad)))
        self._pending = self._pending[:0]
        silence = np.zeros(self._frame_size, dtype=np.int16)
        while self._covered < end:  # the encoder's delay and lookahead
            packets += self._feed(silence)
        return packets, end


class StreamEncoder:
    """ONE continuous stream of `fmt` for a whole connection, fed s16le mono PCM at `rate`.

    Compressed formats give one Ogg Opus logical stream, one MP3, ADTS AAC or FLAC stream;
    wav is a header of unknown length then PCM; pcm passes through; mulaw/alaw are G.711.
    `encode()` returns the bytes ready so far; `end_sentence()` pads the partial codec frame
    with silence and drains the encoder, so that everything fed so far is decodable from the
    bytes returned so far while the stream goes on; `close()` ends the stream.

    `padded_samples` counts the silence `end_sentence()` added so far: it is part of the
    decoded timeline, ahead of the next sentence. (What `close()` pads is past the last
    sample: Ogg Opus trims it, the others play it as trailing silence.) Decoders also see the
    codec's start delay, unless the format signals it: Ogg Opus does, while MP3 (1105
    samples) and ADTS (1024) streams cannot.
    """

    def __init__(self, fmt: str, rate: int) -> None:
        if problem := check_rate(fmt, rate):
            raise ValueError(problem)
        self.fmt = fmt
        self.rate = rate
        self._codec = _CodecStream(fmt, rate) if fmt in COMPRESSED else None
        self._started = False
        self._closed = False

    @property
    def padded_samples(self) -> int:
        return self._codec.padded if self._codec else 0

    def _start(self) -> bytes:
        if self._closed:
            raise RuntimeError("StreamEncoder is closed")
        if self._started:
            return b""
        self._started = True
        if self._codec:
            return self._codec.header()
        return wav_stream_header(self.rate) if self.fmt == "wav" else b""

    def encode(self, pcm: bytes) -> bytes:
        samples = _samples(pcm)
        head = self._start()
        if self._codec:
            return head + self._codec.encode(samples)
        if self.fmt == "mulaw":
            return head + pcm16_to_mulaw(samples)
        if self.fmt == "alaw":
            return head + pcm16_to_alaw(samples)
        return head + bytes(pcm)

    def end_sentence(self) -> bytes:
        head = self._start()
        return head + self._codec.end_sentence() if self._codec else head

    def close(self) -> bytes:
        if self._closed:
            return b""
        head = self._start()
        self._closed = True
        return head + self._codec.close() if self._codec else head


def encode_file(fmt: str, pcm: bytes, rate: int) -> bytes:
    """`pcm` (s16le mono at `rate`) as one complete, standalone file of `fmt`. (An empty
    `pcm` makes an empty file, or one of headers only, which some demuxers refuse.)"""
    if problem := check_rate(fmt, rate):
        raise ValueError(problem)
    samples = _samples(pcm)
    if fmt == "wav":
        return wav_bytes(bytes(pcm), rate)
    if fmt == "mulaw":
        return pcm16_to_mulaw(samples)
    if fmt == "alaw":
        return pcm16_to_alaw(samples)
    if fmt == "pcm":
        return bytes(pcm)
    codec = _codec(fmt)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=codec.container, container_options=codec.file_options) as out:
        stream = out.add_stream(codec.name, rate=rate)
        assert isinstance(stream, av.AudioStream)  # an audio encoder's
        _configure(stream.codec_context, fmt, rate, stream=False)
        out.start_encoding()  # the header, even with no audio to mux
        if samples.size:
            out.mux(stream.encode(_frame(samples, codec.sample_fmt, rate, 0)))
        out.mux(stream.encode(None))
    return buffer.getvalue()
