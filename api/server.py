"""The HTTP server: uvicorn's, with a graceful shutdown that lets sessions finish the sentence
the caller is hearing before they are closed with 1012 (uvicorn alone closes every WebSocket
at once)."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator

import uvicorn

log = logging.getLogger("voxline.api.server")


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
