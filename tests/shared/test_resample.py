from __future__ import annotations

import numpy as np
import pytest
import soxr

from voxline.shared.audio.resample import StreamResampler

IN_RATE = 22050


def sine(freq: float, rate: int, seconds: float, amplitude: float = 12000.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq * t) * amplitude).astype(np.int16)


def peak_hz(pcm: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(pcm.astype(np.float64) * np.hanning(len(pcm))))
    return float(np.fft.rfftfreq(len(pcm), 1 / rate)[int(np.argmax(spectrum))])


def run_stream(resampler: StreamResampler, pcm: np.ndarray, sizes: list[int]) -> np.ndarray:
    parts, i, k = [], 0, 0
    while i < len(pcm):
        n = sizes[k % len(sizes)]
        parts.append(resampler.process(pcm[i : i + n]))
        i, k = i + n, k + 1
    parts.append(resampler.flush())
    assert all(p.dtype == np.int16 for p in parts)
    return np.concatenate(parts)


@pytest.mark.parametrize("out_rate", [8000, 16000, 48000])
def test_a_sine_keeps_its_frequency_and_duration(out_rate: int) -> None:
    tone = sine(1000, IN_RATE, 1.0)
    out = run_stream(StreamResampler(IN_RATE, out_rate), tone, [4410])
    assert abs(len(out) - out_rate) <= 2  # one second in, one second out
    assert abs(peak_hz(out, out_rate) - 1000) <= 2
    # The level survives too (HQ passband is flat at 1 kHz).
    mid = out[out_rate // 4 : 3 * out_rate // 4].astype(np.float64)
    assert np.sqrt(np.mean(mid**2)) == pytest.approx(12000 / np.sqrt(2), rel=0.02)


@pytest.mark.parametrize("out_rate", [8000, 16000, 48000])
def test_streaming_in_odd_chunks_matches_one_shot(out_rate: int) -> None:
    signal = sine(440, IN_RATE, 0.7) + sine(3100, IN_RATE, 0.7, 4000)
    one_shot = soxr.resample(signal, IN_RATE, out_rate, quality="HQ")
    streamed = run_stream(StreamResampler(IN_RATE, out_rate), signal, [1, 7, 333, 1001, 4097])
    assert len(streamed) == len(one_shot)
    assert np.abs(streamed.astype(np.int32) - one_shot).max() <= 4


def test_equal_rates_pass_through() -> None:
    r = StreamResampler(24000, 24000)
    pcm = np.array([1, 2, 3, -4], dtype=np.int16)
    assert np.array_equal(r.process(pcm), pcm)
    assert r.flush().size == 0


def test_flush_ends_the_stream() -> None:
    r = StreamResampler(24000, 8000)
    r.process(sine(500, 24000, 0.1))
    r.flush()
    with pytest.raises(RuntimeError):
        r.process(np.zeros(10, dtype=np.int16))


def test_rejects_bad_rates_and_dtypes() -> None:
    with pytest.raises(ValueError):
        StreamResampler(0, 8000)
    with pytest.raises(TypeError):
        StreamResampler(16000, 8000).process(np.zeros(10, dtype=np.float32))


def test_output_is_deterministic() -> None:
    # soxr dithers int16 output; the resampler must not, or identical jobs differ in bytes.
    signal = sine(700, IN_RATE, 0.3)
    runs = [run_stream(StreamResampler(IN_RATE, 8000), signal, [999]) for _ in range(4)]
    assert all(np.array_equal(runs[0], other) for other in runs[1:])


def test_full_scale_overshoot_clips_instead_of_wrapping() -> None:
    square = np.where(sine(200, IN_RATE, 0.2) >= 0, 32767, -32768).astype(np.int16)
    out = run_stream(StreamResampler(IN_RATE, 16000), square, [512])
    exact = soxr.resample(square.astype(np.float32), IN_RATE, 16000, quality="HQ")
    over, under = exact > 32767.5, exact < -32768.5
    assert over.any() and under.any(), "the filter rings past full scale"
    # Wrapping would turn those samples into large values of the opposite sign.
    assert np.all(out[over] == 32767) and np.all(out[under] == -32768)
