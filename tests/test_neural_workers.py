"""`voxline worker --engine pocket-tts --model DIR` and `--engine vits --model DIR` as real
processes beside `voxline api` on Redis, serving a session end to end from local checkpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import real_redis_or_fail
from tests.harness import REDIS_URL, Client
from tests.worker.vits_checkpoint import build_checkpoint as build_vits
from worker.engines.pocket.checkpoint import build_checkpoint as build_pocket

pytestmark = pytest.mark.multiprocess


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws_url = url + "/v1/audio/speech/stream"


@pytest.fixture(params=["pocket-tts", "vits"])
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stack]:
    real_redis_or_fail()
    engine = request.param
    model = tmp_path / "model"
    if engine == "pocket-tts":
        build_pocket(model, size="tiny", eos_bias=-3.0)
    else:
        build_vits(model)
    prefix = f"vxnn-{uuid.uuid4().hex[:8]}"
    port = _free_port()
    common = ["--redis-url", REDIS_URL, "--key-prefix", prefix]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}

    def voxline(*args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "voxline", "--log-level", "warning", *args, *common]
        return subprocess.Popen(cmd, env=env)

    procs = [
        voxline("api", "--host", "127.0.0.1", "--port", str(port)),
        voxline("worker", "--engine", engine, "--model", str(model)),
    ]
    http = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            for proc in procs:
                assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
            try:
                ready = httpx.get(f"{http}/readyz", timeout=1)
                if ready.status_code == 200 and ready.json()["workers"] == 1:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the stack did not become ready"
            time.sleep(0.1)
        yield Stack(f"ws://127.0.0.1:{port}")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


async def test_a_session_is_served_from_a_local_checkpoint(stack: Stack) -> None:
    texts = ["Hello there.", "This is a neural voice.", "Goodbye now."]
    async with Client.connect(stack, {"response_format": "wav"}) as c:
        ready = c.received[0]
        for text in texts:
            await c.send("input.text", text=text + " ")
        await c.send("input.done")
        sentences, done = await c.utterance(timeout=60)
    assert ready["engine"] in ("pocket-tts", "vits")
    assert done["total_sentences"] == 3
    assert [s.start["sentence_text"] for s in sentences] == texts
    for s in sentences:
        assert not s.errors and s.done["error"] is False
        assert s.audio[:4] == b"RIFF" and s.done["total_bytes"] == len(s.audio) > 44
