"""The jobs a worker holds, and the room left for more: shared by its readers, which take jobs
only into free slots, and its runner, which frees a slot when a job is settled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from voxline.worker.engines.base import Cancellation

EntryKey = tuple[str, bytes]  # (stream, entry id)


@dataclass(eq=False)
class Held:
    """A job this worker holds, from the moment it was read until it is settled."""

    task: asyncio.Task[None] | None = None
    token: Cancellation | None = None
    lost: bool = False  # another worker claimed it: stop, and do not acknowledge
    # Acknowledged in the write that carried DONE: off the pending list while its task ends,
    # which the refresh must not take for a claim by another worker.
    acked: bool = False
    batch: bool = False  # a batch job's sentence (read from a batch stream)


class Slots:
    def __init__(self, total: Callable[[], int], batch_share: float) -> None:
        self.total = total  # the engine's capacity may change as it measures itself
        self._batch_share = batch_share
        self.jobs: dict[EntryKey, Held] = {}
        self.claiming = 0  # slots promised to a claim of abandoned jobs under way
        self._freed = asyncio.Event()

    def room(self) -> int:
        """Slots neither running a job nor promised to a claim under way."""
        return self.total() - len(self.jobs) - self.claiming

    def batch_room(self) -> int:
        """Slots a batch sentence may take now: batch holds at most `batch_share` of the slots
        (at least one), so real-time sentences always find the rest free."""
        cap = max(1, int(self.total() * self._batch_share))
        held = sum(1 for h in self.jobs.values() if h.batch)
        return min(cap - held, self.room())

    async def wait_free(self, room: Callable[[], int] | None = None) -> int:
        room = room or self.room
        while True:
            free = room()
            if free > 0:
                return free
            self._freed.clear()
            await self._freed.wait()

    def hold(self, key: EntryKey, held: Held) -> None:
        self.jobs[key] = held

    def release(self, key: EntryKey) -> None:
        self.jobs.pop(key, None)
        self._freed.set()

    def end_claim(self) -> None:
        self.claiming = 0
        self._freed.set()
