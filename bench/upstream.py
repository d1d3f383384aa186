"""What the `upstream` engine's extra hop costs: time to first audio through a voxline that
forwards each sentence to a second voxline, beside that second voxline called directly, in
one run.

Two voxlines run in-process, each a front end (uvicorn) and one worker on its own in-memory
Redis:
- upstream: the `tone` engine paced at `--rtf` (0.5: twice real time, like a real model),
  concurrency 8; it stands for the TTS server the operator already runs;
- front: the `upstream` engine pointed at it (`protocol` openai: POST /v1/audio/speech,
  streamed pcm; vllm-omni: its WebSocket /v1/audio/speech/stream), concurrency 8.

For each protocol and C concurrent sessions (1, 4, 8), rounds of C WebSocket sessions at once,
each speaking one utterance of three sentences (pcm, stream_audio), alternately:
- via front: client -> front -> upstream engine -> upstream voxline;
- direct: the same client code against the upstream voxline;
time to first audio is from sending the text to the first binary frame. The order of the two
sides flips each round. For openai it also times the upstream's own REST (a streamed POST of
the whole utterance, first body byte). Prints p50/p99 per side, the ms the hop adds (front
minus direct) and a JSON line. A session that fails is printed, counted under "failed" and
left out of the figures (the run goes on).

The upstream's uvicorn keeps an idle HTTP connection 5 s (uvicorn's default); the engine's
pool drops its own after 4 s, so a round that follows a pause may open fresh connections,
and the figures include that.

    python bench/upstream.py            # a few minutes on 2 CPU cores
    python bench/upstream.py --quick    # 8 utterances per side, C in (1, 4): ~1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.inproc import voxline  # noqa: E402
from bench.wsclient import pct, utterance  # noqa: E402
from voxline.shared.protocol import PATH  # noqa: E402
from voxline.worker.engines import load_engine  # noqa: E402

UTTERANCE = "The first sentence is here. A second one follows it. And the third ends it."
PROTOCOLS = ["openai", "vllm-omni"]
SESSIONS = [1, 4, 8]
QUICK_SESSIONS = [1, 4]
VOICE = "tone-mid"
CONCURRENCY = 8


async def one_session(url: str) -> tuple[float, int]:
    """(seconds to first audio, bytes of audio) of one utterance over a WebSocket session."""
    first, audio = None, 0
    async for at, frame in utterance(url, UTTERANCE):
        first = at if first is None else first
        audio += len(frame)
    assert first is not None, f"{url}: no audio"
    return first, audio


async def one_rest(client: httpx.AsyncClient, base: str) -> tuple[float, int]:
    """(seconds to the first body byte, bytes) of the utterance over a streamed REST POST."""
    body = {"input": UTTERANCE, "voice": VOICE, "response_format": "pcm"}
    began = time.perf_counter()
    first, audio = None, 0
    async with client.stream("POST", f"{base}/audio/speech", json=body) as response:
        assert response.status_code == 200, response.status_code
        async for data in response.aiter_raw():
            if first is None and data:
                first = time.perf_counter() - began
            audio += len(data)
    assert first is not None, "REST: no audio"
    return first, audio


def figures(firsts: list[float]) -> dict[str, float | None]:
    if not firsts:  # every session of that side failed
        return {"p50_ms": None, "p99_ms": None}
    return {
        "p50_ms": round(statistics.median(firsts) * 1000, 1),
        "p99_ms": round(pct(firsts, 0.99) * 1000, 1),
    }


def added(front: float | None, direct: float | None) -> float | None:
    return None if front is None or direct is None else round(front - direct, 1)


def ms(value: object) -> str:
    return "-" if value is None else f"{value:.1f}"


async def measure(
    protocol: str, upstream_port: int, counts: list[int], utterances: int
) -> dict[int, dict[str, object]]:
    upstream_http = f"http://127.0.0.1:{upstream_port}/v1"
    options = {
        "url": upstream_http,
        "protocol": protocol,
        "default_voice": VOICE,
        "concurrency": str(CONCURRENCY),
    }
    direct_ws = f"ws://127.0.0.1:{upstream_port}{PATH}"
    results: dict[int, dict[str, object]] = {}
    limits = httpx.Limits(max_connections=max(counts), max_keepalive_connections=max(counts))
    async with (
        voxline(load_engine("upstream", options), f"front-{protocol}", CONCURRENCY) as front_port,
        httpx.AsyncClient(timeout=30, limits=limits, trust_env=False) as rest,
    ):
        front_ws = f"ws://127.0.0.1:{front_port}{PATH}"
        # Warm-up: the front engine's connections, both front ends' first sessions.
        await asyncio.gather(*(one_session(front_ws) for _ in range(max(counts))))
        await one_session(direct_ws)
        if protocol == "openai":
            await one_rest(rest, upstream_http)
        for c in counts:
            rounds = math.ceil(utterances / c)
            sides: dict[str, list[tuple[float, int]]] = {"front": [], "direct": [], "rest": []}
            failed: dict[str, list[str]] = {"front": [], "direct": [], "rest": []}
            for r in range(rounds):
                order = ["front", "direct"] if r % 2 == 0 else ["direct", "front"]
                if protocol == "openai":
                    order.append("rest")
                for side in order:
                    if side == "rest":
                        runs = [one_rest(rest, upstream_http) for _ in range(c)]
                    else:
                        url = front_ws if side == "front" else direct_ws
                        runs = [one_session(url) for _ in range(c)]
                    for run in await asyncio.gather(*runs, return_exceptions=True):
                        if isinstance(run, Exception):
                            failed[side].append(f"{type(run).__name__}: {run}")
                            print(f"  {side} failed: {failed[side][-1]}", flush=True)
                        else:
                            sides[side].append(run)
            lengths = {a for side in sides.values() for _, a in side}
            if len(lengths) != 1:
                print(f"  warning: audio lengths differ between sides: {lengths}", flush=True)
            front = figures([f for f, _ in sides["front"]])
            direct = figures([f for f, _ in sides["direct"]])
            entry: dict[str, object] = {
                "n": rounds * c,  # utterances per side
                "front": front,
                "direct": direct,
                "added_p50_ms": added(front["p50_ms"], direct["p50_ms"]),
                "added_p99_ms": added(front["p99_ms"], direct["p99_ms"]),
                "same_audio_length": len(lengths) == 1,
                # sessions that failed (left out of the figures), by side, with their errors
                "failed": {side: errors for side, errors in failed.items() if errors},
            }
            if sides["rest"]:
                entry["direct_rest"] = figures([f for f, _ in sides["rest"]])
            results[c] = entry
            line = (
                f"{protocol:9s} C={c} n={entry['n']}: first audio p50/p99 "
                f"front {ms(front['p50_ms'])}/{ms(front['p99_ms'])} ms, "
                f"direct {ms(direct['p50_ms'])}/{ms(direct['p99_ms'])} ms, "
                f"added {ms(entry['added_p50_ms'])}/{ms(entry['added_p99_ms'])} ms"
            )
            if sides["rest"]:
                rest_figures = entry["direct_rest"]
                assert isinstance(rest_figures, dict)
                line += f" (direct REST {ms(rest_figures['p50_ms'])}/{ms(rest_figures['p99_ms'])})"
            if entry["failed"]:
                line += f" [failed: {', '.join(f'{k} {len(v)}' for k, v in failed.items() if v)}]"
            print(line, flush=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rtf", type=float, default=0.5, help="the upstream tone engine's pace")
    parser.add_argument(
        "--utterances", type=int, default=24, help="utterances per side for each C (rounded up)"
    )
    parser.add_argument("--sessions", type=int, nargs="*", default=None)
    parser.add_argument("--protocols", nargs="*", choices=PROTOCOLS, default=PROTOCOLS)
    parser.add_argument("--quick", action="store_true", help="8 utterances, C in (1, 4)")
    args = parser.parse_args()
    counts = args.sessions or (QUICK_SESSIONS if args.quick else SESSIONS)
    utterances = 8 if args.quick else args.utterances
    tone = load_engine("tone", {"rtf": str(args.rtf), "chunk_ms": "40"})
    results: dict[str, dict[int, dict[str, object]]] = {}
    async with voxline(tone, "upstream", CONCURRENCY) as upstream_port:
        for protocol in args.protocols:
            results[protocol] = await measure(protocol, upstream_port, counts, utterances)
    settings = {"rtf": args.rtf, "chunk_ms": 40, "concurrency": CONCURRENCY}
    print(json.dumps({**settings, "utterance": UTTERANCE, "results": results}))


if __name__ == "__main__":
    asyncio.run(main())
