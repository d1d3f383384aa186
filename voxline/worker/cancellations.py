"""How cancels reach a worker: the per-session cancel set (checked before a job starts) and
the cancel channel (which stops jobs already in flight)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from redis.asyncio.cluster import RedisCluster

from voxline.shared import metrics
from voxline.shared.backoff import Backoff
from voxline.shared.connections import Client, connect
from voxline.shared.connections import pubsub as open_pubsub
from voxline.shared.keys import Keys, cancel_tokens
from voxline.shared.tasks import stop
from voxline.shared.wire import Cancel, Job
from voxline.worker.engines.base import Cancellation

log = logging.getLogger("voxline.worker.cancel")


class InFlight:
    """The jobs this worker is running, each with its cancellation flag, and the cancel notices
    heard lately (so a job cancelled before it was read is skipped without asking Redis)."""

    # Sessions whose notices are remembered; the oldest are forgotten first. Forgetting costs
    # only a round trip: the cancel sets in Redis stay the authority.
    RECENT_SESSIONS = 10_000

    def __init__(self) -> None:
        self._jobs: dict[int, tuple[Job, Cancellation]] = {}
        self._recent: dict[str, list[Cancel]] = {}

    def add(self, job: Job) -> Cancellation:
        token = Cancellation()
        self._jobs[id(token)] = (job, token)
        return token

    def remove(self, token: Cancellation) -> None:
        self._jobs.pop(id(token), None)

    def cancelled(self, job: Job) -> bool:
        """Whether a notice heard on the cancel channel covers `job`."""
        return any(notice.matches(job) for notice in self._recent.get(job.session_id, ()))

    def apply(self, notice: Cancel, *, remember: bool = True) -> int:
        """Stop the in-flight jobs the notice covers (and remember it for jobs read later);
        return how many."""
        if remember:
            notices = self._recent.pop(notice.session_id, [])
            notices.append(notice)
            self._recent[notice.session_id] = notices  # the most recent last
            while len(self._recent) > self.RECENT_SESSIONS:
                del self._recent[next(iter(self._recent))]
        hits = 0
        for job, token in self._jobs.values():
            if notice.matches(job):
                token.set()
                hits += 1
        return hits

    def __len__(self) -> int:
        return len(self._jobs)

    def items(self) -> list[tuple[Job, Cancellation]]:
        return list(self._jobs.values())


async def is_cancelled(redis: Client, keys: Keys, job: Job) -> bool:
    flags = await redis.smismember(
        keys.cancelled(job.session_id), cancel_tokens(job.utterance, job.sentence)
    )
    return any(flags)


class CancelListener:
    """Subscribes to the cancel channel and flags matching in-flight jobs."""

    def __init__(self, redis_url: str, keys: Keys, in_flight: InFlight) -> None:
        self._client = connect(redis_url, blocking=True)
        self._keys = keys
        self._in_flight = in_flight
        self._pubsub: Any = None
        self._subscribed_once = False
        self._task: asyncio.Task[None] | None = None

    async def _recheck(self) -> None:
        for job, token in self._in_flight.items():
            if await is_cancelled(self._client, self._keys, job):
                token.set()

    async def start(self) -> None:
        await self._subscribe()
        self._task = asyncio.create_task(self._loop(), name="voxline-cancel-listener")

    async def _subscribe(self) -> None:
        """A fresh subscription. On a Cluster the pub/sub connection is pinned to the node
        owning the channel's slot, so after a failure the slot map is reloaded first and the
        subscription made anew (on a single Redis that costs nothing more than a reconnect)."""
        if isinstance(self._client, RedisCluster):
            await self._client.initialize()  # the first time: pubsub() needs the slot map
            if self._subscribed_once:
                await self._client.nodes_manager.initialize()  # reload it
        pubsub = open_pubsub(self._client, ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._keys.cancel_channel)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        self._pubsub = pubsub
        self._subscribed_once = True

    async def close(self) -> None:
        await stop(self._task)
        with contextlib.suppress(Exception):
            if self._pubsub is not None:
                await self._pubsub.aclose()
            await self._client.aclose()

    async def _loop(self) -> None:
        # Resubscribe delays after a failure: quick after a blip, gentle during an outage.
        backoff = Backoff(0.05, cap=2.0)
        while True:
            try:
                if self._pubsub is None:
                    await self._subscribe()
                    # Notices published while unsubscribed are gone: ask the cancel sets.
                    await self._recheck()
                    backoff.reset()
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=5.0
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                metrics.redis_error("cancel_listener")
                delay = backoff.next()
                log.warning("cancel channel lost (%s); resubscribing in %.2fs", exc, delay)
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                self._pubsub = None
                await asyncio.sleep(delay)
                continue
            if message is not None and message["type"] == "message":
                try:
                    self._in_flight.apply(Cancel.unpack(message["data"]))
                except Exception:
                    log.exception("bad cancel notice")
