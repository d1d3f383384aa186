"""`GET /metrics`: the process's Prometheus metrics (shared/metrics.py), public like /healthz.

The jobs backlog lives in Redis, not in this process: it is read on each scrape, bounded so a
frozen Redis cannot hold the scrape (the other metrics matter most exactly then).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from voxline.api.hub import Hub
from voxline.shared import metrics

log = logging.getLogger("voxline.api.metrics")

# Well under Prometheus' default scrape timeout (10 s).
BACKLOG_TIMEOUT = 0.5

router = APIRouter()


# Out of the OpenAPI schema: it is for the scraper, not for API clients.
@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> PlainTextResponse:
    """Prometheus text exposition format."""
    hub: Hub | None = getattr(request.app.state, "hub", None)
    if hub is not None:
        await refresh_backlog(hub)
    return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def refresh_backlog(hub: Hub) -> None:
    try:
        async with asyncio.timeout(BACKLOG_TIMEOUT):
            backlog: float = await hub.queue.backlog()
    except Exception as exc:
        # A stale number would look like a healthy queue; NaN shows the gap.
        log.debug("backlog unavailable: %s", exc)
        metrics.redis_error("metrics")
        backlog = float("nan")
    metrics.QUEUE_BACKLOG.set(backlog)
