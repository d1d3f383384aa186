"""The return path: every session's audio channel, subscribed by one subscriber per front-end
process (api/subscribers/), each event routed to the session that owns the channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

from voxline.api.subscribers import Subscriber, subscriber_for
from voxline.shared.keys import Keys
from voxline.shared.wire import Event

log = logging.getLogger("voxline.api.returns")

EventHandler = Callable[[Event], None]
# Called with the sessions whose events may have been lost, or None for every session.
LossHandler = Callable[[Collection[str] | None], None]


class ReturnPath:
    """Sessions subscribe when their WebSocket is accepted (pre-connect), so the channel is
    live before the first sentence is queued and no audio can be published into the void."""

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self._keys = keys
        self._subscriber: Subscriber = subscriber_for(redis_url, keys)
        self._handlers: dict[bytes, tuple[str, EventHandler]] = {}
        # Called each time events may have been lost (a connection dropped, a slot moved):
        # whatever was published until the subscription is back is gone, so the sessions fail
        # their outstanding sentences at once.
        self.on_lost: LossHandler | None = None

    @property
    def connected(self) -> asyncio.Event:
        return self._subscriber.connected

    async def start(self) -> None:
        await self._subscriber.start(self._deliver, self._lost)

    async def close(self) -> None:
        await self._subscriber.close()

    async def open(self, session_id: str, handler: EventHandler, timeout: float = 5.0) -> None:
        """Subscribe a session's channel and wait until Redis confirms it."""
        channel = self._keys.audio_channel(session_id).encode()
        self._handlers[channel] = (session_id, handler)
        try:
            await self._subscriber.subscribe(channel, timeout)
        except BaseException:
            self._handlers.pop(channel, None)
            raise

    async def release(self, session_id: str) -> None:
        channel = self._keys.audio_channel(session_id).encode()
        if self._handlers.pop(channel, None) is not None:
            await self._subscriber.unsubscribe(channel)

    @property
    def sessions(self) -> int:
        return len(self._handlers)

    def _deliver(self, channel: bytes, data: bytes) -> None:
        entry = self._handlers.get(channel)
        if entry is None:
            return
        try:
            entry[1](Event.unpack(data))
        except Exception:
            log.exception("bad event on %r", channel)

    def _lost(self, channels: Collection[bytes] | None) -> None:
        if self.on_lost is None:
            return
        sessions = None
        if channels is not None:
            sessions = [self._handlers[c][0] for c in channels if c in self._handlers]
            if not sessions:
                return
        try:
            self.on_lost(sessions)
        except Exception:
            log.exception("return-path loss handler failed")
