"""The load client of bench/pipeline.py, run in a process of its own so that what it costs is
not charged to the server it measures. One scenario per run; it prints one JSON object.

Scenarios (all over voxline's WebSocket protocol, PCM, `stream_audio`):
- `ttfa`: N sessions, each sending a complete sentence, reading its audio to `audio.done`,
  thinking a random while, and again. Time to first audio is taken from the moment the
  sentence is complete (`input.flush` sent) to its first binary frame.
- `relay`: N sessions, each with one long sentence of real-time audio from the `tone` engine
  with `stamp=1`. Per chunk: relay latency (arrival minus the generation stamp the engine
  wrote into its first 8 bytes; CLOCK_MONOTONIC is system-wide) and whether a 100 ms jitter
  buffer, started at the sentence's first chunk, had run dry before the chunk came.
- `cancel`: N sessions; each starts a long sentence, hears part of it, then cancels
  (`input.cancel`) or drops the connection. A monitor subscribed to every audio channel in
  Redis records each chunk's generation stamp, so what the worker generated after the cancel
  is seen even when nobody relays it any more.
- `throughput`: N sessions keep utterances of several sentences queued; what counts is the
  audio received per second in a window after a warm-up.

    python bench/loadgen.py ttfa '{"url": "ws://127.0.0.1:8000/v1/audio/speech/stream", ...}'
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from voxline.shared.connections import connect as redis_connect  # noqa: E402
from voxline.shared.connections import pubsub as open_pubsub  # noqa: E402
from voxline.shared.keys import Keys  # noqa: E402
from voxline.shared.protocol import EXTENSIONS  # noqa: E402
from voxline.shared.wire import Cancel, Event, EventKind  # noqa: E402

RATE = 24000
STAMP_BYTES = 8
JITTER_BUFFER_NS = 100_000_000
CONFIG = json.dumps({"type": "session.config", "response_format": "pcm", "stream_audio": True})
FLUSH = json.dumps({"type": "input.flush"})
CANCEL = json.dumps({"type": "input.cancel"})


def sentence(session: int, k: int) -> str:
    return f"Session {session:03d} now says sentence number {k:05d}."


def long_text(chars: int) -> str:
    words, text = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"], ""
    while len(text) < chars:
        text += words[len(text) % len(words)] + " "
    return text[: chars - 1].rstrip() + "."


async def open_session(url: str) -> tuple[Any, dict[str, Any]]:
    ws = await websockets.connect(
        url, max_size=None, open_timeout=30, ping_interval=None, subprotocols=[EXTENSIONS]
    )
    await ws.send(CONFIG)
    ready = json.loads(await ws.recv())
    if ready.get("type") != "session.ready":
        raise RuntimeError(f"session refused: {ready}")
    return ws, ready


async def until_done(ws: Any) -> dict[str, Any]:
    """Read to the next `audio.done`; raise on an error message."""
    while True:
        frame = await ws.recv()
        if isinstance(frame, str):
            message = json.loads(frame)
            if message["type"] == "audio.done":
                return message
            if message["type"] == "error":
                raise RuntimeError(message)


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    """utime + stime of each process, in clock ticks."""
    ticks = {}
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks[pid] = int(fields[11]) + int(fields[12])
    return ticks


class CpuWindow:
    """CPU use of the given processes between start() and stop(), in % of one core."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self._t0 = 0.0
        self._ticks: dict[int, int] = {}

    def start(self) -> None:
        self._t0, self._ticks = time.monotonic(), cpu_ticks(self.pids)

    def stop(self) -> dict[str, float]:
        elapsed, now = time.monotonic() - self._t0, cpu_ticks(self.pids)
        hz = os.sysconf("SC_CLK_TCK")
        return {
            str(pid): round(100 * (now[pid] - self._ticks[pid]) / hz / elapsed, 1)
            for pid in self.pids
        }


# --- ttfa ---------------------------------------------------------------------------------


