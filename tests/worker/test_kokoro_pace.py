"""The kokoro engine's learnt pace and the first-sentence cut it drives (no weights needed)."""

from __future__ import annotations

import pytest

from voxline.worker.engines.kokoro.engine import (
    JOIN_PAUSE_S,
    MAX_SPANS,
    MAX_STALL_S,
    MIN_HEAD_CHARS,
    split_first,
)
from voxline.worker.engines.kokoro.pace import Pace

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


def longest_wait(spans: list[str], pace: Pace) -> float:
    """How long a listener who plays each span as soon as it exists waits at the worst join,
    the spans made one after another at `pace` (the oracle the cut is held to)."""
    ready = pace.compute_s(len(spans[0]))
    plays_until = ready + pace.audio_s(len(spans[0])) + JOIN_PAUSE_S
    worst = 0.0
    for span in spans[1:]:
        ready += pace.compute_s(len(span))
        worst = max(worst, ready - plays_until)
        plays_until = max(plays_until, ready) + pace.audio_s(len(span)) + JOIN_PAUSE_S
    return worst


def test_without_a_pace_the_first_clause_goes_alone() -> None:
    assert split_first(SENTENCE, 24) == [
        "Well,",
        "as I was saying yesterday, the weather has been wonderful all week long.",
    ]
    assert split_first("Short one, really.", 24) == ["Short one, really."]
    assert split_first("x" * 70, 24) == ["x" * 70]  # no mark: whole
    # "Oh," is under MIN_HEAD_CHARS: the first clause long enough is the head.
    assert split_first("Oh, I see, that makes a lot of sense to me now.", 24)[0] == "Oh, I see,"
    assert len("Oh,") < MIN_HEAD_CHARS


def test_a_fast_machine_starts_with_the_shortest_clause() -> None:
    fast = Pace(overhead_s=0.05, rtf=0.1)
    spans = split_first(SENTENCE, 24, fast)
    assert spans == [
        "Well,",
        "as I was saying yesterday, the weather has been wonderful all week long.",
    ]
    assert longest_wait(spans, fast) <= MAX_STALL_S


def test_a_rest_too_long_to_be_ready_in_time_is_cut_again() -> None:
    # At this pace the rest after "Well," would keep the listener waiting; after the next
    # clause it would not: three spans, the first audio still the shortest clause's.
    medium = Pace(overhead_s=0.12, rtf=0.21)
    assert longest_wait(["Well,", " ".join(SENTENCE.split()[1:])], medium) > MAX_STALL_S
    spans = split_first(SENTENCE, 24, medium)
    assert spans == [
        "Well,",
        "as I was saying yesterday,",
        "the weather has been wonderful all week long.",
    ]
    assert longest_wait(spans, medium) <= MAX_STALL_S
    # Never more than MAX_SPANS, whatever the marks.
    many = "One two, three four, five six, seven eight, nine ten, and that is all of it now."
    for pace in (Pace(overhead_s=0.0, rtf=0.05), medium, Pace(overhead_s=0.2, rtf=0.4)):
        cut = split_first(many, 24, pace)
        assert len(cut) <= MAX_SPANS and " ".join(cut) == many
        assert longest_wait(cut, pace) <= MAX_STALL_S


def test_the_cut_waits_for_a_clause_whose_rest_is_ready_in_time() -> None:
    text = "Right, so here is the plan for today, then we eat lunch at noon and go home."
    slower = Pace(overhead_s=0.3, rtf=0.55)
    spans = split_first(text, 24, slower)
    assert spans[0] == "Right, so here is the plan for today,"  # "Right," would stall
    assert longest_wait(spans, slower) <= MAX_STALL_S
    # Too slow for any cut: the sentence stays whole (a later start, no stall mid-sentence).
    assert split_first(text, 24, Pace(overhead_s=0.5, rtf=1.5)) == [text]
