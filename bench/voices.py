"""Hear the voices: word error rate of each engine voice on fixed English sentences, and
clicks at kokoro's chunk and span joins, in one run.

Each sentence is synthesized by the engine (espeak's default English voice, then every
kokoro voice), resampled to 16 kHz and transcribed by the offline recognizer the tests use
(pocketsphinx, its bundled US-English model). Word error rate is the word-level edit
distance over the reference's words, summed over all sentences. Also per voice: seconds of
audio per second of synthesis (one sentence after another, this machine).

    python bench/voices.py            # ~3 minutes on 2 CPU cores; last line is JSON
    python bench/voices.py --voices jm_kumo,jf_alpha
    python bench/voices.py --clicks-only

The recognizer is a weak listener (its model is small and old), so the figures compare voices
with one another, not with a human; a lower rate is better.

Clicks: each of `LONG_FIRST` (first sentences with a clause mark) is made as the opening of
an utterance, cut in two spans at its first clause (the rule without the machine's pace, so
every sentence is cut), and the same text in one call. A click is a sample step far above
the signal's own, so the bench reports, in 16-bit sample units: the largest step across any
chunk boundary and around each span join (the fade-out, the pause, the fade-in), beside the
one-call audio's largest step and its 99th percentile; and the pause at the join (the run of
silence there) beside the longest pause inside the one-call audio (a comma's).
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

from voxline.worker.engines import load_engine  # noqa: E402
from voxline.worker.engines.base import Cancellation, Engine, SynthesisRequest  # noqa: E402
from voxline.worker.engines.kokoro.engine import FADE_MS, JOIN_PAUSE_S, SAMPLE_RATE  # noqa: E402

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

# First sentences long enough to be cut, each with a clause mark past the head's minimum.
LONG_FIRST = [
    "Thanks for calling the support line, how can I help you with your account today?",
    "Your package left our warehouse this morning, and it should arrive by Thursday.",
    "I checked the schedule for you; the next train to the airport leaves at nine.",
    "Before we continue, could you confirm the last four digits of your card number?",
    "The doctor has an opening on Monday afternoon, would three o'clock work for you?",
    "Sorry about the wait, I had to look up the details of your previous order.",
]
# Replies that open with a short clause: cut there (its own span) or made whole.
SHORT_OPENINGS = [
    "Sure, I can help you with that right away.",
    "Well, the store opens at nine in the morning.",
    "Okay, let me check the status of your order.",
    "Yes, your appointment is confirmed for Monday.",
    "Of course, I will send the receipt to your email.",
    "Great question, the answer depends on your plan.",
    "No problem, I have moved the meeting to Friday.",
    "Thanks, I have updated your delivery address.",
    "Right, so the train leaves at seven tonight.",
    "Hello, thank you for calling the help line today.",
]
SILENCE = 64  # |sample| below this is silence (-54 dBFS)


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


async def pieces(engine: Engine, text: str, voice: str, opens: bool) -> list[np.ndarray]:
    request = SynthesisRequest(text, voice, opens_utterance=opens)
    return [c.pcm.astype(np.int32) async for c in engine.synthesize(request, Cancellation())]


def longest_silence(pcm: np.ndarray, start: int = 0, end: int | None = None) -> int:
    """The longest run of silent samples in pcm[start:end]."""
    quiet = np.abs(pcm[start:end]) < SILENCE
    best = run = 0
    for q in quiet:
        run = run + 1 if q else 0
        best = max(best, run)
    return best


def pause_joins(pcm: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each join: the engine's pause is a run of exact zeros that long."""
    zero = np.concatenate([[False], pcm == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    runs = zip(edges[::2], edges[1::2], strict=True)
    return [(a, b) for a, b in runs if b - a >= int(SAMPLE_RATE * JOIN_PAUSE_S)]


async def clicks(engine: Engine, voice: str) -> dict[str, float]:
    fade = int(SAMPLE_RATE * FADE_MS / 1000)
    chunk_step = join_step = whole_max = 0
    whole_p99: list[float] = []
    join_pause = natural_pause = 0
    joins = 0
    for text in LONG_FIRST:
        cut = await pieces(engine, text, voice, opens=True)
        joined = np.concatenate(cut)
        bounds = np.cumsum([len(c) for c in cut])[:-1]
        if len(bounds):
            chunk_step = max(chunk_step, int(np.abs(joined[bounds] - joined[bounds - 1]).max()))
        found = pause_joins(joined)
        assert found, f"not cut in two spans: {text!r}"
        for a, b in found:
            joins += 1
            window = joined[max(0, a - fade - 1) : b + fade + 1]
            join_step = max(join_step, int(np.abs(np.diff(window)).max()))
            join_pause = max(join_pause, longest_silence(joined, a - 4800, b + 4800))
        whole = np.concatenate(await pieces(engine, text, voice, opens=False))
        steps = np.abs(np.diff(whole))
        whole_max = max(whole_max, int(steps.max()))
        whole_p99.append(float(np.percentile(steps, 99)))
        # Inside the speech: its own edges are trimmed, but leave 50 ms either end.
        natural_pause = max(natural_pause, longest_silence(whole, 1200, len(whole) - 1200))
    ms = 1000 / SAMPLE_RATE
    return {
        "sentences": len(LONG_FIRST),
        "joins": joins,
        "chunk_join_max_step": chunk_step,
        "span_join_max_step": join_step,
        "one_call_max_step": whole_max,
        "one_call_p99_step": round(min(whole_p99), 1),
        "join_pause_ms": round(join_pause * ms),
        "one_call_longest_pause_ms": round(natural_pause * ms),
    }


async def heads(engine: Engine, voice: str) -> dict[str, float]:
    """Word error rate of `SHORT_OPENINGS` cut after their opening clause, and made whole."""
    errors = {"cut": 0, "whole": 0}
    total = 0
    rate = engine.info.sample_rate
    for text in SHORT_OPENINGS:
        ref = words(text)
        total += len(ref)
        for side, opens in (("cut", True), ("whole", False)):
            pcm = np.concatenate(await pieces(engine, text, voice, opens)).astype(np.int16)
            errors[side] += edit_distance(ref, transcribe(pcm, rate))
    return {f"{side}_wer": round(n / total, 3) for side, n in errors.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", help="kokoro voices, comma-separated (default: all)")
    parser.add_argument(
        "--clicks-only", action="store_true", help="joins and short heads only, no voices"
    )
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    kokoro = load_engine("kokoro", {"streams": "1"})
    await kokoro.start()
    kokoro.pace = None  # type: ignore[attr-defined]  # cut at the first clause, always
    joins = await clicks(kokoro, kokoro.info.default_voice)
    print("kokoro joins", joins, flush=True)
    joins.update(await heads(kokoro, kokoro.info.default_voice))
    print("kokoro short heads", joins, flush=True)
    if args.clicks_only:
        await kokoro.close()
        print(json.dumps({"clicks": joins}))
        return
    espeak = load_engine("espeak")
    await espeak.start()
    results["espeak:en-us"] = await measure(espeak, "en-us")
    await espeak.close()
    print("espeak en-us", results["espeak:en-us"], flush=True)
    voices = args.voices.split(",") if args.voices else list(kokoro.info.voices)
    for voice in voices:
        results[f"kokoro:{voice}"] = await measure(kokoro, voice)
        print("kokoro", voice, results[f"kokoro:{voice}"], flush=True)
    await kokoro.close()
    print(json.dumps({"sentences": len(SENTENCES), "results": results, "clicks": joins}))


if __name__ == "__main__":
    asyncio.run(main())
