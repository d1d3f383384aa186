"""The arq worker's log: voxline's own cron jobs log their runs at DEBUG, batch jobs at INFO
(an idle `voxline serve` would otherwise log publish_stats every 10 s)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import pytest
from arq.constants import result_key_prefix

from voxline.batch import arq_worker
from voxline.batch.arq_worker import CRON_NAMES, make_worker
from voxline.batch.connections import arq_job_id, arq_pool, enqueue_batch
from voxline.shared.config import Settings
from voxline.shared.keys import Keys
from voxline.shared.tasks import stop

ARQ = "arq.worker"


async def _until(check: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


def _cron(record: logging.LogRecord) -> bool:
    """A line about a run of one of voxline's cron jobs, or arq's health line."""
    message = record.getMessage()
    runs = (f"{arrow} {name}" for name in CRON_NAMES for arrow in "→←↻")
    return message.startswith("recording health") or any(run in message for run in runs)


async def test_cron_runs_log_at_debug_and_batch_jobs_at_info(
    redis_url: str,
    key_prefix: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # publish_stats every second instead of every 10 s; the others are not due in the test.
    monkeypatch.setitem(arq_worker.SCHEDULES, "publish_stats", {"second": set(range(60))})
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger=ARQ)  # so that the re-levelled lines are seen
    settings = Settings(redis_url=redis_url, key_prefix=key_prefix)
    # A batch job (of an unknown batch: it ends at once, as "gone"). arq's job ids are not
    # under the key prefix: a fresh one, and its result deleted after.
    job_id = arq_job_id(f"no-such-batch-{uuid.uuid4().hex[:8]}")
    worker = make_worker(settings, poll_delay=0.05)
    worker.health_check_interval = 0.2  # arq's "recording health" line: hourly by default
    task = asyncio.create_task(worker.main())
    pool = arq_pool(settings)
    try:
        await enqueue_batch(pool, Keys(key_prefix).arq_queue, job_id.partition(":")[2])
        await _until(lambda: worker.jobs_complete >= 4, 10)  # the batch job and 3 cron runs
        await asyncio.sleep(0.5)  # a health line after the last cron run
    finally:
        await stop(task)
        await worker.close()
        await pool.delete(result_key_prefix + job_id)
        await pool.aclose()
    arq = [r for r in caplog.records if r.name == ARQ]
    cron = [r for r in arq if _cron(r)]
    ran = [r.getMessage() for r in cron if "→ voxline:publish_stats()" in r.getMessage()]
    assert len(ran) >= 2, [r.getMessage() for r in arq]
    assert any("← voxline:publish_stats ●" in r.getMessage() for r in cron)
    assert any("recording health" in r.getMessage() for r in cron)
    assert {r.levelno for r in cron} == {logging.DEBUG}
    assert all(r.levelname == "DEBUG" for r in cron)
    job = [r for r in arq if job_id in r.getMessage()]
    assert [r.getMessage().split()[1] for r in job] == ["→", "←"], [r.getMessage() for r in arq]
    assert {r.levelno for r in job} == {logging.INFO}
    # arq's start-up lines are not voxline's cron's either.
    assert any(r.levelno == logging.INFO and "Starting worker" in r.getMessage() for r in arq)


def test_cron_lines_are_dropped_unless_arq_logs_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The common case: the root at INFO and its handler at NOTSET (shared/logs.py), so a
    re-levelled record would still be printed: it must not be passed on at all."""
    arq_worker.quiet_cron_logs()
    arq_worker.quiet_cron_logs()  # idempotent
    logger = logging.getLogger(ARQ)
    assert logger.filters.count(arq_worker._QUIET_CRON) == 1
    caplog.set_level(logging.NOTSET)  # the capturing handler takes everything it is passed
    caplog.set_level(logging.INFO, logger=ARQ)
    logger.info("%6.2fs → %s(%s)%s", 0.01, "voxline:publish_stats", "", "")
    logger.info("%6.2fs ← %s ● %s", 0.02, "voxline:trim_streams", "{}")
    logger.info("recording health: %s", "Dec-02 16:00:00 j_complete=7 j_failed=0")
    logger.info("%6.2fs → %s(%s)%s", 0.01, "voxline-batch:b1:synthesize_batch", "'b1'", "")
    logger.error("%6.2fs ! %s failed, %s: %s", 0.1, "voxline:publish_stats", "OSError", "x")
    assert [(r.levelno, r.getMessage().split()[1]) for r in caplog.records] == [
        (logging.INFO, "→"),
        (logging.ERROR, "!"),
    ]
