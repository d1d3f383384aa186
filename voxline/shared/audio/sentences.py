"""The per-sentence encoder a worker feeds engine chunks through.

These are the formats a worker encodes itself (formats.py: not `compressed`); the compressed
ones and a connection-long stream of any format are in `codecs.py`.
"""

from __future__ import annotations

import numpy as np

from voxline.shared.audio.formats import HEADERLESS, get
from voxline.shared.audio.g711 import pcm16_to_alaw, pcm16_to_mulaw
from voxline.shared.audio.resample import StreamResampler
from voxline.shared.audio.wav import wav_bytes


def _encode_samples(fmt: str, pcm: np.ndarray) -> bytes:
    if fmt == "mulaw":
        return pcm16_to_mulaw(pcm)
    if fmt == "alaw":
        return pcm16_to_alaw(pcm)
    return pcm.astype("<i2", copy=False).tobytes()  # s16le: always whole samples


class SentenceEncoder:
    """Resamples and encodes ONE sentence's audio.

    stream=True: each `encode()` returns the bytes ready so far (the resampler may hold back
    a few samples until `finish()`). stream=False: `encode()` buffers and returns b"", and
    `finish()` returns the sentence as one complete file or blob.
    """

    def __init__(self, fmt: str, in_rate: int, out_rate: int, *, stream: bool) -> None:
        if get(fmt).compressed:
            raise ValueError(f"{fmt} is encoded by the front end (shared.audio.codecs)")
        if stream and fmt not in HEADERLESS:
            raise ValueError(f"{fmt} cannot be streamed; use one of {sorted(HEADERLESS)}")
        self.fmt = fmt
        self.out_rate = out_rate
        self.stream = stream
        self._resampler = StreamResampler(in_rate, out_rate)
        self._buffer: list[np.ndarray] = []
        self._finished = False

    def encode(self, pcm: np.ndarray) -> bytes:
        if self._finished:
            raise RuntimeError("SentenceEncoder already finished")
        out = self._resampler.process(pcm)
        if not self.stream:
            if out.size:
                self._buffer.append(out)
            return b""
        return _encode_samples(self.fmt, out) if out.size else b""

    def finish(self) -> bytes:
        if self._finished:
            raise RuntimeError("SentenceEncoder already finished")
        self._finished = True
        tail = self._resampler.flush()
        if self.stream:
            return _encode_samples(self.fmt, tail) if tail.size else b""
        whole = np.concatenate([*self._buffer, tail]) if self._buffer else tail
        self._buffer.clear()
        if self.fmt == "wav":
            return wav_bytes(_encode_samples("pcm", whole), self.out_rate)
        return _encode_samples(self.fmt, whole)
