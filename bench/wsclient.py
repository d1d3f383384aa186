"""One utterance over voxline's WebSocket, as the benches' client speaks it: pcm, streamed,
each audio frame with its arrival time from the moment the text was sent."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator

import websockets

from voxline.shared.protocol import EXTENSIONS


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values`, nearest rank (with few samples, p99 is the slowest)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def utterance(url: str, text: str) -> AsyncIterator[tuple[float, bytes]]:
    """(seconds since the text was sent, frame) for each binary frame until session.done;
    an `error` event raises RuntimeError."""
    async with websockets.connect(url, max_size=None, subprotocols=[EXTENSIONS]) as ws:
        config = {"type": "session.config", "response_format": "pcm", "stream_audio": True}
        await ws.send(json.dumps(config))
        await ws.recv()  # session.ready
        began = time.perf_counter()
        await ws.send(json.dumps({"type": "input.text", "text": text}))
        await ws.send(json.dumps({"type": "input.done"}))
        while True:
            frame = await ws.recv()
            if isinstance(frame, bytes):
                yield time.perf_counter() - began, frame
                continue
            event = json.loads(frame)
            if event["type"] == "error":
                raise RuntimeError(f"{url}: {event}")
            if event["type"] == "session.done":
                return
