"""Hear the voices: word error rate of each engine voice on fixed English sentences, in one run.

Each sentence is synthesized by the engine (espeak's default English voice, then every
kokoro voice), resampled to 16 kHz and transcribed by the offline recognizer the tests use
(pocketsphinx, its bundled US-English model). Word error rate is the word-level edit
distance over the reference's words, summed over all sentences. Also per voice: seconds of
audio per second of synthesis (one sentence after another, this machine).

    python bench/voices.py            # ~2 minutes on 2 CPU cores; last line is JSON
    python bench/voices.py --voices jm_kumo,jf_alpha

The recognizer is a weak listener (its model is small and old), so the figures compare voices
with one another, not with a human; a lower rate is better.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import soxr
from pocketsphinx import Decoder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from worker.engines import load_engine  # noqa: E402
from worker.engines.base import Cancellation, Engine, SynthesisRequest  # noqa: E402

SENTENCES = [
    "The weather is nice today.",
    "Please call me back after lunch.",
    "I would like a cup of coffee.",
    "The train leaves at seven in the morning.",
    "Can you help me find my keys?",
    "We are going to the park this afternoon.",
    "Thank you very much for your help.",
    "The meeting has been moved to Friday.",
    "She reads a book every night before bed.",
    "How much does this jacket cost?",
    "Turn left at the next traffic light.",
    "My phone battery is almost empty.",
    "The children are playing in the garden.",
    "Do you know where the station is?",
    "It is going to rain later this evening.",
    "I have never been to that city before.",
    "Your order will arrive on Monday.",
    "The restaurant opens at six o'clock.",
    "Let me know if you have any questions.",
    "We need to buy milk and bread.",
]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1]


def transcribe(pcm: np.ndarray, rate: int) -> list[str]:
    decoder = Decoder(samprate=16000)
    decoder.start_utt()
    decoder.process_raw(soxr.resample(pcm, rate, 16000).astype(np.int16).tobytes(), full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr.split() if hyp else []


async def speak(engine: Engine, text: str, voice: str) -> np.ndarray:
    request = SynthesisRequest(text, voice, language="en" if voice != "en-us" else "Auto")
    chunks = [c.pcm async for c in engine.synthesize(request, Cancellation())]
    return np.concatenate(chunks).astype(np.int16)


async def measure(engine: Engine, voice: str) -> dict[str, float]:
    errors = total = 0
    audio_s = work_s = 0.0
    rate = engine.info.sample_rate
    for text in SENTENCES:
        began = time.perf_counter()
        pcm = await speak(engine, text, voice)
        work_s += time.perf_counter() - began
        audio_s += len(pcm) / rate
        ref = words(text)
        errors += edit_distance(ref, transcribe(pcm, rate))
        total += len(ref)
    return {"wer": round(errors / total, 3), "x_realtime": round(audio_s / work_s, 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", help="kokoro voices, comma-separated (default: all)")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    espeak = load_engine("espeak")
    await espeak.start()
    results["espeak:en-us"] = await measure(espeak, "en-us")
    await espeak.close()
    print("espeak en-us", results["espeak:en-us"], flush=True)
    kokoro = load_engine("kokoro", {"streams": "1"})
    await kokoro.start()
    voices = args.voices.split(",") if args.voices else list(kokoro.info.voices)
    for voice in voices:
        results[f"kokoro:{voice}"] = await measure(kokoro, voice)
        print("kokoro", voice, results[f"kokoro:{voice}"], flush=True)
    await kokoro.close()
    print(json.dumps({"sentences": len(SENTENCES), "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
