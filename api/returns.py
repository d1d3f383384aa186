"""The return path: one pub/sub connection per front-end process, multiplexing the audio
channels of all its sessions, routing each event to the session that owns the channel."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.connections import connect
from shared.keys import Keys
from shared.wire import Event

log = logging.getLogger("voxline.api.returns")

EventHandler = Callable[[Event], None]

# How long one pub/sub read waits before looping (to run health checks); not a poll interval:
# a message wakes the read at once.
_READ_WAIT = 5.0


class ReturnPath:
    """Subscribes session channels on a shared connection and dispatches their events.

    Sessions subscribe when their WebSocket is accepted (pre-connect), so the channel is
    live before the first sentence is queued and no audio can be published into the void.
    """

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self._keys = keys
        self._client: aioredis.Redis = connect(redis_url, blocking=True)
        self._pubsub = self._client.pubsub()
        self._handlers: dict[bytes, EventHandler] = {}
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._control = f"{keys.prefix}:api:control".encode()
        self.connected = asyncio.Event()
        # Called once each time the connection is lost: whatever is published until it is
        # back is gone, so the sessions fail their outstanding sentences at once.
        self.on_lost: Callable[[], None] | None = None
        self._stale: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # A pub/sub connection needs one subscription before it can be read from.
        await self._pubsub.subscribe(self._control)
        self._reader = asyncio.create_task(self._read_loop(), name="voxline-return-path")
        await asyncio.wait_for(self.connected.wait(), timeout=10)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def open(self, session_id: str, handler: EventHandler, timeout: float = 5.0) -> None:
        """Subscribe a session's channel and wait until Redis confirms it."""
        channel = self._keys.audio_channel(session_id).encode()
        self._handlers[channel] = handler
        confirmed = asyncio.get_running_loop().create_future()
        self._pending[channel] = confirmed
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(confirmed, timeout)
        except BaseException:
            self._handlers.pop(channel, None)
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(channel)  # it may still have gone through
            raise
        finally:
            self._pending.pop(channel, None)

    async def release(self, session_id: str) -> None:
        channel = self._keys.audio_channel(session_id).encode()
        if self._handlers.pop(channel, None) is not None:
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
                await self._pubsub.unsubscribe(channel)

    @property
    def sessions(self) -> int:
        return len(self._handlers)

    async def _read_loop(self) -> None:
        backoff = 0.05
        while True:
            try:
                message = await self._pubsub.get_message(timeout=_READ_WAIT)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # redis-py reconnects and re-subscribes every channel on the next read. What was
                # published meanwhile is gone: the per-sentence sequence numbers and deadlines
                # turn that loss into explicit sentence errors.
                if self.connected.is_set():
                    self.connected.clear()
                    if self.on_lost is not None:
                        try:
                            self.on_lost()
                        except Exception:
                            log.exception("return-path loss handler failed")
                log.warning("return path lost (%s); reconnecting in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if message is None:
                continue
            self._dispatch(message)

    def _dispatch(self, message: dict) -> None:
        kind = message["type"]
        channel = message["channel"]
        if kind == "message":
            handler = self._handlers.get(channel)
            if handler is None:
                return
            try:
                handler(Event.unpack(message["data"]))
            except Exception:
                log.exception("bad event on %r", channel)
        elif kind == "subscribe":
            if channel == self._control:
                self.connected.set()
            future = self._pending.get(channel)
            if future is not None and not future.done():
                future.set_result(None)
            elif channel != self._control and channel not in self._handlers:
                # A session released while Redis was unreachable: its unsubscribe never went
                # out and the reconnect subscribed it again.
                task = asyncio.create_task(self._drop_stale(channel))
                self._stale.add(task)
                task.add_done_callback(self._stale.discard)

    async def _drop_stale(self, channel: bytes) -> None:
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
            await self._pubsub.unsubscribe(channel)
