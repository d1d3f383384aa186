"""Stopping background tasks for sure."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("voxline.tasks")


async def stop(*tasks: asyncio.Task[object] | None, within: float = 10.0) -> None:
    """Cancel `tasks` and wait until they have ended.

    A cancel can be swallowed inside a library: on Python 3.11, one that races the expiry of an
    `asyncio.timeout` (redis-py wraps its reads in one) comes out as a TimeoutError, which a
    reconnecting loop then treats as a network error and goes on. So the cancel is repeated
    until the task ends, for at most `within` seconds; a task still running then is reported,
    not waited for (a stop must not hang).
    """
    pending = {t for t in tasks if t is not None and not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
        if pending and loop.time() >= deadline:
            log.error("%d tasks did not stop within %g s: %s", len(pending), within, pending)
            return
    for t in tasks:
        if t is not None and t.done() and not t.cancelled():
            t.exception()  # retrieved: the owner logged or ignored it already
