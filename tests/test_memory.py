"""What one hostile connection can make a real `voxline api` process hold, and give back.

The attack from the field: 8.4 MB of one-word sentences in 100 messages on one connection
(before max_pending_chars it queued 300 000 sentences, 111 MB -> 1.2 GB, 0.9 GB after the
close). The figures are printed (run with -s); the assertions are loose on purpose.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
import websockets

from tests.processes import voxline_stack
from voxline.shared.protocol import PATH

# A front end in a process of its own, its memory measured.
pytestmark = pytest.mark.integration

MESSAGES = 100
MESSAGE = "Hi. " * 21_000  # 84 000 characters, 21 000 sentences


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _flood(url: str) -> tuple[int, int]:
    """Send the attack; return (messages refused with text_too_large, other errors)."""
    refused = other = 0
    async with websockets.connect(url + PATH, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.config", "response_format": "pcm"}))
        for _ in range(MESSAGES):
            await ws.send(json.dumps({"type": "input.text", "text": MESSAGE}))
        await ws.send(json.dumps({"type": "input.cancel"}))
        # Read until the cancel is answered: every earlier reply has come by then.
        while True:
            frame = await asyncio.wait_for(ws.recv(), 60)
            if isinstance(frame, bytes):
                continue
            msg = json.loads(frame)
            if msg["type"] == "error" and msg["code"] == "text_too_large":
                refused += 1
            elif msg["type"] == "error":
                other += 1
            elif msg["type"] == "input.cancelled":
                return refused, other


async def test_one_connection_cannot_pin_the_front_ends_memory() -> None:
    prefix = f"vxmem-{uuid.uuid4().hex[:8]}"
    procs: list = []
    tone = ["--engine", "tone", "--engine-opt", "rtf=1.0"]
    with voxline_stack(prefix, [tone], processes=procs) as url:
        api = procs[0].pid
        baseline = rss_mb(api)
        peak = baseline
        flood = asyncio.create_task(_flood(url))
        while not flood.done():
            peak = max(peak, rss_mb(api))
            await asyncio.sleep(0.05)
        refused, other = await flood
        await asyncio.sleep(2)  # the session's teardown
        after = rss_mb(api)
        print(
            f"\napi RSS: baseline {baseline:.0f} MB, peak {peak:.0f} MB (+{peak - baseline:.0f}),"
            f" after close {after:.0f} MB (+{after - baseline:.0f}); "
            f"{refused}/{MESSAGES} messages refused"
        )
        assert other == 0
        assert refused >= MESSAGES - 5, "the cap let the flood in"
        assert peak - baseline < 300, "one connection made the front end hold too much"
        assert after - baseline < 150, "memory stayed after the connection closed"
        # The process still serves.
        async with websockets.connect(url + PATH, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.config", "response_format": "pcm"}))
            await ws.send(json.dumps({"type": "input.text", "text": "Still fine."}))
            await ws.send(json.dumps({"type": "input.done"}))
            began = time.monotonic()
            while True:
                frame = await asyncio.wait_for(ws.recv(), 30)
                if isinstance(frame, str) and json.loads(frame)["type"] == "session.done":
                    break
            assert time.monotonic() - began < 30
