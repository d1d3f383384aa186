"""The kokoro engine's learnt pace and the first-sentence cut it drives (no weights needed)."""

from __future__ import annotations

import pytest

from worker.engines.kokoro.engine import JOIN_PAUSE_S, MAX_STALL_S, split_first
from worker.engines.kokoro.pace import Pace

SENTENCE = "Well, as I was saying yesterday, the weather has been wonderful all week long."


def test_two_timed_spans_give_the_fixed_and_the_per_second_cost() -> None:
    pace = Pace.fitted((0.35, 0.5), (1.0, 1.5))
    assert pace.rtf == pytest.approx(0.65)
    assert pace.overhead_s == pytest.approx(0.025)
    assert pace.compute_s(100) == pytest.approx(0.025 + 0.65 * 100 * pace.seconds_per_char)


def test_observed_spans_move_the_estimate_towards_the_machines_speed() -> None:
    pace = Pace(overhead_s=0.1, rtf=0.5)
    for _ in range(30):  # the machine got busy: 2 s of audio now take 2.1 s
        pace.observe(chars=35, compute_s=2.1, audio_s=2.0, speed=1.0)
    assert pace.rtf == pytest.approx(1.0, abs=0.01)
    assert pace.seconds_per_char == pytest.approx(2.0 / 35, abs=1e-3)
    pace.observe(chars=3, compute_s=9.0, audio_s=0.01, speed=1.0)  # too short to tell
    assert pace.rtf == pytest.approx(1.0, abs=0.01)


def test_a_fast_machine_cuts_at_the_first_clause() -> None:
    fast = Pace(overhead_s=0.05, rtf=0.1)
    assert split_first(SENTENCE, 60, fast) == [
        "Well, as I was saying yesterday,",
        "the weather has been wonderful all week long.",
    ]


def test_the_cut_waits_for_a_clause_whose_rest_is_ready_in_time() -> None:
    text = "Right, so here is the plan for today, then we eat lunch at noon and go home."
    spans = lambda pace: split_first(text, 60, pace)  # noqa: E731
    # "Right, so" is too short a head; "…for today," is the first real clause.
    assert spans(None)[0] == "Right, so here is the plan for today,"
    medium = Pace(overhead_s=0.3, rtf=0.6)
    head, tail = spans(medium)
    assert medium.compute_s(len(tail)) <= medium.audio_s(len(head)) + JOIN_PAUSE_S + MAX_STALL_S
    # Too slow for any cut: the sentence stays whole (a later start, no stall mid-sentence).
    assert spans(Pace(overhead_s=0.5, rtf=1.5)) == [text]
