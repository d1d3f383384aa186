"""Session leases: the front end renews one short-lived key per open session, so that when the
process dies its sessions' work stops (workers check the lease) and their keys expire."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from voxline.shared import metrics
from voxline.shared.connections import Client
from voxline.shared.keys import Keys
from voxline.shared.tasks import stop

log = logging.getLogger("voxline.speech.leases")


class Leases:
    def __init__(self, redis: Client, keys: Keys, *, lease_ttl: float, session_ttl: float) -> None:
        self._redis = redis
        self._keys = keys
        self._ttl_ms = max(int(lease_ttl * 1000), 1)
        self._session_ttl_ms = max(int(session_ttl * 1000), self._ttl_ms)
        self._interval = lease_ttl / 3
        self._held: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="voxline-leases")

    async def close(self) -> None:
        await stop(self._task)

    async def acquire(self, session_id: str) -> None:
        """Take the lease before any of the session's jobs exists."""
        self._held.add(session_id)
        await self._redis.set(self._keys.lease(session_id), b"1", px=self._ttl_ms)

    async def release(self, session_id: str) -> None:
        self._held.discard(session_id)
        await self._redis.delete(self._keys.lease(session_id))

    async def renew(self) -> None:
        """One round trip for every session of this process. SET rather than PEXPIRE: after a
        Redis restart the leases are gone and must come back."""
        if not self._held:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in self._held:
                self.renew_in(pipe, session_id)
                # The session's other keys live as long as its lease is renewed.
                pipe.pexpire(self._keys.cancelled(session_id), self._session_ttl_ms)
            await pipe.execute()

    def renew_in(self, pipe: Any, session_id: str) -> None:
        """Renew a held lease in `pipe`: the queue does it with every job it adds, so a job
        never waits on a lease lost to a Redis restart until the next round."""
        if session_id in self._held:
            pipe.set(self._keys.lease(session_id), b"1", px=self._ttl_ms)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.renew()
            except Exception as exc:
                metrics.redis_error("leases")
                log.warning("could not renew %d session leases: %s", len(self._held), exc)
