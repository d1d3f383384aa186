"""The FastAPI application: the streaming-speech WebSocket, health and readiness."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse

from api.hub import Hub
from api.session import Session
from shared.config import Settings
from shared.protocol import PATH

# Extra work to run beside the API in the same process (the embedded worker of `serve`).
Sidecar = Callable[[], contextlib.AbstractAsyncContextManager[None]]


def create_app(settings: Settings, *, sidecar: Sidecar | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            hub = await Hub.open(settings)
            stack.push_async_callback(hub.close)
            if sidecar is not None:
                await stack.enter_async_context(sidecar())
            app.state.hub = hub
            yield

    app = FastAPI(title="voxline", lifespan=lifespan)

    @app.websocket(PATH)
    async def speech_stream(ws: WebSocket) -> None:
        await Session(ws, ws.app.state.hub).run()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        hub: Hub = app.state.hub
        checks: dict[str, object] = {}
        try:
            await hub.redis.ping()
            checks["redis"] = "ok"
            _, checks["workers"] = await hub.pool.engine(max_age=0)
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc}"
            checks["workers"] = 0
        checks["return_path"] = "ok" if hub.returns.connected.is_set() else "reconnecting"
        ready = checks["redis"] == "ok" and checks["workers"] and checks["return_path"] == "ok"
        checks["status"] = "ready" if ready else "not ready"
        checks["sessions"] = len(hub.sessions)
        return JSONResponse(checks, status_code=200 if ready else 503)

    return app