async def ttfa(spec: dict[str, Any]) -> dict[str, Any]:
    n, duration, think = spec["sessions"], spec["duration"], spec["think"]
    samples: list[float] = []
    sockets = await asyncio.gather(*(open_session(spec["url"]) for _ in range(n)))
    deadline = time.monotonic() + duration

    async def run(index: int, ws: Any) -> None:
        rng = random.Random(index)
        await asyncio.sleep(rng.uniform(0, think))  # random phase
        k = 0
        while time.monotonic() < deadline:
            await ws.send(json.dumps({"type": "input.text", "text": sentence(index, k)}))
            start = time.perf_counter()
            await ws.send(FLUSH)
            while not isinstance(frame := await ws.recv(), bytes):
                if json.loads(frame)["type"] == "error":
                    raise RuntimeError(frame)
            samples.append((time.perf_counter() - start) * 1000)
            await until_done(ws)
            k += 1
            await asyncio.sleep(rng.uniform(0, think))

    results = await asyncio.gather(
        *(run(i, ws) for i, (ws, _) in enumerate(sockets)), return_exceptions=True
    )
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    await asyncio.gather(*(ws.close() for ws, _ in sockets), return_exceptions=True)
    return {"samples_ms": samples, "errors": errors}


# --- relay --------------------------------------------------------------------------------


async def relay(spec: dict[str, Any]) -> dict[str, Any]:
    n, text, spread = spec["streams"], long_text(spec["chars"]), spec["spread"]
    latencies: list[float] = []
    late: list[float] = []  # ms a chunk came after its jitter-buffer deadline
    chunks = 0
    sockets = []
    for start in range(0, n, 50):  # connect in batches: a storm of handshakes is not relay
        sockets += await asyncio.gather(
            *(open_session(spec["url"]) for _ in range(min(50, n - start)))
        )
    cpu = CpuWindow([*spec.get("cpu_pids", []), os.getpid()])
    cpu.start()
    began = time.monotonic()

    async def run(index: int, ws: Any) -> None:
        nonlocal chunks
        await asyncio.sleep(random.Random(index).uniform(0, spread))
        await ws.send(json.dumps({"type": "input.text", "text": text}))
        await ws.send(FLUSH)
        first = 0
        heard = 0  # samples before this chunk
        while True:
            frame = await ws.recv()
            now = time.monotonic_ns()
            if isinstance(frame, str):
                message = json.loads(frame)
                if message["type"] == "audio.done":
                    return
                if message["type"] == "error":
                    raise RuntimeError(message)
                continue
            chunks += 1
            if len(frame) >= STAMP_BYTES:
                stamp = int.from_bytes(frame[:STAMP_BYTES], "little", signed=True)
                latencies.append((now - stamp) / 1e6)
            if not first:
                first = now
            else:
                due = first + JITTER_BUFFER_NS + heard * 1_000_000_000 // RATE
                if now > due:
                    late.append((now - due) / 1e6)
            heard += len(frame) // 2

    results = await asyncio.gather(
        *(run(i, ws) for i, (ws, _) in enumerate(sockets)), return_exceptions=True
    )
    elapsed = time.monotonic() - began
    usage = cpu.stop()
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    await asyncio.gather(*(ws.close() for ws, _ in sockets), return_exceptions=True)
    return {
        "latencies_ms": latencies,
        "late_ms": late,
        "chunks": chunks,
        "errors": errors,
        "cpu_pct": usage,
        "seconds": elapsed,
    }


# --- cancel -------------------------------------------------------------------------------


