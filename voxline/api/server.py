"""The HTTP server: uvicorn's, with a graceful shutdown that lets sessions finish the sentence
the caller is hearing before they are closed with 1012 (uvicorn alone closes every WebSocket
at once)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

from voxline.api.errors import ResponseAborted

log = logging.getLogger("voxline.api.server")


class _ClientFaultsAreWarnings(logging.Filter):
    """uvicorn logs a client's invalid UTF-8 text frame at ERROR with a traceback (it closes
    1007, rightly): any client could fill the error log with tracebacks. A client's mistake is
    a warning, without the stack."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        aborted = _aborted(record.exc_info[1] if record.exc_info else None)
        if aborted is not None:
            # A REST response cut short on purpose, already explained by the session's log.
            record.msg, record.args = "response aborted: %s", (aborted,)
        elif not str(record.msg).startswith("Invalid UTF-8"):
            return True
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _aborted(exc: BaseException | None) -> ResponseAborted | None:
    if isinstance(exc, ResponseAborted):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        return next(filter(None, (_aborted(e) for e in exc.exceptions)), None)
    return None


# How the WebSocket side of uvicorn is run, by `voxline api`/`serve` and the benchmarks'
# baseline alike:
# - websockets' sans-I/O protocol: the least CPU per frame of uvicorn's implementations
#   (bench/pipeline.py, relay).
# - No permessage-deflate: browsers and most clients offer it, and uvicorn accepts it by
#   default, but audio hardly compresses. Deflating every chunk cost more CPU than the rest of
#   the relay and added about 0.9 ms to every chunk's way to the client (docs/benchmarks.md).
WS_OPTIONS: dict[str, object] = {"ws": "websockets-sansio", "ws_per_message_deflate": False}

_FILTER = _ClientFaultsAreWarnings()


def quiet_client_faults() -> None:
    """Idempotent; call after uvicorn configured logging (its dictConfig keeps filters)."""
    logger = logging.getLogger("uvicorn.error")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)


class Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises SIGTERM after its shutdown so the process dies of it; ours has
            # drained every session, which is a clean exit (status 0).
            self._captured_signals.clear()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop accepting first; uvicorn's own shutdown repeats this harmlessly.
        for server in self.servers:
            server.close()
        app = self.config.app
        hub = getattr(getattr(app, "state", None), "hub", None)
        if hub is not None:
            await hub.shutdown()
        await super().shutdown(sockets)
