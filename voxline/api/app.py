"""The FastAPI application: the streaming-speech WebSocket, health and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from fastapi import FastAPI, Request, WebSocket
from fastapi.exception_handlers import http_exception_handler
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import BaseRoute, Route

from voxline.api import demo
from voxline.api.auth import (
    Authenticator,
    AuthMiddleware,
    KeySessions,
    describe,
    install_log_redaction,
)
from voxline.api.batch import batch_router
from voxline.api.catalog import catalog_router
from voxline.api.errors import HTTPError
from voxline.api.hub import Hub
from voxline.api.metrics import router as metrics_router
from voxline.api.server import quiet_client_faults
from voxline.api.session import serve as serve_websocket
from voxline.api.speech import speech_router
from voxline.shared.config import Settings
from voxline.shared.protocol import PATH
from voxline.shared.runtime import freeze_startup_objects

log = logging.getLogger("voxline.api")

# /readyz answers within this long even when Redis does not.
READY_PROBE_TIMEOUT = 2.0

# Extra work to run beside the API in the same process (the embedded worker of `serve`).
Sidecar = Callable[[], contextlib.AbstractAsyncContextManager[None]]


def create_app(settings: Settings, *, sidecar: Sidecar | None = None) -> FastAPI:
    # Parsed here, not in the lifespan: a bad key or origin list stops the start at once.
    auth = Authenticator.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            hub = await Hub.open(settings)
            stack.push_async_callback(hub.close)
            if sidecar is not None:
                await stack.enter_async_context(sidecar())
            app.state.hub = hub
            quiet_client_faults()
            freeze_startup_objects()
            if auth.enabled:
                # After uvicorn configured logging: its loggers must never print a key.
                install_log_redaction()
                log.info("API keys required: %s", describe(auth))
            yield

    app = FastAPI(title="voxline", lifespan=lifespan)
    app.state.auth = auth
    app.state.key_sessions = KeySessions()
    # Without keys: sessions per client address (max_sessions_per_client).
    app.state.client_sessions = KeySessions()
    # Middleware, not a per-route dependency: it guards every route added later, too.
    app.add_middleware(
        AuthMiddleware,
        auth=auth,
        sessions=app.state.key_sessions,
        client_sessions=app.state.client_sessions,
    )
    # CORS for the REST routes, outside the auth check: a browser's preflight carries no key.
    # The origins a browser may call from are the WebSocket's (allowed_origins; empty = any);
    # AuthMiddleware refuses a request from any other with 403, and so its preflight fails.
    app.add_middleware(
        CORSMiddleware,
        allow_origins=sorted(auth.origins) or ["*"],
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["*"],
        expose_headers=["Retry-After", "X-Sample-Rate", "X-Voxline-Engine"],
        max_age=600,
    )
    app.include_router(demo.router)
    # Every REST route raises HTTPError for its OpenAI-shaped error responses.
    app.add_exception_handler(HTTPError, lambda _request, exc: exc.response())
    routers = [speech_router(settings), batch_router(settings), catalog_router(), metrics_router]
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(405, _method_not_allowed([r for x in routers for r in x.routes]))

    @app.websocket(PATH)
    async def speech_stream(ws: WebSocket) -> None:
        await serve_websocket(ws, ws.app.state.hub)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        hub: Hub = app.state.hub
        checks: dict[str, object] = {}
        try:
            # Bounded: a frozen or partitioned Redis would hold the probe for a socket timeout.
            async with asyncio.timeout(READY_PROBE_TIMEOUT):
                await hub.redis.ping()
                checks["redis"] = "ok"
                _, checks["workers"] = await hub.pool.engine(max_age=0)
        except Exception as exc:
            checks["redis"] = f"unreachable: {exc or type(exc).__name__}"
            checks["workers"] = 0
        checks["return_path"] = "ok" if hub.returns.connected.is_set() else "reconnecting"
        ready = checks["redis"] == "ok" and checks["workers"] and checks["return_path"] == "ok"
        if hub.pool.shard_mismatch:
            checks["job_shards"], ready = hub.pool.shard_mismatch, False
        if hub.draining:
            checks["draining"], ready = True, False
        checks["status"] = "ready" if ready else "not ready"
        checks["sessions"] = len(hub.sessions)
        return JSONResponse(checks, status_code=200 if ready else 503)

    return app


def _method_not_allowed(routes: list[BaseRoute]) -> Callable[..., Awaitable[Response]]:
    """A 405 whose `Allow` names every method the path serves: Starlette's names only those of
    the first route matching the path, and a batch job's path has two (GET, DELETE)."""
    served = [(r.path_regex, r.methods) for r in routes if isinstance(r, Route) and r.methods]

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        methods = {m for regex, ms in served if regex.match(request.url.path) for m in ms}
        if methods:
            exc.headers = {**(exc.headers or {}), "Allow": ", ".join(sorted(methods))}
        return await http_exception_handler(request, exc)

    return handler
