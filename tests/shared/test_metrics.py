"""shared/metrics.py: what each helper records (counters are process-wide: deltas only)."""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from voxline.shared import metrics

# Label names each metric may carry; their values come from small fixed sets.
ALLOWED_LABELS = {"engine", "outcome", "trigger", "component", "stream", "at"}


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_metric_is_prefixed_and_labelled_from_fixed_sets() -> None:
    families = [f for f in REGISTRY.collect() if f.name.startswith("voxline_")]
    assert len(families) == 11
    for metric in vars(metrics).values():
        if hasattr(metric, "_labelnames"):
            assert metric._name.startswith("voxline_")
            assert set(metric._labelnames) <= ALLOWED_LABELS, metric._name


def test_a_delivered_sentence() -> None:
    before = (
        value("voxline_first_byte_seconds_count", engine="unit"),
        value("voxline_finish_seconds_sum", engine="unit"),
        value("voxline_sentences_total", outcome="delivered"),
    )
    metrics.sentence_done("unit", 40.0, 1500.0)
    assert value("voxline_first_byte_seconds_count", engine="unit") == before[0] + 1
    assert value("voxline_finish_seconds_sum", engine="unit") == pytest.approx(before[1] + 1.5)
    assert value("voxline_sentences_total", outcome="delivered") == before[2] + 1
    # Seconds, not ms: 40 ms falls in the 50 ms bucket, not below 25 ms.
    assert value("voxline_first_byte_seconds_bucket", engine="unit", le="0.025") == 0
    assert value("voxline_first_byte_seconds_bucket", engine="unit", le="0.05") >= 1


def test_failed_and_cancelled_sentences() -> None:
    failed = value("voxline_sentences_total", outcome="failed")
    cancelled = value("voxline_sentences_total", outcome="cancelled")
    first = value("voxline_first_byte_seconds_count", engine="unit2")
    metrics.sentence_done("unit2", 30.0, 90.0, error=True)
    metrics.sentence_done("unit2", 25.0, 60.0, cancelled=True)
    metrics.sentence_done("unit2", None, None, cancelled=True)  # never started
    assert value("voxline_sentences_total", outcome="failed") == failed + 1
    # A cancelled audio.done is counted with its cancel, not here; its first byte was heard.
    assert value("voxline_sentences_total", outcome="cancelled") == cancelled
    assert value("voxline_first_byte_seconds_count", engine="unit2") == first + 2
    assert value("voxline_finish_seconds_count", engine="unit2") == 0


def test_a_cancel_counts_only_when_it_dropped_work() -> None:
    trigger = value("voxline_cancellations_total", trigger="disconnect")
    cancelled = value("voxline_sentences_total", outcome="cancelled")
    metrics.cancelled("disconnect", 0)
    assert value("voxline_cancellations_total", trigger="disconnect") == trigger
    metrics.cancelled("disconnect", 3)
    assert value("voxline_cancellations_total", trigger="disconnect") == trigger + 1
    assert value("voxline_sentences_total", outcome="cancelled") == cancelled + 3


@pytest.mark.parametrize(
    ("outcome", "label"),
    [
        ("completed", "completed"),
        ("failed", "failed"),
        ("cancelled", "cancelled"),
        ("skipped_cancelled", "skipped"),
        ("orphaned", "orphaned"),
        ("released", "released"),
        ("lost", "lost"),
    ],
)
def test_job_outcomes(outcome: str, label: str) -> None:
    before = value("voxline_worker_sentences_total", outcome=label)
    metrics.job_settled(outcome)
    assert value("voxline_worker_sentences_total", outcome=label) == before + 1


def test_job_start_records_queue_wait_and_batch() -> None:
    count = value("voxline_worker_queue_wait_seconds_count", stream="rest")
    low = value("voxline_worker_queue_wait_seconds_bucket", stream="first", le="0.001")
    batch = value("voxline_worker_batch_size_sum", at="job_start")
    metrics.job_started("rest", time.time() - 0.2, 2)
    # A front end whose clock runs ahead: no negative wait.
    metrics.job_started("first", time.time() + 5, 1)
    assert value("voxline_worker_queue_wait_seconds_count", stream="rest") == count + 1
    assert value("voxline_worker_queue_wait_seconds_bucket", stream="first", le="0.001") == low + 1
    assert value("voxline_worker_batch_size_sum", at="job_start") == batch + 3


def test_real_time_factor() -> None:
    total = value("voxline_worker_rtf_sum", engine="unit")
    count = value("voxline_worker_rtf_count", engine="unit")
    metrics.synthesized("unit", 0.5, 48000, 24000)  # 0.5 s for 2 s of audio
    metrics.synthesized("unit", 0.5, 0, 24000)  # no audio: no ratio
    assert value("voxline_worker_rtf_sum", engine="unit") == pytest.approx(total + 0.25)
    assert value("voxline_worker_rtf_count", engine="unit") == count + 1


def test_engine_steps_and_redis_errors() -> None:
    steps = value("voxline_worker_batch_size_count", at="engine_step")
    errors = value("voxline_redis_errors_total", component="claim")
    metrics.engine_step(5)
    metrics.redis_error("claim")
    assert value("voxline_worker_batch_size_count", at="engine_step") == steps + 1
    assert value("voxline_redis_errors_total", component="claim") == errors + 1
