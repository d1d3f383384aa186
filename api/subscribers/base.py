"""What every return-path subscriber does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Protocol

# Called with (channel, payload) for every message on a subscribed channel.
Deliver = Callable[[bytes, bytes], None]
# Called when messages may have been lost: on the given channels, or on all of them (None).
Lost = Callable[[Collection[bytes] | None], None]


class Subscriber(Protocol):
    # Set while every connection is up and subscribed; new sessions wait for it.
    connected: asyncio.Event

    async def start(self, deliver: Deliver, lost: Lost) -> None:
        """Connect and begin delivering; returns once connected."""

    async def subscribe(self, channel: bytes, timeout: float) -> None:
        """Subscribe and return once the server confirmed it (nothing published after that is
        missed); raise and leave nothing behind on failure."""

    async def unsubscribe(self, channel: bytes) -> None:
        """Stop delivering `channel`; quiet if the connection is down (the subscription is then
        dropped when it comes back)."""

    async def close(self) -> None: ...
