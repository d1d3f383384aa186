"""What the front end pays to encode a connection's audio: CPU per second of audio for each
streamed format, beside PCM passthrough (the baseline) in the same run.

    python bench/encoders.py [--seconds 20] [--rate 24000] [--chunk-ms 80] [--sentence-s 2]

Speech-like input (espeak when it loads, else a chirp) is fed in chunks as the relay feeds it,
with a sentence end every --sentence-s. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from voxline.shared.audio.codecs import StreamEncoder  # noqa: E402
from voxline.shared.audio.formats import ALL_FORMATS, check_rate  # noqa: E402
from voxline.shared.audio.resample import StreamResampler  # noqa: E402


async def _espeak(text: str) -> tuple[np.ndarray, int]:
    from voxline.worker.engines.base import Cancellation, SynthesisRequest  # noqa: PLC0415
    from voxline.worker.engines.espeak import EspeakEngine  # noqa: PLC0415

    engine = EspeakEngine()
    await engine.start()
    request = SynthesisRequest(text=text, voice=engine.info.default_voice)
    chunks = [c.pcm async for c in engine.synthesize(request, Cancellation())]
    return np.concatenate(chunks), engine.info.sample_rate


def _speech(seconds: float, rate: int) -> np.ndarray:
    """Real speech from the embedded voice, looped to length; a chirp if it cannot load."""
    try:
        pcm, native = asyncio.run(_espeak("The quick brown fox jumps over the lazy dog. " * 4))
        pcm = np.concatenate([StreamResampler(native, rate).process(pcm)])
    except Exception as exc:  # the bench still runs, on a synthetic signal, and says so
        print(f"espeak unavailable ({exc}); using a chirp", file=sys.stderr)
        t = np.arange(int(rate * 5)) / rate
        pcm = (np.sin(2 * np.pi * (200 + 300 * t) * t) * 12000).astype(np.int16)
    reps = int(np.ceil(seconds * rate / pcm.size))
    return np.tile(pcm, reps)[: int(seconds * rate)].astype("<i2")


def _cpu_ms_per_audio_s(fmt: str, pcm: np.ndarray, rate: int, chunk: int, sentence: int) -> float:
    encoder = StreamEncoder(fmt, rate)
    start = time.process_time()
    for offset in range(0, pcm.size, chunk):
        encoder.encode(pcm[offset : offset + chunk].tobytes())
        if (offset + chunk) % sentence < chunk:
            encoder.end_sentence()
    encoder.close()
    return (time.process_time() - start) * 1000 / (pcm.size / rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per format (20)")
    parser.add_argument("--rate", type=int, default=24000, help="sample rate (24000)")
    parser.add_argument("--chunk-ms", type=int, default=80, help="relay chunk (80 ms)")
    parser.add_argument("--sentence-s", type=float, default=2.0, help="sentence length (2 s)")
    args = parser.parse_args()
    pcm = _speech(args.seconds, args.rate)
    chunk = args.rate * args.chunk_ms // 1000
    sentence = int(args.rate * args.sentence_s)
    results: dict[str, float] = {}
    for fmt in ALL_FORMATS:
        if check_rate(fmt, args.rate):
            print(f"skipping {fmt}: {check_rate(fmt, args.rate)}", file=sys.stderr)
            continue
        print(f"encoding {args.seconds:g} s as {fmt}…", file=sys.stderr)
        results[fmt] = round(_cpu_ms_per_audio_s(fmt, pcm, args.rate, chunk, sentence), 3)
    print("| format | CPU ms per s of audio | x PCM passthrough |")
    print("|---|---|---|")
    for fmt, cost in results.items():
        print(f"| {fmt} | {cost} | {cost / max(results['pcm'], 1e-6):.0f} |")
    print(json.dumps({"rate": args.rate, "cpu_ms_per_audio_s": results}))


if __name__ == "__main__":
    main()
