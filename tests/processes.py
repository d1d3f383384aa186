"""Real `voxline api` + `voxline worker` processes on the Redis at REDIS_URL, for tests."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

import httpx
import redis

from tests.harness import REDIS_URL
from tests.redis_servers import free_port


@contextlib.contextmanager
def voxline_stack(
    prefix: str,
    workers: Sequence[Sequence[str]],
    *,
    ready_within: float = 30,
    processes: list[subprocess.Popen[bytes]] | None = None,
) -> Iterator[str]:
    """Start an api process and one worker process per argument list; yield the ws:// base URL
    once /readyz counts every worker; stop them all and delete the prefix's keys after.
    `processes`, when given, receives the api process and then the workers'."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1"}
    common = ["--redis-url", REDIS_URL, "--key-prefix", prefix]

    def voxline(*args: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "voxline", "--log-level", "warning", *args, *common]
        return subprocess.Popen(cmd, env=env)

    procs = [voxline("api", "--host", "127.0.0.1", "--port", str(port))]
    procs += [voxline("worker", *args) for args in workers]
    if processes is not None:
        processes.extend(procs)
    http = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_within
        while True:
            for proc in procs:
                assert proc.poll() is None, f"{proc.args} exited with {proc.returncode}"
            try:
                ready = httpx.get(f"{http}/readyz", timeout=1)
                if ready.status_code == 200 and ready.json()["workers"] == len(workers):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the stack did not become ready"
            time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}"
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
