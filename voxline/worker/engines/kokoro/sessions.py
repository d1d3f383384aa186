"""The model's ONNX Runtime sessions, lent one span at a time to the sentences in flight,
earliest deadline first.

A span's deadline is when its listener would need it (the engine sets it): for the next span
of a sentence that is playing, when what it already sent runs out; for an utterance's opening,
shortly after it was asked for. So with several sentences in flight on one stream, a new
utterance's first clause goes ahead of everything not due sooner, and the rest go in the
order their listeners would run dry."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from typing import Generic, TypeVar

T = TypeVar("T")


class Sessions(Generic[T]):
    def __init__(self, sessions: list[T]) -> None:
        self._free = list(sessions)
        self._waiting: list[tuple[float, int, asyncio.Future[T]]] = []
        self._order = itertools.count()  # equal deadlines: first asked, first served

    @property
    def waiting(self) -> int:
        return sum(not future.done() for _, _, future in self._waiting)

    async def acquire(self, deadline: float) -> T:
        """A session, once it is free and no waiter with an earlier deadline wants it."""
        if self._free and not self.waiting:
            return self._free.pop()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (deadline, next(self._order), future))
        try:
            return await future
        except asyncio.CancelledError:
            # Handed over in the same moment the waiter gave up: pass it on, not lose it.
            if future.done() and not future.cancelled():
                self.release(future.result())
            raise

    def release(self, session: T) -> None:
        while self._waiting:
            _, _, future = heapq.heappop(self._waiting)
            if not future.done():  # a cancelled waiter is skipped
                future.set_result(session)
                return
        self._free.append(session)
