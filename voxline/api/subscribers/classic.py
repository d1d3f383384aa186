"""Classic pub/sub on one connection per front-end process (a Redis server, or in memory)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from voxline.api.subscribers.base import Deliver, Lost, read_forever
from voxline.shared.connections import TRANSIENT_ERRORS, connect, pubsub
from voxline.shared.keys import Keys
from voxline.shared.tasks import stop

log = logging.getLogger("voxline.api.subscribers")


class ClassicSubscriber:
    """SUBSCRIBE on a shared connection. A control channel nobody publishes on makes the
    connection readable before any session exists, and its confirmation after a reconnect
    says that redis-py has subscribed every channel again."""

    def __init__(self, redis_url: str, keys: Keys) -> None:
        self._client = connect(redis_url, blocking=True)
        self._pubsub = pubsub(self._client)
        self._control = f"{keys.prefix}:api:control".encode()
        self._wanted: set[bytes] = set()
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._stale: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()

    async def start(self, deliver: Deliver, lost: Lost) -> None:
        await self._pubsub.subscribe(self._control)
        self._reader = asyncio.create_task(self._read_loop(deliver, lost), name="voxline-return")
        await asyncio.wait_for(self.connected.wait(), timeout=10)

    async def close(self) -> None:
        await stop(self._reader)
        with contextlib.suppress(Exception):
            await self._pubsub.aclose()
        with contextlib.suppress(Exception):
            await self._client.aclose()

    async def subscribe(self, channel: bytes, timeout: float) -> None:
        self._wanted.add(channel)
        confirmed = asyncio.get_running_loop().create_future()
        self._pending[channel] = confirmed
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(confirmed, timeout)
        except BaseException:
            self._wanted.discard(channel)
            with contextlib.suppress(Exception):
                await self._pubsub.unsubscribe(channel)  # it may still have gone through
            raise
        finally:
            self._pending.pop(channel, None)

    async def unsubscribe(self, channel: bytes) -> None:
        if channel in self._wanted:
            self._wanted.discard(channel)
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._pubsub.unsubscribe(channel)

    async def _read_loop(self, deliver: Deliver, lost: Lost) -> None:
        def handle(message: dict) -> None:
            kind, channel = message["type"], message["channel"]
            if kind == "message":
                deliver(channel, message["data"])
            elif kind == "subscribe":
                self._confirmed(channel)

        def failed(exc: Exception, delay: float) -> None:
            # What was published until the connection is back is gone.
            if self.connected.is_set():
                self.connected.clear()
                lost(None)
            log.warning("return path lost (%s); reconnecting in %.2fs", exc, delay)

        await read_forever(self._pubsub, handle, failed)

    def _confirmed(self, channel: bytes) -> None:
        if channel == self._control:
            self.connected.set()
            return
        future = self._pending.get(channel)
        if future is not None and not future.done():
            future.set_result(None)
        elif channel not in self._wanted:
            # A session released while Redis was unreachable: its unsubscribe never went out
            # and the reconnect subscribed it again.
            task = asyncio.create_task(self._drop_stale(channel))
            self._stale.add(task)
            task.add_done_callback(self._stale.discard)

    async def _drop_stale(self, channel: bytes) -> None:
        with contextlib.suppress(*TRANSIENT_ERRORS):
            await self._pubsub.unsubscribe(channel)