async def cancel(spec: dict[str, Any]) -> dict[str, Any]:
    n, text, how = spec["sessions"], long_text(spec["chars"]), spec["how"]
    keys = Keys(spec["key_prefix"])
    stamps: dict[str, list[int]] = {}
    monitor = redis_connect(spec["redis_url"], blocking=True)
    pubsub = open_pubsub(monitor, ignore_subscribe_messages=True)
    await pubsub.psubscribe(keys.audio_channel("*"))
    await pubsub.subscribe(keys.cancel_channel)
    broadcasts: dict[str, int] = {}  # session -> when its cancel reached the workers' channel

    async def watch() -> None:
        prefix, suffix = len(keys.audio_channel("")) - len("}:audio"), len("}:audio")
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            now = time.monotonic_ns()
            channel = message["channel"].decode()
            if channel == keys.cancel_channel:
                broadcasts.setdefault(Cancel.unpack(message["data"]).session_id, now)
                continue
            event = Event.unpack(message["data"])
            if event.kind is EventKind.AUDIO and len(event.data) >= STAMP_BYTES:
                session = channel[prefix:-suffix]
                stamp = int.from_bytes(event.data[:STAMP_BYTES], "little", signed=True)
                stamps.setdefault(session, []).append(stamp)

    watcher = asyncio.create_task(watch())
    cancelled_at: dict[str, int] = {}

    async def run(index: int) -> None:
        rng = random.Random(index)
        await asyncio.sleep(rng.uniform(0, spec["spread"]))
        ws, ready = await open_session(spec["url"])
        await ws.send(json.dumps({"type": "input.text", "text": text}))
        await ws.send(FLUSH)
        while not isinstance(await ws.recv(), bytes):
            pass
        hear_until = time.monotonic() + rng.uniform(0.2, 0.6)
        while time.monotonic() < hear_until:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ws.recv(), hear_until - time.monotonic())
        cancelled_at[ready["session_id"]] = time.monotonic_ns()
        if how == "cancel":
            await ws.send(CANCEL)
            await asyncio.sleep(1.0)
            await ws.close()
        else:
            ws.transport.abort()  # a dropped call: no close frame

    results = await asyncio.gather(*(run(i) for i in range(n)), return_exceptions=True)
    await asyncio.sleep(1.0)  # whatever a worker still generates shows up by now
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    await pubsub.aclose()
    await monitor.aclose()
    latencies, after, notify = [], [], []
    for session, at in cancelled_at.items():
        late = [s for s in stamps.get(session, []) if s > at]
        after.append(len(late))
        latencies.append(max(0, max(late, default=at) - at) / 1e6)
        if session in broadcasts:
            notify.append((broadcasts[session] - at) / 1e6)
    return {
        "latencies_ms": latencies,
        "chunks_after": after,
        "notify_ms": notify,
        "errors": [repr(r) for r in results if isinstance(r, BaseException)],
    }


# --- throughput ---------------------------------------------------------------------------


async def throughput(spec: dict[str, Any]) -> dict[str, Any]:
    n, per = spec["sessions"], spec["sentences"]
    warmup, window = spec["warmup"], spec["duration"]
    sockets = await asyncio.gather(*(open_session(spec["url"]) for _ in range(n)))
    start = time.monotonic() + warmup
    stop = start + window
    counted = 0

    async def run(index: int, ws: Any) -> None:
        nonlocal counted
        k = 0
        while time.monotonic() < stop:
            text = " ".join(sentence(index, k + i) for i in range(per))
            await ws.send(json.dumps({"type": "input.text", "text": text}))
            await ws.send(FLUSH)
            k += per
            done = 0
            while done < per:
                frame = await ws.recv()
                if isinstance(frame, bytes):
                    if start <= time.monotonic() < stop:
                        counted += len(frame)
                elif (message := json.loads(frame))["type"] == "audio.done":
                    done += 1
                elif message["type"] == "error":
                    raise RuntimeError(message)

    results = await asyncio.gather(
        *(run(i, ws) for i, (ws, _) in enumerate(sockets)), return_exceptions=True
    )
    await asyncio.gather(*(ws.close() for ws, _ in sockets), return_exceptions=True)
    return {
        "audio_seconds_per_s": counted / 2 / RATE / window,
        "errors": [repr(r) for r in results if isinstance(r, BaseException)],
    }


SCENARIOS = {"ttfa": ttfa, "relay": relay, "cancel": cancel, "throughput": throughput}


def main() -> None:
    scenario, spec = sys.argv[1], json.loads(sys.argv[2])
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(SCENARIOS[scenario](spec))))


if __name__ == "__main__":
    main()
