"""Client audio formats: every stream decoded back (with PyAV) and compared with what went in."""

from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest
import soxr
from hypothesis import given, settings
from hypothesis import strategies as st

import voxline.shared.audio.codecs as codecs
from voxline.shared.audio.codecs import StreamEncoder, encode_file
from voxline.shared.audio.formats import ALL_FORMATS, COMPRESSED, default_rate
from voxline.shared.audio.g711 import alaw_to_pcm16, mulaw_to_pcm16, pcm16_to_alaw, pcm16_to_mulaw
from voxline.shared.audio.wav import parse_wav, wav_stream_header

# The start delay each decoder (PyAV's) shows in a live stream: Ogg Opus signals its
# pre-skip, FLAC has none, MP3 (LAME's 576 + 529) and ADTS AAC (one frame) cannot say.
LEAD = {"opus": 0, "mp3": 1105, "aac": 1024, "flac": 0}
# Most silence one sentence end may add (samples at `rate`): the rest of the codec frame,
# then whole frames until the encoder's lag (its delay plus lookahead) is out.
MAX_PAD = {
    "opus": lambda rate: rate // 50 + rate * 65 // 10000,  # 20 ms frames, 6.5 ms lag
    "mp3": lambda rate: 1105 + 2 * (1152 if rate >= 32000 else 576),  # lag 1105 + a frame
    "aac": lambda rate: 1024 + 2048,
    "flac": lambda rate: rate // 50,  # 20 ms blocks, no lag
}
# Lossy codecs at our bit rates keep a chirp's sound; FLAC keeps every bit. The lowest seen
# is 0.96: AAC at 16 kHz (48 kbps), on a sentence's last 40 ms. Wrong audio scores near 0.
MIN_SPECTRAL_CORR = 0.95
MIN_CORR = 0.95

CASES = [
    ("opus", 24000),
    ("opus", 8000),
    ("opus", 48000),
    ("mp3", 24000),  # MPEG-2, 576-sample frames
    ("mp3", 44100),  # MPEG-1, 1152
    ("mp3", 8000),  # MPEG-2.5
    ("aac", 24000),
    ("aac", 16000),
    ("flac", 24000),
    ("flac", 22050),  # 441-sample blocks
]


def chirp(rate: int, seconds: float, f0: float, f1: float) -> np.ndarray:
    """A sweep at half scale: a sharp cross-correlation peak, so alignment is unambiguous."""
    n = int(rate * seconds)
    t = np.arange(n) / rate
    phase = 2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * seconds))
    return np.rint(0.5 * 32767 * np.sin(phase)).astype(np.int16)


def sentences(rate: int) -> list[np.ndarray]:
    # Lengths that are no multiple of any codec frame.
    return [
        chirp(rate, 0.371, 300, 3000),
        chirp(rate, 0.2333, 2500, 500),
        chirp(rate, 0.41, 700, 1900),
    ]


def decode(data: bytes, rate: int, demuxer: str | None = None) -> np.ndarray:
    """All of `data` decoded as ONE audio stream, at `rate`, scaled like int16. (A stream
    of a frame or two needs its `demuxer` named: probing wants more.)"""
    with av.open(io.BytesIO(data), format=demuxer) as container:
        assert len(container.streams) == 1
        stream = container.streams.audio[0]
        assert stream.channels == 1
        decoder = stream.codec_context
        if decoder.name == "opus":
            # libopus, the reference decoder (browsers', opus-tools'): libavcodec's own Opus
            # decoder renders SILK frames differently, pure tones badly (2.5x overshoot).
            decoder = av.CodecContext.create("libopus", "r")
            decoder.extradata = stream.codec_context.extradata
        frames = [f for packet in container.demux(stream) for f in decoder.decode(packet)]
    if not frames:
        return np.zeros(0)
    decoded_rate = frames[0].sample_rate
    pcm = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
    # Decoders give float (-1..1), int16 or int32 samples: scale all like int16.
    scale = 32768.0 if pcm.dtype.kind == "f" else 32768.0 / (np.iinfo(pcm.dtype).max + 1)
    pcm = pcm.astype(np.float64) * scale
    if decoded_rate != rate:
        assert decoded_rate == 48000  # Opus decodes at 48 kHz
        pcm = soxr.resample(pcm, 48000, rate)
    return pcm


