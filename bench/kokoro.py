"""The kokoro engine through the whole pipeline, beside kokoro-onnx called as a plain server
would call it, in one run.

For C concurrent sessions (1, 2, 4, 8) each speaking one utterance whose first sentence is
about 3-4 s of speech:
- pipeline: C WebSocket sessions at once against an in-process front end and one kokoro
  worker (in-memory Redis); time to first audio from sending the text, and aggregate real
  time (seconds of audio delivered per second of wall time);
- baseline: the same sentences through `Kokoro.create`, one request after another (a server
  without a pipeline: each request waits for the ones before it, and its audio comes whole).
Prints p50/p99 of first audio per side, the ratios, and a JSON line.

    python bench/kokoro.py            # ~3 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inproc import voxline  # noqa: E402
from bench.wsclient import pct, utterance  # noqa: E402
from shared.protocol import PATH  # noqa: E402
from worker.engines import load_engine  # noqa: E402
from worker.engines.kokoro.engine import SAMPLE_RATE, KokoroEngine  # noqa: E402

UTTERANCE = (
    "Well, as I was saying yesterday, the weather has been wonderful all week long. "
    "Thank you for listening."
)
SESSIONS = [1, 2, 4, 8]


class Player:
    """A listener's playback clock: it starts at the first audio and plays each frame when it
    has arrived; a frame arriving after the clock has run out of audio is a stall."""

    def __init__(self) -> None:
        self.clock: float | None = None
        self.longest_stall = 0.0

    def arrived(self, at: float, seconds: float) -> None:
        if self.clock is None:
            self.clock = at
        elif at > self.clock:
            self.longest_stall = max(self.longest_stall, at - self.clock)
            self.clock = at
        self.clock += seconds


async def one_session(url: str) -> tuple[float, float, float]:
    """(seconds to first audio, seconds of audio, longest playback stall) of one utterance."""
    first, audio, player = None, 0, Player()
    async for at, frame in utterance(url, UTTERANCE):
        first = at if first is None else first
        audio += len(frame)
        player.arrived(at, len(frame) / 2 / SAMPLE_RATE)
    assert first is not None
    return first, audio / 2 / SAMPLE_RATE, player.longest_stall


async def pipeline(
    counts: list[int], streams: int, first_span_chars: int, concurrency: int | None
) -> dict[int, dict[str, float]]:
    options = {"streams": str(streams), "first_span_chars": str(first_span_chars)}
    engine = load_engine("kokoro", options)
    async with voxline(engine, "bench", concurrency) as port:
        print(f"pipeline  worker holds {concurrency or engine.capacity()} sentences", flush=True)
        return await _sessions(f"ws://127.0.0.1:{port}{PATH}", counts)


async def _sessions(url: str, counts: list[int]) -> dict[int, dict[str, float]]:
    await one_session(url)  # warm-up
    results = {}
    for c in counts:
        began = time.perf_counter()
        runs = await asyncio.gather(*(one_session(url) for _ in range(c)))
        wall = time.perf_counter() - began
        firsts = [f for f, _, _ in runs]
        results[c] = {
            "first_p50_ms": round(statistics.median(firsts) * 1000),
            "first_p99_ms": round(pct(firsts, 0.99) * 1000),
            "x_realtime": round(sum(a for _, a, _ in runs) / wall, 2),
            # after playback began: the longest wait for audio (a split sentence's second
            # span, or the next sentence, arriving late)
            "stall_max_ms": round(max(s for _, _, s in runs) * 1000),
        }
        print(f"pipeline  {c} sessions: {results[c]}", flush=True)
    return results


async def baseline(counts: list[int]) -> dict[int, dict[str, float]]:
    engine = load_engine("kokoro", {"streams": "1"})
    assert isinstance(engine, KokoroEngine)
    await engine.start()
    kokoro = await engine._kokoros.acquire(0.0)  # noqa: SLF001 (the library object itself)
    voice = engine.info.default_voice
    kokoro.create(UTTERANCE, voice, lang="en-us")  # warm-up
    results = {}
    for c in counts:
        began = time.perf_counter()
        firsts, audio = [], 0.0
        for _ in range(c):  # one request after another; each answers with its whole audio
            samples, _ = kokoro.create(UTTERANCE, voice, lang="en-us")
            firsts.append(time.perf_counter() - began)
            audio += len(samples) / SAMPLE_RATE
        wall = time.perf_counter() - began
        results[c] = {
            "first_p50_ms": round(statistics.median(firsts) * 1000),
            "first_p99_ms": round(pct(firsts, 0.99) * 1000),
            "x_realtime": round(audio / wall, 2),
        }
        print(f"baseline  {c} sessions: {results[c]}", flush=True)
    await engine.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1, help="kokoro streams of the worker")
    parser.add_argument(
        "--first-span-chars",
        type=int,
        default=KokoroEngine().first_span_chars,
        help="the engine's option: a first sentence longer than this may be cut (1000: never)",
    )
    parser.add_argument("--sessions", type=int, nargs="*", default=SESSIONS)
    parser.add_argument(
        "--concurrency", type=int, default=None, help="sentences the worker holds (capacity)"
    )
    args = parser.parse_args()
    base = await baseline(args.sessions)
    piped = await pipeline(args.sessions, args.streams, args.first_span_chars, args.concurrency)
    for c in args.sessions:
        ratio = base[c]["first_p99_ms"] / max(piped[c]["first_p99_ms"], 1)
        print(f"{c} sessions: first-audio p99 baseline/pipeline {ratio:.2f}x")
    figures = {
        "streams": args.streams,
        "first_span_chars": args.first_span_chars,
        "concurrency": args.concurrency,
    }
    print(json.dumps({**figures, "pipeline": piped, "baseline": base}))


if __name__ == "__main__":
    asyncio.run(main())
