"""The kokoro engine through the whole pipeline, beside kokoro-onnx called as a plain server
would call it, in one run.

For C concurrent sessions (1, 2, 4, 8) each speaking one utterance:
- pipeline: C WebSocket sessions at once against an in-process front end and one kokoro
  worker (in-memory Redis); time to first audio from sending the text, and aggregate real
  time (seconds of audio delivered per second of wall time);
- baseline: the same sentences through `Kokoro.create`, one request after another (a server
  without a pipeline: each request waits for the ones before it, and its audio comes whole).
The two sides alternate, `--rounds` times for each C (a shared VM's speed drifts; both sides
see the drift). The utterance's first sentence is about 4.5 s of speech and opens with a
short clause. Prints p50/p99 of first audio per side, the p99 ratio, the longest playback
stall, and a JSON line.

    python bench/kokoro.py            # ~5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inproc import voxline  # noqa: E402
from bench.wsclient import pct, utterance  # noqa: E402
from voxline.shared.protocol import PATH  # noqa: E402
from voxline.worker.engines import load_engine  # noqa: E402
from voxline.worker.engines.kokoro.engine import SAMPLE_RATE, KokoroEngine  # noqa: E402

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


async def pipeline_round(url: str, c: int) -> tuple[list[tuple[float, float, float]], float]:
    """C sessions at once through the pipeline: their (first audio, audio, stall), and wall."""
    began = time.perf_counter()
    runs = await asyncio.gather(*(one_session(url) for _ in range(c)))
    return list(runs), time.perf_counter() - began


def baseline_round(kokoro: Any, voice: str, c: int) -> tuple[list[float], float, float]:
    """C requests one after another, each answered with its whole audio, as a server without
    a pipeline would: their first audio, the audio made, and wall."""
    began = time.perf_counter()
    firsts, audio = [], 0.0
    for _ in range(c):
        samples, _ = kokoro.create(UTTERANCE, voice, lang="en-us")
        firsts.append(time.perf_counter() - began)
        audio += len(samples) / SAMPLE_RATE
    return firsts, audio, time.perf_counter() - began


def figures(firsts: list[float], audio: float, wall: float) -> dict[str, float]:
    return {
        "first_p50_ms": round(statistics.median(firsts) * 1000),
        "first_p99_ms": round(pct(firsts, 0.99) * 1000),
        "x_realtime": round(audio / wall, 2),
    }


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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each side for each C")
    args = parser.parse_args()
    plain = load_engine("kokoro", {"streams": "1"})
    assert isinstance(plain, KokoroEngine)
    await plain.start()
    kokoro = await plain._kokoros.acquire(0.0)  # noqa: SLF001 (the library object itself)
    voice = plain.info.default_voice
    kokoro.create(UTTERANCE, voice, lang="en-us")  # warm-up
    options = {"streams": str(args.streams), "first_span_chars": str(args.first_span_chars)}
    engine = load_engine("kokoro", options)
    results: dict[int, dict[str, dict[str, float]]] = {}
    async with voxline(engine, "bench", args.concurrency) as port:
        url = f"ws://127.0.0.1:{port}{PATH}"
        await one_session(url)  # warm-up
        print(f"worker holds {args.concurrency or engine.capacity()} sentences", flush=True)
        for c in args.sessions:
            piped: list[tuple[float, float, float]] = []
            piped_wall = 0.0
            base_firsts: list[float] = []
            base_audio = base_wall = 0.0
            for r in range(args.rounds):  # the sides alternate: the machine's drift hits both
                for side in ("pipeline", "baseline") if r % 2 == 0 else ("baseline", "pipeline"):
                    if side == "pipeline":
                        runs, wall = await pipeline_round(url, c)
                        piped += runs
                        piped_wall += wall
                    else:
                        firsts, audio, wall = baseline_round(kokoro, voice, c)
                        base_firsts += firsts
                        base_audio += audio
                        base_wall += wall
            pipe = figures([f for f, _, _ in piped], sum(a for _, a, _ in piped), piped_wall)
            # after playback began: the longest wait for audio (a cut sentence's next span, or
            # the next sentence, arriving late)
            pipe["stall_max_ms"] = round(max(s for _, _, s in piped) * 1000)
            base = figures(base_firsts, base_audio, base_wall)
            ratio = round(base["first_p99_ms"] / max(pipe["first_p99_ms"], 1), 2)
            results[c] = {"pipeline": pipe, "baseline": base, "p99_ratio": ratio}  # type: ignore[dict-item]
            print(f"{c} sessions: pipeline {pipe}, baseline {base}, p99 ratio {ratio}x", flush=True)
    await plain.close()
    settings = {
        "streams": args.streams,
        "first_span_chars": args.first_span_chars,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
    }
    print(json.dumps({**settings, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
