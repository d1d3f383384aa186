"""Process-wide settings for the long-running processes (API, worker): the event loop and the
garbage collector, tuned once at start-up for latency."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def freeze_startup_objects() -> None:
    """Move everything alive now (imported modules, a loaded model) out of the collector's
    sight. A full collection otherwise walks all of it: 50+ ms here with only the API's
    imports, a stall every few seconds under load that shows as a latency tail on every
    stream in flight. Objects made later are collected as usual. Call once start-up is done."""
    gc.collect()
    gc.freeze()


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop where it is installed (Linux, macOS), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
