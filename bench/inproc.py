"""An in-process voxline for the benches: a front end (uvicorn) and one worker on an engine,
over their own in-memory Redis, in the bench's event loop."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import uvicorn

from voxline.api.app import create_app
from voxline.api.server import WS_OPTIONS
from voxline.shared.config import Settings
from voxline.worker.consumer import Worker
from voxline.worker.engines.base import Engine


@contextlib.asynccontextmanager
async def voxline(engine: Engine, name: str, concurrency: int | None = None) -> AsyncIterator[int]:
    """A front end and one worker on `engine` (holding `concurrency` sentences, or as many as
    the engine's capacity says), on their own in-memory Redis; yields the port. On exit the
    server stops and the worker is cancelled (which closes the engine)."""
    settings = Settings(
        redis_url=f"memory://{uuid.uuid4().hex}", key_prefix=name, max_sessions_per_client=0
    )
    worker = Worker(settings, engine, concurrency=concurrency)
    worker_task = asyncio.create_task(worker.run())
    server_task: asyncio.Task[None] | None = None
    server: uvicorn.Server | None = None
    try:
        ready = asyncio.create_task(worker.ready.wait())
        await asyncio.wait({ready, worker_task}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            worker_task.result()  # the engine failed to start: raise its error
            raise RuntimeError(f"{name}: worker ended before it was ready")
        config = uvicorn.Config(create_app(settings), port=0, log_level="warning", **WS_OPTIONS)
        server = uvicorn.Server(config)
        server_task = asyncio.create_task(server.serve())
        while not server.started:
            if server_task.done():
                server_task.result()
                raise RuntimeError(f"{name}: server ended before it started")
            await asyncio.sleep(0.01)
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        if server is not None and server_task is not None:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await server_task
        worker_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker_task
