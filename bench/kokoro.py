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
import contextlib
import json
import statistics
import sys
import time
import uuid
from pathlib import Path

import uvicorn
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app  # noqa: E402
from api.server import WS_OPTIONS  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.protocol import EXTENSIONS, PATH  # noqa: E402
from worker.consumer import Worker  # noqa: E402
from worker.engines import load_engine  # noqa: E402
from worker.engines.kokoro.engine import SAMPLE_RATE, KokoroEngine  # noqa: E402

UTTERANCE = (
    "Well, as I was saying yesterday, the weather has been wonderful all week long. "
    "Thank you for listening."
)
SESSIONS = [1, 2, 4, 8]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


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
    async with websockets.connect(url, max_size=None, subprotocols=[EXTENSIONS]) as ws:
        config = {"type": "session.config", "response_format": "pcm", "stream_audio": True}
        await ws.send(json.dumps(config))
        await ws.recv()  # session.ready
        began = time.perf_counter()
        await ws.send(json.dumps({"type": "input.text", "text": UTTERANCE}))
        await ws.send(json.dumps({"type": "input.done"}))
        first, audio, player = None, 0, Player()
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                now = time.perf_counter() - began
                first = first if first is not None else now
                audio += len(frame)
                player.arrived(now, len(frame) / 2 / SAMPLE_RATE)
            elif json.loads(frame)["type"] == "session.done":
                break
    assert first is not None
    return first, audio / 2 / SAMPLE_RATE, player.longest_stall


async def pipeline(
    counts: list[int], streams: int, first_span_chars: int
) -> dict[int, dict[str, float]]:
    settings = Settings(
        redis_url=f"memory://{uuid.uuid4().hex}", key_prefix="bench", max_sessions_per_client=0
    )
    options = {"streams": str(streams), "first_span_chars": str(first_span_chars)}
    worker = Worker(settings, load_engine("kokoro", options), concurrency=streams)
    worker_task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    config = uvicorn.Config(create_app(settings), port=0, log_level="warning", **WS_OPTIONS)
    server = uvicorn.Server(config)
    server_task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    url = f"ws://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}{PATH}"
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
    server.should_exit = True
    await server_task
    worker_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker_task
    return results


async def baseline(counts: list[int]) -> dict[int, dict[str, float]]:
    engine = load_engine("kokoro", {"streams": "1"})
    assert isinstance(engine, KokoroEngine)
    await engine.start()
    kokoro = engine._kokoros.get_nowait()  # noqa: SLF001 (the library object itself)
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
        default=60,
        help="the engine's option: a first sentence longer than this may be cut (1000: never)",
    )
    parser.add_argument("--sessions", type=int, nargs="*", default=SESSIONS)
    args = parser.parse_args()
    base = await baseline(args.sessions)
    piped = await pipeline(args.sessions, args.streams, args.first_span_chars)
    for c in args.sessions:
        ratio = base[c]["first_p99_ms"] / max(piped[c]["first_p99_ms"], 1)
        print(f"{c} sessions: first-audio p99 baseline/pipeline {ratio:.2f}x")
    figures = {"streams": args.streams, "first_span_chars": args.first_span_chars}
    print(json.dumps({**figures, "pipeline": piped, "baseline": base}))


if __name__ == "__main__":
    asyncio.run(main())
