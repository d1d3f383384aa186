"""Test helpers: decode what voxline sent, and look at it."""

from __future__ import annotations

import io

import av
import numpy as np

from voxline.shared.audio.g711 import alaw_to_pcm16, mulaw_to_pcm16
from voxline.shared.config import Settings
from voxline.speech.splitter import SentenceSplitter
from voxline.worker.engines.base import Cancellation, SynthesisRequest
from voxline.worker.engines.tone import ToneEngine

# PyAV's demuxer names for the containers voxline writes.
CONTAINERS = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac", "wav": "wav"}


def decode(data: bytes, fmt: str, rate: int) -> tuple[np.ndarray, int]:
    """Mono float samples in -1..1 and their rate. Raw formats are read at `rate`; the
    others are demuxed as ONE stream, so a second stream or a broken page fails here."""
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768, rate
    if fmt in ("mulaw", "alaw"):
        pcm = (mulaw_to_pcm16 if fmt == "mulaw" else alaw_to_pcm16)(data)
        return pcm.astype(np.float32) / 32768, rate
    with av.open(io.BytesIO(data), format=CONTAINERS[fmt]) as container:
        (stream,) = container.streams.audio
        # libopus, as browsers use: ffmpeg's own Opus decoder gets some speech-mode frames wrong.
        codec = stream.codec_context
        if fmt == "opus":
            codec = av.CodecContext.create("libopus", "r")
            codec.extradata = stream.codec_context.extradata  # the OpusHead: mono, pre-skip
        # demux() ends with an empty packet, which flushes the decoder.
        frames = (f for packet in container.demux(stream) for f in codec.decode(packet))
        parts = [frame.to_ndarray().astype(np.float32).reshape(-1) for frame in frames]
        out_rate = codec.sample_rate or stream.codec_context.sample_rate
    samples = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if samples.size and np.abs(samples).max() > 2:  # integer sample formats
        samples = samples / 32768
    return samples, out_rate


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(samples.size)))
    return float(np.fft.rfftfreq(samples.size, 1 / rate)[int(np.argmax(spectrum))])


def numbered_text(sentences: int) -> str:
    """A long text of sentences whose lengths differ from one to the next, so that any
    reordering of them changes the audio."""
    return " ".join(
        f"Line {i} of the long read says {'la ' * (i % 7)}hi." for i in range(sentences)
    )


async def tone_pcm(text: str, max_sentence_chars: int = Settings().max_sentence_chars) -> bytes:
    """What a correct batch job of `text` makes on the default tone engine: each sentence's
    PCM (s16le, 24 kHz), in text order."""
    splitter = SentenceSplitter(max_sentence_chars=max_sentence_chars)
    engine = ToneEngine()
    out = bytearray()
    for sentence in [*splitter.feed(text), *splitter.flush()]:
        request = SynthesisRequest(text=sentence, voice="tone-mid")
        async for chunk in engine.synthesize(request, Cancellation()):
            out += np.asarray(chunk.pcm, dtype="<i2").tobytes()
    return bytes(out)
