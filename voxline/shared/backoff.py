"""Retry delays that grow exponentially up to a cap: quick after a blip, gentle during an
outage. One helper for every reconnect or retry loop of voxline (redis-py's own retries use
its `ExponentialBackoff`, see shared/connections.py)."""

from __future__ import annotations

import math


class Backoff:
    """Delays `first`, `first * factor`, `first * factor**2`, ... never above `cap`.

    `next()` returns the delay to wait now and advances; `reset()`, after a success, starts
    over at `first`. Not thread-safe: one per loop.
    """

    __slots__ = ("first", "cap", "factor", "_delay")

    def __init__(self, first: float, cap: float = math.inf, *, factor: float = 2.0) -> None:
        # first == 0 is allowed: tests patch delays to nothing.
        if not 0 <= first <= cap:
            raise ValueError(f"backoff wants 0 <= first <= cap, got first={first}, cap={cap}")
        if factor < 1:
            raise ValueError(f"backoff factor must be at least 1, got {factor}")
        self.first = first
        self.cap = cap
        self.factor = factor
        self._delay = first

    def next(self) -> float:
        delay = self._delay
        self._delay = min(delay * self.factor, self.cap)
        return delay

    def reset(self) -> None:
        self._delay = self.first
