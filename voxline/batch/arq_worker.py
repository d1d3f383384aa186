"""The arq worker (`voxline arq`): runs batch jobs and the housekeeping cron.

Any number of these may run: arq starts each queued job on one of them, a cron run is one arq
job per tick whose id names the tick (so several replicas run it once), and every housekeeping
task is idempotent besides.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import Any

import arq.worker
from arq import cron, func
from arq.worker import Worker

from voxline.batch.callbacks import parse_allow
from voxline.batch.connections import SYNTHESIZE_BATCH, arq_pool
from voxline.batch.coordinator import Coordinator
from voxline.batch.housekeeping import CRON_TASKS
from voxline.shared.config import Settings
from voxline.shared.connections import Client, connect, is_memory
from voxline.shared.keys import Keys
from voxline.shared.tasks import stop

log = logging.getLogger("voxline.batch")

# When each housekeeping task runs (arq cron fields). Statistics are for dashboards, so often;
# the rest are clean-ups whose backlog grows slowly.
SCHEDULES: dict[str, dict[str, Any]] = {
    "publish_stats": {"second": set(range(0, 60, 10))},
    "trim_streams": {"second": 5},
    "drain_dead_letters": {"second": 15},
    "expire_orphans": {"minute": set(range(0, 60, 5)), "second": 25},
}
# A batch job dies with its arq process this many times before arq gives up on it.
MAX_TRIES = 25
CRON_NAMES = frozenset(f"voxline:{name}" for name in CRON_TASKS)


class QuietCron(logging.Filter):
    """arq logs every job's start (`→`) and end (`←`) at INFO, and, hourly, "recording health":
    with publish_stats every 10 s an idle server would log six lines a minute. This filter on
    the `arq.worker` logger re-levels those lines of voxline's own cron jobs to DEBUG (dropped
    unless the logger is enabled for DEBUG); batch jobs' lines and every warning and error,
    a cron's failure included, stay as arq logs them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not self._ours(record):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        return True

    @staticmethod
    def _ours(record: logging.LogRecord) -> bool:
        if record.msg == "recording health: %s":
            return True
        # '%6.2fs → %s(%s)%s', '%6.2fs ← %s ● %s', '%6.2fs ↻ %s …': a cron's ref is its name.
        args = record.args
        return isinstance(args, tuple) and len(args) >= 2 and args[1] in CRON_NAMES


_QUIET_CRON = QuietCron()


def quiet_cron_logs() -> None:
    """Idempotent; a logger's filters survive logging.config.dictConfig."""
    logger = logging.getLogger("arq.worker")
    if _QUIET_CRON not in logger.filters:
        logger.addFilter(_QUIET_CRON)


@dataclass(frozen=True, slots=True)
class _Context:
    settings: Settings
    keys: Keys
    redis: Client


async def synthesize_batch(ctx: dict[str, Any], batch_id: str) -> str:
    v: _Context = ctx["voxline"]
    coordinator = Coordinator(
        v.redis, v.keys, v.settings, batch_id, arq=ctx["redis"], arq_job_id=ctx["job_id"]
    )
    return await coordinator.run()


def _cron_job(name: str) -> Any:
    task = CRON_TASKS[name]

    async def run(ctx: dict[str, Any]) -> Any:
        v: _Context = ctx["voxline"]
        return await task(v.redis, v.keys, v.settings)

    run.__qualname__ = run.__name__ = name
    # A tick's run ends well before the next tick; arq keeps no result of it.
    return cron(run, name=f"voxline:{name}", keep_result=0, timeout=300, **SCHEDULES[name])


def make_worker(settings: Settings, *, burst: bool = False, poll_delay: float = 0.5) -> Worker:
    parse_allow(settings.callback_allow)  # a bad VOXLINE_CALLBACK_ALLOW fails at start-up
    keys = Keys(settings.key_prefix, settings.job_shards)
    pool = arq_pool(settings)
    quiet_cron_logs()
    if is_memory(settings.arq_redis_url or settings.redis_url):
        # arq logs the server's INFO at start, which the in-memory Redis does not answer.
        arq.worker.log_redis_info = _server_info

    async def startup(ctx: dict[str, Any]) -> None:
        ctx["voxline"] = _Context(settings, keys, connect(settings.redis_url))

    async def shutdown(ctx: dict[str, Any]) -> None:
        if "voxline" in ctx:
            await ctx["voxline"].redis.aclose()

    return Worker(
        functions=[
            func(
                synthesize_batch,
                name=SYNTHESIZE_BATCH,
                timeout=settings.batch_timeout,
                max_tries=MAX_TRIES,
                keep_result=settings.batch_result_ttl,
            )
        ],
        cron_jobs=[_cron_job(name) for name in CRON_TASKS],
        redis_pool=pool,
        queue_name=keys.arq_queue,
        on_startup=startup,
        on_shutdown=shutdown,
        burst=burst,
        poll_delay=poll_delay,
        handle_signals=False,  # the caller owns the signals (voxline arq, voxline serve)
        max_jobs=16,
        # A SIGTERM'd job is put back for another process; its work so far is kept in Redis.
        retry_jobs=True,
    )


async def run_arq(settings: Settings, *, poll_delay: float = 0.5) -> None:
    """Serve batch jobs and the cron until cancelled; running jobs are put back on the queue
    (they resume where they were, on this or another arq process)."""
    worker = make_worker(settings, poll_delay=poll_delay)
    log.info("arq worker: queue %s", worker.queue_name)
    main = asyncio.create_task(worker.main(), name="voxline-arq")
    try:
        await main
    finally:
        # A cancel can be swallowed inside redis-py's reads (shared/tasks.py): repeated.
        await stop(main)
        # arq lets a job cancelled while it records its end raise out of close(); the cancel
        # that stops us is re-raised anyway.
        with contextlib.suppress(asyncio.CancelledError):
            await worker.close()


_log_redis_info = arq.worker.log_redis_info


async def _server_info(redis: Any, log_func: Any) -> None:
    """arq's start-up log line, without INFO on the in-memory Redis (a process may also run
    workers on a server: those keep arq's own)."""
    if redis.connection_pool.connection_class.__module__.startswith("fakeredis"):
        log_func("redis: in memory")
    else:
        await _log_redis_info(redis, log_func)
