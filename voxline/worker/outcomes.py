"""How a job ends, and what it counted on the way: one tally per job, settled once."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.StrEnum):
    """The values are the worker's counter names (registry.COUNTERS) and metric labels."""

    COMPLETED = "completed"
    FAILED = "failed"  # the engine failed, or the work failed around it
    CANCELLED = "cancelled"  # stopped by a cancel while it was being synthesized
    SKIPPED_CANCELLED = "skipped_cancelled"  # cancelled before synthesis began
    ORPHANED = "orphaned"  # its session's front end (or its batch) is gone
    RELEASED = "released"  # handed back unstarted at shutdown, for another worker
    LOST = "lost"  # another worker claimed it while this one was cut off


@dataclass(slots=True)
class Tally:
    """One job's counters. `outcome` None at settling: it failed outside the engine (a
    malformed job, a bug), which counts as failed."""

    outcome: Outcome | None = None
    started: int = 0
    chunks: int = 0
    chunks_after_cancel: int = 0

    @property
    def settled_as(self) -> Outcome:
        return self.outcome or Outcome.FAILED

    def counters(self) -> dict[str, int]:
        """The registry's counter deltas for this job."""
        if self.outcome is Outcome.LOST:
            return {Outcome.LOST: 1}  # another worker counts its work
        counts = {
            "taken": 1,
            "started": self.started,
            "chunks": self.chunks,
            "chunks_after_cancel": self.chunks_after_cancel,
        }
        if self.outcome is not None:
            counts[self.outcome] = 1
        return counts
