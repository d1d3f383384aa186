"""What a speech session needs of the process it runs in (the front end's hub, api/hub.py, or a
test's stand-in): the queue, the return path, leases, the worker pool and the admission
state. Protocols, so that the core imports nothing of the front end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol

from voxline.shared.capabilities import EngineInfo
from voxline.shared.config import Settings
from voxline.shared.wire import Event
from voxline.speech.leases import Leases
from voxline.speech.queue import JobQueue


class LiveSession(Protocol):
    """What the process asks of the sessions it holds."""

    id: str
    finished: asyncio.Event

    def abort_outstanding(self, reason: str) -> None: ...

    async def shutdown(self) -> None: ...

    async def force_restart(self) -> None: ...


class ReturnChannel(Protocol):
    """The per-session channel the workers' events come back on (api/returns.py)."""

    @property
    def connected(self) -> asyncio.Event: ...

    async def open(self, session_id: str, handler: Callable[[Event], None]) -> None: ...

    async def release(self, session_id: str) -> None: ...


class EnginePool(Protocol):
    async def engine(self) -> tuple[EngineInfo | None, Any]:
        """The live workers' engine (None: no worker) and how many there are."""


class Backend(Protocol):
    # Read-only to the session: properties, so that the hub's own types fit.
    @property
    def settings(self) -> Settings: ...

    @property
    def queue(self) -> JobQueue: ...

    @property
    def returns(self) -> ReturnChannel: ...

    @property
    def leases(self) -> Leases: ...

    @property
    def pool(self) -> EnginePool: ...

    @property
    def sessions(self) -> set[LiveSession]:
        """The process's open sessions; a session adds itself once admitted."""

    @property
    def draining(self) -> bool:
        """Shutting down: new sessions are refused."""

    async def overloaded(self) -> str | None:
        """Why a new session must be refused now, or None."""
