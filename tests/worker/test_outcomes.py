"""A job's tally (worker/outcomes.py): the counters it files, and the outcome it settles as."""

from __future__ import annotations

from voxline.worker.outcomes import Outcome, Tally
from voxline.worker.registry import COUNTERS


def test_every_outcome_is_a_counter_of_the_registry() -> None:
    assert {o.value for o in Outcome} <= set(COUNTERS)


def test_a_completed_job_files_its_work() -> None:
    tally = Tally(Outcome.COMPLETED, started=1, chunks=4)
    assert tally.counters() == {
        "taken": 1,
        "started": 1,
        "chunks": 4,
        "chunks_after_cancel": 0,
        "completed": 1,
    }
    assert tally.settled_as is Outcome.COMPLETED


def test_a_job_with_no_outcome_failed_outside_the_engine() -> None:
    tally = Tally()  # malformed, or a bug around the engine
    assert tally.settled_as is Outcome.FAILED
    assert tally.counters() == {"taken": 1, "started": 0, "chunks": 0, "chunks_after_cancel": 0}


def test_a_lost_job_files_only_that_it_was_lost() -> None:
    # The worker that claimed it counts its taking and its work.
    assert Tally(Outcome.LOST, started=1, chunks=3).counters() == {"lost": 1}