def corr(a: np.ndarray, b: np.ndarray) -> float:
    assert len(a) == len(b) > 0
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def spectral_corr(a: np.ndarray, b: np.ndarray, rate: int) -> float:
    """Correlation of 10 ms magnitude spectra: blind to phase, which Opus's SILK layer does
    not keep, but not to what is heard when."""
    n = rate // 100
    frames = len(a) // n
    assert len(a) == len(b) and frames > 0
    window = np.hanning(n)

    def spectra(x: np.ndarray) -> np.ndarray:
        return np.abs(np.fft.rfft(x[: frames * n].reshape(frames, n) * window, axis=1))

    return corr(spectra(a).ravel(), spectra(b).ravel())


def assert_sounds_like(fmt: str, decoded: np.ndarray, source: np.ndarray, rate: int) -> None:
    if fmt == "flac":
        assert np.array_equal(decoded, source)
        return
    assert spectral_corr(decoded, source, rate) > MIN_SPECTRAL_CORR
    if fmt != "opus":  # MP3 and AAC keep the waveform too
        assert corr(decoded, source) > MIN_CORR


def random_chunks(pcm: np.ndarray, rng: np.random.Generator) -> list[bytes]:
    """s16le chunks of every kind of size: 1 sample, odd counts, under and over a frame."""
    out = []
    pos = 0
    while pos < len(pcm):
        kind = rng.integers(4)
        n = (1, int(rng.integers(1, 8)) * 2 + 1, int(rng.integers(1, 700)), 1500)[kind]
        out.append(pcm[pos : pos + n].tobytes())
        pos += n
    return out


def lag_of(decoded: np.ndarray, reference: np.ndarray, limit: int) -> int:
    scores = np.correlate(decoded[: len(reference) + limit], reference.astype(np.float64), "valid")
    return int(np.argmax(scores))


@pytest.mark.parametrize(("fmt", "rate"), CASES)
def test_one_stream_across_sentences_decodes_to_what_was_fed(fmt: str, rate: int) -> None:
    rng = np.random.default_rng(rate + len(fmt))
    parts = sentences(rate)
    encoder = StreamEncoder(fmt, rate)
    out: list[bytes] = []
    timeline: list[np.ndarray] = []  # what the decoder should play: sentences, then padding
    pads = []
    for sentence in parts:
        out += [encoder.encode(chunk) for chunk in random_chunks(sentence, rng)]
        before = encoder.padded_samples
        timeline.append(sentence)
        sentence_end = sum(map(len, timeline))
        out.append(encoder.end_sentence())
        pads.append(encoder.padded_samples - before)
        timeline.append(np.zeros(pads[-1], dtype=np.int16))

        # The latency property: what is out so far plays every sample fed so far.
        so_far = decode(b"".join(out), rate)
        assert len(so_far) - LEAD[fmt] >= sentence_end
        tail = rate // 25  # 40 ms
        played = so_far[LEAD[fmt] + sentence_end - tail : LEAD[fmt] + sentence_end]
        assert_sounds_like(fmt, played, sentence[-tail:], rate)
    out.append(encoder.close())
    assert encoder.close() == b""

    for pad in pads:
        assert 0 <= pad <= MAX_PAD[fmt](rate)
    expected = np.concatenate(timeline)
    fed = sum(map(len, parts))
    assert len(expected) == fed + encoder.padded_samples
    whole = decode(b"".join(out), rate)
    # The alignment is the codec's known delay, not a guess.
    assert lag_of(whole, parts[0], 3000) == LEAD[fmt]
    played = whole[LEAD[fmt] :]
    # Duration: everything fed and padded, less up to the last sentence end's padding: the
    # encoder's lookahead may still hold part of it when the stream ends.
    assert len(expected) - pads[-1] <= len(played) <= len(expected)
    start = 0
    for sentence, pad in zip(parts, pads, strict=True):
        assert_sounds_like(fmt, played[start : start + len(sentence)], sentence, rate)
        start += len(sentence) + pad
    if fmt == "flac":
        assert np.array_equal(played, expected[: len(played)])


def feed(encoder: StreamEncoder, pcm: np.ndarray, cuts: list[int], ends: set[int]) -> bytes:
    """`pcm` cut after each of `cuts` samples, a sentence ending after the cuts in `ends`."""
    out = []
    pos = 0
    for i, cut in enumerate(cuts):
        out.append(encoder.encode(pcm[pos : pos + cut].tobytes()))
        pos += cut
        if i in ends:
            out.append(encoder.end_sentence())
    out += [encoder.encode(pcm[pos:].tobytes()), encoder.close()]
    return b"".join(out)


