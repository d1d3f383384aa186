"""Time to first audio through the whole pipeline, beside the bare Redis hop it rides on.

Baseline: one XADD -> XREADGROUP -> PUBLISH -> subscriber round, the floor the queue adds.
Pipeline: a WebSocket client sends a complete sentence (input.text + input.flush) and waits
for the first binary frame; the worker runs the `tone` engine at rtf 0 so the engine costs
~nothing and what is measured is voxline itself. Both run in the same process and the same
run, against the same Redis. Prints percentiles and the ratio.

    python bench/first_audio.py --redis-url redis://127.0.0.1:6379/0 --n 300
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
import uuid

import uvicorn
import websockets

from voxline.api.app import create_app
from voxline.api.server import WS_OPTIONS
from voxline.progress import note
from voxline.shared.config import Settings
from voxline.shared.connections import connect
from voxline.shared.protocol import EXTENSIONS
from voxline.worker.consumer import Worker
from voxline.worker.engines import load_engine


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def redis_hop(url: str, n: int) -> list[float]:
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    producer, reader, sub_client = (
        connect(url),
        connect(url, blocking=True),
        connect(url, blocking=True),
    )
    stream, channel = f"{prefix}:s", f"{prefix}:c"
    await producer.xgroup_create(stream, "g", id="$", mkstream=True)
    pubsub = sub_client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await producer.xadd(stream, {"j": b"x" * 100})
        reply = await reader.xreadgroup("g", "c", {stream: ">"}, count=1, block=1000)
        entry_id = reply[0][1][0][0]
        await reader.publish(channel, b"a" * 100)
        while await pubsub.get_message(ignore_subscribe_messages=True, timeout=1) is None:
            pass
        samples.append((time.perf_counter() - start) * 1000)
        await reader.xack(stream, "g", entry_id)
    await producer.delete(stream)
    for client in (producer, reader, sub_client):
        await client.aclose()
    return samples


async def pipeline(url: str, n: int) -> list[float]:
    settings = Settings(redis_url=url, key_prefix=f"bench-{uuid.uuid4().hex[:6]}")
    worker = Worker(settings, load_engine("tone", {"rtf": "0"}))
    worker_task = asyncio.create_task(worker.run())
    await worker.ready.wait()
    config = uvicorn.Config(create_app(settings), port=0, log_level="warning", **WS_OPTIONS)
    server = uvicorn.Server(config)
    server_task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    samples = []
    async with websockets.connect(
        f"ws://127.0.0.1:{port}/v1/audio/speech/stream", subprotocols=[EXTENSIONS]
    ) as ws:
        await ws.send(
            json.dumps({"type": "session.config", "response_format": "pcm", "stream_audio": True})
        )
        await ws.recv()
        for i in range(n):
            start = time.perf_counter()
            await ws.send(json.dumps({"type": "input.text", "text": f"Sentence {i}."}))
            await ws.send(json.dumps({"type": "input.flush"}))
            while not isinstance(await ws.recv(), bytes):
                pass
            samples.append((time.perf_counter() - start) * 1000)
            while True:
                frame = await ws.recv()
                if isinstance(frame, str) and json.loads(frame)["type"] == "audio.done":
                    break
    server.should_exit = True
    await server_task
    worker_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker_task
    return samples


def report(name: str, samples: list[float]) -> float:
    p50 = statistics.median(samples)
    print(
        f"{name:<28} n={len(samples):<5} p50 {p50:7.2f} ms  p90 {pct(samples, 0.9):7.2f} ms"
        f"  p99 {pct(samples, 0.99):7.2f} ms"
    )
    return p50


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=300)
    args = parser.parse_args()
    note("warm-up: 20 Redis hops")
    await redis_hop(args.redis_url, 20)
    note(f"redis hop (baseline): {args.n} rounds")
    base = report("redis hop (baseline)", await redis_hop(args.redis_url, args.n))
    note(f"pipeline first audio: {args.n} sentences")
    full = report("pipeline first audio", await pipeline(args.redis_url, args.n))
    print(f"ratio pipeline/baseline (p50): {full / base:.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
