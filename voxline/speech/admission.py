"""Whether a new session (or request) may start now: decided here, once, for every door — the
WebSocket, REST's speech and batch routes. Each door says it in its own terms (a close code,
an HTTP status); the reasons and their order are this module's."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

from redis.exceptions import RedisError

from voxline.shared import metrics
from voxline.speech.backend import Backend

log = logging.getLogger("voxline.speech.admission")

UNAVAILABLE = "the service is unavailable (Redis unreachable); try again later"


class Refusal(enum.StrEnum):
    DRAINING = "draining"  # the process is shutting down
    UNAVAILABLE = "unavailable"  # Redis unreachable, or the return path reconnecting
    BUSY = "busy"  # the pool's backlog is beyond what its slots work off in time
    FULL = "full"  # this process holds `max_sessions` sessions


@dataclass(frozen=True, slots=True)
class Refused:
    reason: Refusal
    message: str


async def refusal(hub: Backend, *, busy: bool = True, session: bool = True) -> Refused | None:
    """Why the new work must be refused now, or None. `busy`: refused when the pool is busy
    (batch jobs wait instead); `session`: it holds a session of this process."""
    if hub.draining:
        return Refused(Refusal.DRAINING, "the server is shutting down")
    if not hub.returns.connected.is_set():
        # Redis may be back, but this process has not re-subscribed yet: audio would be
        # published into the void.
        return Refused(Refusal.UNAVAILABLE, UNAVAILABLE)
    if busy:
        try:
            overloaded = await hub.overloaded()
        except (RedisError, OSError) as exc:
            metrics.redis_error("session")
            log.warning("admission: Redis unreachable (%s); refused", exc)
            return Refused(Refusal.UNAVAILABLE, UNAVAILABLE)
        if overloaded is not None:
            return Refused(Refusal.BUSY, overloaded)
    limit = hub.settings.max_sessions
    if session and len(hub.sessions) >= limit:
        return Refused(Refusal.FULL, f"this front end is at its limit of {limit} sessions")
    return None
