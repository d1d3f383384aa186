"""Every Prometheus metric voxline exports, defined once, on prometheus_client's default registry.

Front ends serve them on `GET /metrics`, a worker process on `--metrics-port`; `voxline serve`
(API and worker in one process) shows both on `/metrics`. Label values come from small fixed
sets (engine names, outcomes), never session ids.

| metric | type {labels} | what |
|---|---|---|
| `voxline_first_byte_seconds` | histogram {engine} | text complete → first audio byte sent |
| `voxline_finish_seconds` | histogram {engine} | text complete → last byte, delivered ones |
| `voxline_sentences_total` | counter {outcome} | `delivered`, `failed`, `cancelled` |
| `voxline_cancellations_total` | counter {trigger} | cancels that dropped work, see `Trigger` |
| `voxline_active_sessions` | gauge | WebSocket sessions open on this process |
| `voxline_queue_backlog` | gauge | jobs in the streams, read on scrape (NaN: no answer) |
| `voxline_redis_errors_total` | counter {component} | both sides, see `Component` |
| `voxline_worker_queue_wait_seconds` | histogram {stream} | enqueue → a worker starts it |
| `voxline_worker_batch_size` | histogram {at} | sentences synthesized at once |
| `voxline_worker_rtf` | histogram {engine} | synthesis time / audio duration |
| `voxline_worker_sentences_total` | counter {outcome} | jobs settled: worker/outcomes.py |

The first six are the front end's, the last four the worker's. The backlog is global: every
front end reports the same value (aggregate with max, not sum). The queue wait compares the
front end's wall clock with the worker's. The batch size is sampled at each `job_start` (jobs
the worker holds) and each `engine_step` of a batching engine (pocket-tts).
"""

from __future__ import annotations

import time
from typing import Literal

from prometheus_client import Counter, Gauge, Histogram

# 5 ms .. 10 s: first audio is tens of ms on a warm pool, seconds when the pool is swamped.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 1.5, 2.5, 5, 10)
# A sentence's last byte comes about its audio's duration after the first on a real-time engine.
FINISH_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60)
# Up to queue_timeout (30 s): past it the front end has failed the sentence anyway.
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.85, 1, 1.25, 1.5, 2, 4)

Outcome = Literal["delivered", "failed", "cancelled"]
Trigger = Literal["barge_in", "disconnect", "shutdown", "failed_sentence"]
Component = Literal[
    # front end
    "session",  # admission and enqueueing
    "leases",
    "return_path",
    "metrics",  # the backlog read on scrape
    # worker
    "read",  # the blocking jobs readers (and handing surplus back)
    "claim",  # looking for abandoned jobs
    "refresh",  # keeping held jobs alive, lease checks
    "job",  # Redis lost under a sentence
    "heartbeat",
    "cancel_listener",
]

FIRST_BYTE = Histogram(
    "voxline_first_byte_seconds",
    "Sentence text complete to its first audio byte sent to the client",
    ["engine"],
    buckets=LATENCY_BUCKETS,
)
FINISH = Histogram(
    "voxline_finish_seconds",
    "Sentence text complete to its last audio byte sent, delivered sentences",
    ["engine"],
    buckets=FINISH_BUCKETS,
)
SENTENCES = Counter("voxline_sentences", "Sentences ended on the front end", ["outcome"])
CANCELLATIONS = Counter(
    "voxline_cancellations", "Cancels that stopped undelivered work, by trigger", ["trigger"]
)
ACTIVE_SESSIONS = Gauge("voxline_active_sessions", "WebSocket sessions open on this process")
QUEUE_BACKLOG = Gauge(
    "voxline_queue_backlog", "Jobs in the streams (waiting or being synthesized), read on scrape"
)
REDIS_ERRORS = Counter("voxline_redis_errors", "Redis errors seen, by component", ["component"])

WORKER_QUEUE_WAIT = Histogram(
    "voxline_worker_queue_wait_seconds",
    "A job's enqueue to a worker starting it (queue lag)",
    ["stream"],
    buckets=QUEUE_WAIT_BUCKETS,
)
WORKER_BATCH_SIZE = Histogram(
    "voxline_worker_batch_size",
    "Sentences a worker synthesizes at once, sampled per job start and per engine step",
    ["at"],
    buckets=BATCH_BUCKETS,
)
WORKER_RTF = Histogram(
    "voxline_worker_rtf",
    "Synthesis wall time over audio duration, per completed sentence",
    ["engine"],
    buckets=RTF_BUCKETS,
)
WORKER_SENTENCES = Counter("voxline_worker_sentences", "Jobs settled by a worker", ["outcome"])


# --- front end --------------------------------------------------------------------------------


def sentence_done(
    engine: str,
    first_byte_ms: float | None,
    finish_ms: float | None,
    *,
    error: bool = False,
    cancelled: bool = False,
) -> None:
    """A sentence's audio.done. A cancelled one is counted by `cancelled()`, with the rest of
    its cancel; its first byte was still heard, so it is observed."""
    if first_byte_ms is not None:
        FIRST_BYTE.labels(engine).observe(first_byte_ms / 1000)
    if cancelled:
        return
    SENTENCES.labels("failed" if error else "delivered").inc()
    if not error and finish_ms is not None:
        FINISH.labels(engine).observe(finish_ms / 1000)


def cancelled(trigger: Trigger, sentences: int) -> None:
    """A cancel that dropped `sentences` undelivered sentences; one that dropped nothing is not
    counted (every connection ends with a session-wide cancel)."""
    if sentences:
        CANCELLATIONS.labels(trigger).inc()
        SENTENCES.labels("cancelled").inc(sentences)


def redis_error(component: Component) -> None:
    REDIS_ERRORS.labels(component).inc()


# --- worker -----------------------------------------------------------------------------------

# The label of each outcome (worker/outcomes.py) where it differs from the outcome's name.
_LABELS = {"skipped_cancelled": "skipped"}


def job_started(stream: str, enqueued_at: float, held: int) -> None:
    """A worker starts a job of `stream` (first, rest, batch); `held` is how many it holds
    now, this one included."""
    # Wall clocks of two hosts: a skewed clock must not give a negative wait.
    wait = max(time.time() - enqueued_at, 0.0)
    WORKER_QUEUE_WAIT.labels(stream).observe(wait)
    WORKER_BATCH_SIZE.labels("job_start").observe(held)


def job_settled(outcome: str) -> None:
    """A job is settled, as `outcome` (worker/outcomes.py's Outcome)."""
    WORKER_SENTENCES.labels(_LABELS.get(outcome, outcome)).inc()


def synthesized(engine: str, seconds: float, samples: int, sample_rate: int) -> None:
    if samples > 0:
        WORKER_RTF.labels(engine).observe(seconds * sample_rate / samples)


def engine_step(batch: int) -> None:
    """One step of a batching engine over `batch` sentences (called from its thread)."""
    WORKER_BATCH_SIZE.labels("engine_step").observe(batch)
