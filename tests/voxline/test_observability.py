"""Real `voxline` processes: `--log-format json` makes every output line JSON (uvicorn's too),
`worker --metrics-port` serves the worker's metrics, `serve` shows API and worker metrics on
one /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30.0


class Process:
    """A `python -m voxline` process whose stderr is read as JSON lines."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[dict[str, Any]] = []

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        async with asyncio.timeout(START_TIMEOUT):
            while True:
                raw = await self.proc.stderr.readline()  # type: ignore[union-attr]
                assert raw, f"exited ({await self.proc.wait()}); logged: {self.lines}"
                self.lines.append(json.loads(raw))  # any other line fails the test
                if match(self.lines[-1]):
                    return self.lines[-1]

    async def stop(self) -> str:
        """SIGTERM, then the rest of stderr (all JSON); returns stdout."""
        self.proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(START_TIMEOUT):
            stdout, stderr = await self.proc.communicate()
        self.lines += [json.loads(line) for line in stderr.decode().splitlines()]
        assert self.proc.returncode == 0, self.lines
        return stdout.decode()


@contextlib.asynccontextmanager
async def voxline(*args: str) -> AsyncIterator[Process]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "voxline",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        yield Process(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def families(url: str) -> set[str]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200
    return {family.name for family in text_string_to_metric_families(response.text)}


def has(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda line: text in line["message"]


async def test_worker_metrics_port_and_json_logs() -> None:
    port = free_port()
    async with voxline(
        "--log-format",
        "json",
        "worker",
        "--engine",
        "tone",
        "--redis-url",
        "memory://",
        "--metrics-port",
        str(port),
    ) as worker:
        started = await worker.until(has("engine tone"))
        assert started["logger"] == "voxline.worker" and started["level"] == "INFO"
        names = await families(f"http://127.0.0.1:{port}/metrics")
        stdout = await worker.stop()
    assert {"voxline_worker_rtf", "voxline_worker_queue_wait_seconds"} <= names
    assert stdout == ""


async def test_serve_logs_json_and_shows_both_sides_metrics() -> None:
    async with voxline("--log-format", "json", "serve", "--engine", "tone", "--port", "0") as serve:
        running = await serve.until(has("Uvicorn running on"))
        url = re.search(r"http://[\d.]+:\d+", running["message"])
        assert url is not None and running["logger"] == "uvicorn.error"
        names = await families(url[0] + "/metrics")
        stdout = await serve.stop()
    assert {"voxline_active_sessions", "voxline_worker_rtf"} <= names
    assert stdout == ""  # the banner is a log line too
    loggers = {line["logger"] for line in serve.lines}
    assert {"voxline", "uvicorn.error", "uvicorn.access"} <= loggers
    access = next(line for line in serve.lines if line["logger"] == "uvicorn.access")
    assert "GET /metrics" in access["message"]
