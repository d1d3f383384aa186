"""An in-process transport: the caller is code in this process (REST, tests), so a REST request
runs through the same speech session as a streaming client — one splitter, one queue, one
in-order relay, one cancel path — with no socket and no JSON in between.

`LocalSpeech` is the caller's side: a speech session driven by its verbs (`configure`, `feed`,
`flush`, `done`, `cancel`, `close`), read as typed frames — the server's messages as their
models (shared/messages.py), audio as bytes, `Closed` at the end (`async for frame in ...`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from voxline.shared import messages
from voxline.shared.protocol import ClientMessage
from voxline.speech.backend import Backend
from voxline.speech.session import SpeechSession
from voxline.speech.transport import Disconnected

log = logging.getLogger("voxline.speech.local")

# Frames the session may write before the reader takes them: the session then waits, as it
# would on a slow client's socket, instead of piling a long text's audio up in memory.
OUTBOX_FRAMES = 256


@dataclass(frozen=True, slots=True)
class Closed:
    code: int


Frame = messages.ServerMessage | bytes | Closed


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
        await self._put(messages.read(message))

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


class LocalSpeech:
    """A speech session in this process, its transport this object's."""

    def __init__(self, hub: Backend) -> None:
        self.transport = LocalTransport()
        # The caller here reads voxline's extension messages (session.ready, warning).
        self.session = SpeechSession(hub, self.transport, extensions=True)
        self._task = asyncio.create_task(self.session.run(), name="local-speech")

    def configure(self, **config: Any) -> None:
        self.transport.send({"type": "session.config", **config})

    def feed(self, text: str) -> None:
        self.transport.send({"type": "input.text", "text": text})

    def flush(self) -> None:
        """Speak what is buffered now, without ending the utterance."""
        self.transport.send({"type": "input.flush"})

    def done(self) -> None:
        """The utterance's text is complete."""
        self.transport.send({"type": "input.done"})

    def cancel(self) -> None:
        """Barge-in: everything queued and playing stops."""
        self.transport.send({"type": "input.cancel"})

    def close(self) -> None:
        """Deliver what is pending, then close (the last frame is `Closed(1000)`)."""
        self.transport.send({"type": "session.close"})

    async def next(self) -> Frame:
        return await self.transport.next()

    def __aiter__(self) -> AsyncIterator[Frame]:
        return self._frames()

    async def _frames(self) -> AsyncIterator[Frame]:
        while True:
            frame = await self.next()
            yield frame
            if isinstance(frame, Closed):
                return

    async def aclose(self, timeout: float = 10.0) -> None:
        """End the session now (a no-op once it closed): its outstanding work is cancelled."""
        if self._task.done():
            return
        self.transport.disconnect()
        await asyncio.wait({self._task}, timeout=timeout)
        if not self._task.done():
            log.warning("a local speech session did not end within %g s of its close", timeout)
