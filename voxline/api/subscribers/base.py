"""What every return-path subscriber does."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, Protocol

from redis.exceptions import ConnectionError as RedisConnectionError

from voxline.shared import metrics
from voxline.shared.backoff import Backoff

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


# A partitioned or frozen Redis sends nothing, not even a reset: a quiet subscriber connection
# is asked for a PING after PING_AFTER seconds and declared lost when no reply came within
# PONG_DEADLINE, so its sessions learn of the outage in seconds, not at their deadlines.
PING_AFTER = 1.0
PONG_DEADLINE = 2.0


class Liveness:
    """When a subscriber connection must be pinged, or given up on."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._heard = clock()
        self._pinged: float | None = None

    def heard(self) -> None:
        """Anything arrived (a message, a confirmation, a pong)."""
        self._heard = self._clock()
        self._pinged = None

    def verdict(self) -> str:
        """ "ping" (send one now), "dead" (no pong in time) or "" (nothing to do)."""
        now = self._clock()
        if self._pinged is not None:
            return "dead" if now - self._pinged > PONG_DEADLINE else ""
        if now - self._heard > PING_AFTER:
            self._pinged = now
            return "ping"
        return ""


async def check(pubsub: Any, liveness: Liveness) -> None:
    """After a quiet read: ping the server, or drop a connection that stopped answering (the
    next read reconnects and subscribes everything again)."""
    verdict = liveness.verdict()
    if verdict == "ping":
        await pubsub.ping()
    elif verdict == "dead":
        if pubsub.connection is not None:
            await pubsub.connection.disconnect()
        raise RedisConnectionError(f"no reply to PING within {PONG_DEADLINE:g} s")


async def read_forever(
    pubsub: Any, handle: Callable[[dict], None], failed: Callable[[Exception, float], None]
) -> None:
    """Read a pub/sub connection until cancelled: `handle` each message; ping the connection
    when quiet; on an error call `failed(exc, delay)`, wait `delay` (doubling up to 2 s) and
    read on — redis-py reconnects and subscribes everything again on the next read."""
    backoff = Backoff(0.05, cap=2.0)
    liveness = Liveness(asyncio.get_running_loop().time)
    while True:
        try:
            message = await pubsub.get_message(timeout=PING_AFTER)
            backoff.reset()
            if message is None:
                await check(pubsub, liveness)
                continue
            liveness.heard()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            metrics.redis_error("return_path")
            liveness.heard()  # a fresh connection is tried next
            delay = backoff.next()
            failed(exc, delay)
            await asyncio.sleep(delay)
            continue
        handle(message)
