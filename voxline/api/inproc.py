"""A WebSocket-shaped pipe inside the process, so a REST request runs through the same
`Session` as a streaming client: one splitter, one queue, one in-order relay, one cancel path.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocketState

from voxline.shared.protocol import EXTENSIONS

# Frames the session may write before the reader takes them: the session then waits, as it
# would on a slow client's socket, instead of piling a long text's audio up in memory.
OUTBOX_FRAMES = 256


@dataclass(frozen=True, slots=True)
class Closed:
    code: int


Frame = dict[str, Any] | bytes | Closed


class LocalSocket:
    """The part of starlette's WebSocket that `Session` uses; the other end is the caller."""

    def __init__(self) -> None:
        self.application_state = WebSocketState.CONNECTING
        # The in-process caller reads voxline's extension messages (session.ready, warning).
        self.scope: dict[str, Any] = {"subprotocols": [EXTENSIONS]}
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._outbox: asyncio.Queue[Frame] = asyncio.Queue(OUTBOX_FRAMES)

    # --- the session's side ---------------------------------------------------------------

    async def accept(self, subprotocol: str | None = None) -> None:
        self.application_state = WebSocketState.CONNECTED

    async def receive(self) -> dict[str, Any]:
        return await self._inbox.get()

    async def send_json(self, message: dict[str, Any]) -> None:
        await self._put(message)

    async def send_bytes(self, data: bytes) -> None:
        await self._put(data)

    async def close(self, code: int = 1000) -> None:
        if self.application_state == WebSocketState.DISCONNECTED:
            return
        self.application_state = WebSocketState.DISCONNECTED
        await self._outbox.put(Closed(code))

    async def _put(self, frame: Frame) -> None:
        if self.application_state != WebSocketState.CONNECTED:
            raise ConnectionError("the caller is gone")
        await self._outbox.put(frame)

    # --- the caller's side ----------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self._inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(message)})

    async def next(self) -> Frame:
        """The session's next frame; `Closed` once it closed."""
        return await self._outbox.get()

    def disconnect(self) -> None:
        """The caller went away: the session cancels its work and ends."""
        self.application_state = WebSocketState.DISCONNECTED
        self._inbox.put_nowait({"type": "websocket.disconnect"})
        while not self._outbox.empty():  # unblock a session waiting for room
            self._outbox.get_nowait()
