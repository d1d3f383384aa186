"""An in-process transport: the caller is code in this process (REST, tests), so a REST request
runs through the same speech session as a streaming client — one splitter, one queue, one
in-order relay, one cancel path — with no socket and no JSON in between."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from voxline.shared.protocol import ClientMessage
from voxline.speech.transport import Disconnected

# Frames the session may write before the reader takes them: the session then waits, as it
# would on a slow client's socket, instead of piling a long text's audio up in memory.
OUTBOX_FRAMES = 256


@dataclass(frozen=True, slots=True)
class Closed:
    code: int


Frame = dict[str, Any] | bytes | Closed


class LocalTransport:
    def __init__(self) -> None:
        self._open = True
        self._inbox: asyncio.Queue[ClientMessage | None] = asyncio.Queue()  # None: gone
        self._outbox: asyncio.Queue[Frame] = asyncio.Queue(OUTBOX_FRAMES)

    # --- the session's side ---------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._open

    async def receive(self) -> ClientMessage:
        message = await self._inbox.get()
        if message is None:
            raise Disconnected
        return message

    async def send_message(self, message: dict[str, Any]) -> None:
        await self._put(message)

    async def send_audio(self, data: bytes) -> None:
        await self._put(data)

    async def close(self, code: int) -> None:
        if not self._open:
            return
        self._open = False
        await self._outbox.put(Closed(code))

    async def _put(self, frame: Frame) -> None:
        if not self._open:
            raise ConnectionError("the caller is gone")
        await self._outbox.put(frame)

    # --- the caller's side ----------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """A client message, as the caller built it (its type one the contract knows)."""
        self._inbox.put_nowait(ClientMessage(message["type"], message))

    async def next(self) -> Frame:
        """The session's next frame; `Closed` once it closed."""
        return await self._outbox.get()

    def disconnect(self) -> None:
        """The caller went away: the session cancels its work and ends."""
        self._open = False
        self._inbox.put_nowait(None)
        while not self._outbox.empty():  # unblock a session waiting for room
            self._outbox.get_nowait()
