"""Test helpers: a real uvicorn server with in-process workers, and a protocol client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
import websockets

from voxline.api.app import create_app
from voxline.api.server import WS_OPTIONS, Server
from voxline.shared.channels import is_cluster
from voxline.shared.config import Settings
from voxline.shared.keys import JOBS_GROUP, Keys
from voxline.shared.protocol import EXTENSIONS, PATH
from voxline.worker.consumer import Worker
from voxline.worker.engines import load_engine
from voxline.worker.slots import EntryKey, Held

REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
RECV_TIMEOUT = 10.0


@dataclass
class Pipeline:
    url: str  # ws://host:port
    http: str  # http://host:port
    settings: Settings
    server: uvicorn.Server
    workers: list[Worker]
    worker_tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return self.url + PATH

    def total(self, counter: str) -> int:
        return sum(w.stats.get(counter, 0) for w in self.workers)

    async def stop_workers(self) -> None:
        for task in self.worker_tasks:
            task.cancel()
        await asyncio.gather(*self.worker_tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def run_server(app: Any) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="warning", lifespan="on", **WS_OPTIONS
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield server
    finally:
        server.should_exit = True
        await task


def bound_port(server: uvicorn.Server) -> int:
    return server.servers[0].sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def start_pipeline(
    redis_url: str,
    key_prefix: str,
    *,
    workers: int = 1,
    engine: str = "tone",
    engine_options: dict[str, str] | None = None,
    concurrency: int = 1,
    **settings_overrides: Any,
) -> AsyncIterator[Pipeline]:
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix).replace(**settings_overrides)
    pool = [
        Worker(settings, load_engine(engine, dict(engine_options or {})), concurrency=concurrency)
        for _ in range(workers)
    ]
    tasks = [asyncio.create_task(w.run()) for w in pool]
    await asyncio.wait_for(asyncio.gather(*(w.ready.wait() for w in pool)), 10)
    try:
        async with run_server(create_app(settings)) as server:
            port = bound_port(server)
            yield Pipeline(
                url=f"ws://127.0.0.1:{port}",
                http=f"http://127.0.0.1:{port}",
                settings=settings,
                server=server,
                workers=pool,
                worker_tasks=tasks,
            )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def pending_jobs(redis: Any, keys: Keys) -> int:
    """Jobs delivered to a worker and not yet acknowledged, over every jobs stream."""
    return sum([(await redis.xpending(s, JOBS_GROUP))["pending"] for s in keys.job_streams])


async def queued_jobs(redis: Any, keys: Keys) -> int:
    """Entries in the jobs streams (acknowledged ones are deleted), read at one instant: read
    one by one, an entry deleted from `first` after it was counted and the session's next
    sentence added to `rest` before that was read would count as two."""
    # A cluster runs no transaction across slots (each shard is one); one shard is the rule.
    async with redis.pipeline(transaction=not is_cluster(redis)) as pipe:
        for stream in keys.job_streams:
            pipe.xlen(stream)
        return sum(await pipe.execute())


@dataclass
class SentenceResult:
    start: dict[str, Any]
    audio: bytes
    frames: list[bytes]
    done: dict[str, Any]
    words: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)


class Client:
    """A protocol client that records everything it receives, in order."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.received: list[dict[str, Any] | bytes] = []

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        pipeline: Pipeline,
        config: dict[str, Any] | None = None,
        *,
        ready: bool = True,
        extensions: bool = True,
    ) -> AsyncIterator[Client]:
        """`extensions`: offer voxline's subprotocol (session.ready, warning); without it the
        server talks to the client as vllm-omni would, and `ready` must be False."""
        offered = [EXTENSIONS] if extensions else None
        async with websockets.connect(pipeline.ws_url, max_size=None, subprotocols=offered) as ws:
            client = cls(ws)
            if config is not None:
                await client.send("session.config", **config)
                if ready:
                    message = await client.recv()
                    assert isinstance(message, dict) and message["type"] == "session.ready", message
            yield client

    async def send(self, kind: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": kind, **fields}))

    async def send_raw(self, data: str | bytes) -> None:
        await self.ws.send(data)

    async def recv(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any] | bytes:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        message: dict[str, Any] | bytes = frame if isinstance(frame, bytes) else json.loads(frame)
        self.received.append(message)
        return message

    async def recv_json(self, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        message = await self.recv(timeout)
        assert isinstance(message, dict), f"expected JSON, got {len(message)} binary bytes"
        return message

    async def expect(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        message = await self.recv_json(timeout)
        assert message["type"] == kind, message
        return message

    async def until(self, kind: str, timeout: float = RECV_TIMEOUT) -> dict[str, Any]:
        """Read on (recording every frame) to the next `kind` message and return it."""
        while True:
            message = await self.recv(timeout)
            if isinstance(message, dict) and message["type"] == kind:
                return message

    async def closed(self, timeout: float = RECV_TIMEOUT) -> int:
        """Wait for the server to close; return the close code (frames before are recorded)."""
        try:
            while True:
                await self.recv(timeout)
        except websockets.ConnectionClosed as exc:
            return exc.rcvd.code if exc.rcvd is not None else 1006

    async def utterance(self, timeout: float = RECV_TIMEOUT) -> tuple[list[SentenceResult], dict]:
        """Read one utterance to its session.done, checking the framing as it goes."""
        sentences: list[SentenceResult] = []
        current: SentenceResult | None = None
        while True:
            message = await self.recv(timeout)
            if isinstance(message, bytes):
                assert current is not None, "binary frame outside audio.start/audio.done"
                current.frames.append(message)
                continue
            kind = message["type"]
            if kind == "audio.start":
                assert current is None, f"audio.start inside sentence {current.start}"
                current = SentenceResult(start=message, audio=b"", frames=[], done={})
            elif kind == "audio.words":
                assert current is not None
                assert message["sentence_index"] == current.start["sentence_index"]
                current.words.extend(message["words"])
            elif kind == "error":
                assert current is not None, message
                current.errors.append(message)
            elif kind == "audio.done":
                assert current is not None
                assert message["sentence_index"] == current.start["sentence_index"]
                current.done = message
                current.audio = b"".join(current.frames)
                sentences.append(current)
                current = None
            elif kind == "session.done":
                assert current is None
                return sentences, message
            else:
                raise AssertionError(f"unexpected message {message}")


async def settled(worker: Worker, outcomes: tuple[str, ...], total: int) -> dict[str, int]:
    """The worker's counters once `total` jobs reached one of `outcomes` (or 5 s passed): a
    job is counted as it settles, a moment after the DONE the client already heard."""
    for _ in range(500):
        if sum(worker.stats.get(name, 0) for name in outcomes) >= total:
            break
        await asyncio.sleep(0.01)
    return dict(worker.stats)


def peak_held(worker: Worker) -> Callable[[], int]:
    """The most jobs `worker` holds at once from now on (its slot table's `hold`, wrapped):
    what the slot accounting must never let exceed the slots."""
    peak = 0
    hold = worker.held.hold

    def tracking(key: EntryKey, held: Held) -> None:
        nonlocal peak
        hold(key, held)
        peak = max(peak, len(worker.held.jobs))

    worker.held.hold = tracking  # type: ignore[method-assign]
    return lambda: peak
