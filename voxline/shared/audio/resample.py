"""Streaming sample-rate conversion of int16 mono PCM."""

from __future__ import annotations

import numpy as np
import soxr


def _to_int16(samples: np.ndarray) -> np.ndarray:
    # The filter's overshoot can exceed full scale: clip rather than wrap.
    return np.clip(np.rint(samples), -32768, 32767).astype(np.int16)


class StreamResampler:
    """Resamples a stream chunk by chunk with soxr's stateful filter.

    The filter carries state across chunks, so concatenated output matches a one-shot
    resample of the whole signal; `flush()` drains the filter's delay line at the end.
    Equal rates pass through untouched (no filter, no delay).
    """

    def __init__(self, in_rate: int, out_rate: int) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise ValueError(f"sample rates must be positive, got {in_rate} -> {out_rate}")
        self.in_rate = in_rate
        self.out_rate = out_rate
        self._stream: soxr.ResampleStream | None = None
        if in_rate != out_rate:
            # float32, not int16: soxr dithers its int16 output, which would make the same
            # input give different bytes from run to run.
            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        self._flushed = False

    def process(self, pcm: np.ndarray) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("StreamResampler already flushed")
        pcm = np.asarray(pcm)
        if pcm.dtype != np.int16:
            raise TypeError(f"StreamResampler takes int16 PCM, got {pcm.dtype}")
        pcm = pcm.reshape(-1)
        if self._stream is None:
            return pcm
        return _to_int16(self._stream.resample_chunk(pcm.astype(np.float32), last=False))

    def flush(self) -> np.ndarray:
        if self._flushed:
            raise RuntimeError("StreamResampler already flushed")
        self._flushed = True
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        return _to_int16(self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