@settings(max_examples=8, deadline=None)
@given(
    fmt=st.sampled_from(COMPRESSED),
    cuts=st.lists(st.integers(0, 2500), min_size=1, max_size=12),
    ends=st.sets(st.integers(0, 11), max_size=3),
)
def test_chunking_never_changes_the_audio(fmt: str, cuts: list[int], ends: set[int]) -> None:
    rate = 16000
    pcm = chirp(rate, 0.5, 200, 2000)
    chunked = StreamEncoder(fmt, rate)
    got = decode(feed(chunked, pcm, cuts, ends), rate)
    # The same sentence ends, each sentence fed in one piece.
    marks = [min(sum(cuts[: i + 1]), len(pcm)) for i in sorted(ends) if i < len(cuts)]
    whole = StreamEncoder(fmt, rate)
    pieces = list(np.diff([0, *marks]))
    expected = decode(feed(whole, pcm, pieces, set(range(len(pieces)))), rate)
    assert chunked.padded_samples == whole.padded_samples
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("fmt", COMPRESSED)
def test_bytes_come_out_as_frames_complete(fmt: str) -> None:
    # Nothing is held back beyond the encoder's own lag: no muxer buffering pages or frames.
    rate = 24000
    pcm = chirp(rate, 1.0, 400, 2400)
    encoder = StreamEncoder(fmt, rate)
    out = b""
    for start in range(0, len(pcm), rate // 20):
        out += encoder.encode(pcm[start : start + rate // 20].tobytes())
        fed = min(start + rate // 20, len(pcm))
        if fed > MAX_PAD[fmt](rate):
            demuxer = {"opus": "ogg", "aac": "aac"}.get(fmt, fmt)
            assert len(decode(out, rate, demuxer)) - LEAD[fmt] >= fed - MAX_PAD[fmt](rate)


def test_opus_end_trimming_drops_the_final_padding() -> None:
    rate = 16000
    first, last = chirp(rate, 0.3, 300, 900), chirp(rate, 0.1234, 900, 300)
    encoder = StreamEncoder("opus", rate)
    data = encoder.encode(first.tobytes()) + encoder.end_sentence()
    pad = encoder.padded_samples
    data += encoder.encode(last.tobytes()) + encoder.close()
    decoded = decode(data, rate)
    assert len(decoded) == len(first) + pad + len(last)  # exact: the last granule trims
    assert_sounds_like("opus", decoded[-len(last) :], last, rate)


# --- what the bytes are made of ----------------------------------------------------------


def _reference_ogg_crc(data: bytes) -> int:
    crc = 0
    for byte in data:  # bitwise, straight from the spec: no table, no zlib
        crc ^= byte << 24
        for _ in range(8):
            crc = (crc << 1) ^ 0x04C11DB7 if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def ogg_pages(data: bytes) -> list[dict]:
    pages = []
    pos = 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OggS"
        version, flags, granule, serial, sequence, crc, count = struct.unpack_from(
            "<BBqIIIB", data, pos + 4
        )
        lacing = data[pos + 27 : pos + 27 + count]
        end = pos + 27 + count + sum(lacing)
        assert end <= len(data)
        blank = data[pos:end][:22] + b"\0\0\0\0" + data[pos:end][26:]
        assert version == 0 and crc == _reference_ogg_crc(blank)
        body = data[pos + 27 + count : end]
        packets, start, size = [], 0, 0
        for value in lacing:
            size += value
            if value < 255:
                packets.append(body[start : start + size])
                start, size = start + size, 0
        assert size == 0  # no packet continues onto a later page
        pages.append(
            dict(flags=flags, granule=granule, serial=serial, seq=sequence, packets=packets)
        )
        pos = end
    return pages


def test_opus_is_one_ogg_logical_stream_paged_as_it_goes() -> None:
    rate = 24000
    rng = np.random.default_rng(7)
    encoder = StreamEncoder("opus", rate)
    pieces = []
    for sentence in sentences(rate):
        pieces += [encoder.encode(chunk) for chunk in random_chunks(sentence, rng)]
        pieces.append(encoder.end_sentence())
    pieces.append(encoder.close())
    for piece in pieces:
        ogg_pages(piece)  # every piece is whole pages: a sentence end never waits in a page
    pages = ogg_pages(b"".join(pieces))
    assert len({page["serial"] for page in pages}) == 1
    assert [page["seq"] for page in pages] == list(range(len(pages)))
    assert [page["flags"] for page in pages] == [2] + [0] * (len(pages) - 2) + [4]
    assert pages[0]["packets"][0][:8] == b"OpusHead" and len(pages[0]["packets"]) == 1
    assert pages[1]["packets"][0][:8] == b"OpusTags" and len(pages[1]["packets"]) == 1
    granules = [page["granule"] for page in pages[2:]]
    assert granules == sorted(granules) and granules[0] > 0


def test_mp3_stream_is_bare_frames() -> None:
    encoder = StreamEncoder("mp3", 24000)
    pcm = chirp(24000, 0.5, 300, 3000)
    pieces = [encoder.encode(pcm[:7001].tobytes()), encoder.end_sentence()]
    pieces += [encoder.encode(pcm[7001:].tobytes()), encoder.end_sentence(), encoder.close()]
    data = b"".join(pieces)
    assert data[0] == 0xFF and data[1] & 0xE0 == 0xE0  # a frame sync first: no ID3 tag
    for tag in (b"ID3", b"Xing", b"Info", b"TAG"):
        assert tag not in data  # no header or trailer, at the start or mid-stream
    for piece in filter(None, pieces):
        assert piece[0] == 0xFF and piece[1] & 0xE0 == 0xE0


def test_aac_stream_is_a_chain_of_adts_frames() -> None:
    rate = 16000
    encoder = StreamEncoder("aac", rate)
    pcm = chirp(rate, 0.5, 300, 3000)
    pieces = [encoder.encode(pcm[:3333].tobytes()), encoder.end_sentence()]
    pieces += [encoder.encode(pcm[3333:].tobytes()), encoder.close()]
    for piece in filter(None, pieces):  # each piece is whole frames
        pos = 0
        while pos < len(piece):
            header = piece[pos : pos + 7]
            assert header[0] == 0xFF and header[1] == 0xF1  # sync, MPEG-4, no CRC
            assert header[2] >> 6 == 1  # AAC LC
            assert header[2] >> 2 & 0xF == 8  # 16000 Hz
            assert (header[2] & 1) << 2 | header[3] >> 6 == 1  # mono
            pos += (header[3] & 3) << 11 | header[4] << 3 | header[5] >> 5
        assert pos == len(piece)


def test_flac_stream_header_has_an_unknown_length() -> None:
    rate = 22050
    encoder = StreamEncoder("flac", rate)
    data = encoder.encode(chirp(rate, 0.1, 300, 3000).tobytes()) + encoder.close()
    assert data[:4] == b"fLaC" and data[4] == 0x80  # STREAMINFO, the only metadata block
    info = data[8:42]
    min_block, max_block = struct.unpack_from(">HH", info)
    assert min_block == max_block == rate // 50
    packed = int.from_bytes(info[10:18], "big")
    assert packed >> 44 == rate  # sample rate
    assert packed & (1 << 36) - 1 == 0  # total samples: unknown
    assert len(decode(data, rate)) == 5 * (rate // 50)  # 0.1 s, padded to whole blocks


# --- whole files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [("opus", 24000), ("mp3", 22050), ("mp3", 48000), ("aac", 24000), ("flac", 16000)],
)
def test_encode_file_gives_a_standalone_file(fmt: str, rate: int) -> None:
    pcm = chirp(rate, 0.6173, 250, 3300)
    data = encode_file(fmt, pcm.tobytes(), rate)
    decoded = decode(data, rate)
    if fmt == "aac":
        # ADTS cannot say how much to trim: the encoder delay, then the last frame's padding.
        assert len(pcm) + 1024 <= len(decoded) < len(pcm) + 2048
        decoded = decoded[1024 : 1024 + len(pcm)]
    else:
        # Ogg's pre-skip and end granule, MP3's LAME tag, FLAC's STREAMINFO: exact.
        assert len(decoded) == len(pcm)
    assert_sounds_like(fmt, decoded, pcm, rate)
    magic = {"opus": b"OggS", "flac": b"fLaC", "mp3": b"\xff", "aac": b"\xff"}[fmt]
    assert data.startswith(magic)
    if fmt == "mp3":
        assert b"Xing" in data[:1500] or b"Info" in data[:1500]  # the gapless tag


# --- wav, pcm, G.711 ----------------------------------------------------------------------


def test_wav_stream_is_a_live_wav() -> None:
    rate = 16000
    pcm = chirp(rate, 0.3, 300, 3000)
    encoder = StreamEncoder("wav", rate)
    rng = np.random.default_rng(3)
    pieces = [encoder.encode(chunk) for chunk in random_chunks(pcm, rng)]
    pieces += [encoder.end_sentence(), encoder.close()]
    data = b"".join(pieces)
    assert data.startswith(wav_stream_header(rate)) and data.count(b"RIFF") == 1
    assert data[len(wav_stream_header(rate)) :] == pcm.tobytes()
    with wave.open(io.BytesIO(data)) as reader:
        assert (reader.getframerate(), reader.getnchannels(), reader.getsampwidth()) == (
            rate,
            1,
            2,
        )
        assert reader.readframes(1 << 30) == pcm.tobytes()
    assert np.array_equal(decode(data, rate), pcm)
    info = parse_wav(data)
    assert (info.sample_rate, info.frames) == (rate, pcm.tobytes())


def test_wav_stream_header() -> None:
    header = wav_stream_header(8000)
    assert len(header) == 44
    assert header[4:8] == header[40:44] == b"\xff\xff\xff\xff"  # RIFF and data sizes unknown
    assert StreamEncoder("wav", 8000).close() == header  # an empty stream is still a WAV
    with pytest.raises(ValueError):
        wav_stream_header(0)


def test_pcm_passes_through_and_wants_whole_samples() -> None:
    pcm = chirp(24000, 0.05, 300, 3000)
    encoder = StreamEncoder("pcm", 24000)
    assert encoder.encode(pcm.tobytes()) + encoder.end_sentence() + encoder.close() == pcm.tobytes()
    assert encode_file("pcm", pcm.tobytes(), 24000) == pcm.tobytes()
    for fmt in ALL_FORMATS:
        with pytest.raises(ValueError, match="whole number"):
            StreamEncoder(fmt, 48000).encode(b"\x00\x01\x02")
        with pytest.raises(ValueError, match="whole number"):
            encode_file(fmt, b"\x00", 48000)


@pytest.mark.parametrize(
    ("fmt", "encode", "decode_table", "codec"),
    [
        ("mulaw", pcm16_to_mulaw, mulaw_to_pcm16, "pcm_mulaw"),
        ("alaw", pcm16_to_alaw, alaw_to_pcm16, "pcm_alaw"),
    ],
)
def test_g711_at_telephony_rate(fmt, encode, decode_table, codec) -> None:  # type: ignore[no-untyped-def]
    rate = default_rate(fmt, 24000)
    assert rate == 8000
    pcm = chirp(rate, 0.5, 200, 3500)
    encoder = StreamEncoder(fmt, rate)
    rng = np.random.default_rng(5)
    data = b"".join(encoder.encode(chunk) for chunk in random_chunks(pcm, rng)) + encoder.close()
    assert data == encode(pcm) == encode_file(fmt, pcm.tobytes(), rate)
    # An independent decoder (libavcodec's) agrees with ours, and G.711 keeps ~38 dB SNR.
    decoder = av.CodecContext.create(codec, "r")
    decoder.sample_rate, decoder.layout = rate, "mono"
    frames = decoder.decode(av.Packet(data))
    decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    assert np.array_equal(decoded, decode_table(data))
    error = decoded.astype(np.float64) - pcm
    assert 10 * np.log10(np.sum(pcm.astype(np.float64) ** 2) / np.sum(error**2)) > 30


# --- rates, names, errors ------------------------------------------------------------------


def test_bad_rates_and_formats_raise() -> None:
    with pytest.raises(ValueError, match=r"opus encodes at 8000, 12000, 16000, 24000 or 48000 Hz"):
        StreamEncoder("opus", 22050)
    with pytest.raises(ValueError, match="aac encodes at"):
        StreamEncoder("aac", 7350)
    with pytest.raises(ValueError, match="unknown audio format 'vorbis'"):
        StreamEncoder("vorbis", 24000)
    with pytest.raises(ValueError, match="mp3 encodes at"):
        encode_file("mp3", b"", 20000)


@pytest.mark.parametrize("fmt", ALL_FORMATS)
def test_stream_lifecycle(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    opened = []
    real = codecs._open_encoder

    def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        opened.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(codecs, "_open_encoder", counting)
    encoder = StreamEncoder(fmt, 16000)
    pcm = chirp(16000, 0.2, 300, 3000).tobytes()
    for i in range(0, len(pcm), 202):
        encoder.encode(pcm[i : i + 202])
    encoder.end_sentence()
    padded = encoder.padded_samples
    assert encoder.end_sentence() == b"" and encoder.padded_samples == padded  # nothing new
    encoder.encode(pcm)
    encoder.close()
    assert len(opened) == (1 if fmt in COMPRESSED else 0)  # one encoder for the stream
    assert encoder.close() == b""
    with pytest.raises(RuntimeError):
        encoder.encode(pcm)
    with pytest.raises(RuntimeError):
        encoder.end_sentence()
