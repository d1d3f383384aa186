"""Taking jobs: one blocking reader per jobs shard (real-time streams) and one per batch stream,
each taking only as many jobs as there are free slots; the surplus handed back, abandoned
jobs of dead workers claimed first. What is taken goes to the runner (`start`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from redis.exceptions import ResponseError

from voxline.shared import metrics
from voxline.shared.backoff import Backoff
from voxline.shared.config import Settings
from voxline.shared.connections import TRANSIENT_ERRORS, Client
from voxline.shared.keys import JobShard, Keys
from voxline.shared.streams import ensure_jobs_group, read_group
from voxline.shared.tasks import stop
from voxline.shared.wire import Job
from voxline.worker.recovery import Delivery, Recovery, acknowledge_in
from voxline.worker.registry import Registration
from voxline.worker.slots import Slots

log = logging.getLogger("voxline.worker")

# Upper bound of one blocking read; a job wakes the read at once, this only bounds how long
# a stop request waits.
BLOCK_MS = 5000


class JobReader:
    def __init__(
        self,
        settings: Settings,
        keys: Keys,
        worker_id: str,
        redis: Client,
        slots: Slots,
        recovery: Recovery,
        registration: Registration,
        start: Callable[[list[Delivery]], None],
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._id = worker_id
        self._redis = redis
        self._slots = slots
        self._recovery = recovery
        self._registration = registration
        self._start = start  # must hold the slots at once: readers count on it
        self._next_claim = 0.0  # monotonic time of the next look for abandoned jobs
        self._stopping = False  # set once: the readers end at their next turn

    async def run(self, reader: Client) -> None:
        """One blocking reader per jobs shard (a cluster runs no XREADGROUP across slots)."""
        tasks = [
            asyncio.create_task(self._read_shard(reader, shard), name=f"voxline-read-{shard.index}")
            for shard in self._keys.job_shards
        ] + [
            asyncio.create_task(
                self._read_batch_shard(reader, shard), name=f"voxline-batch-{shard.index}"
            )
            for shard in self._keys.job_shards
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # The flag, not only the cancel: on Python 3.11 a cancel that races a read's own
            # timeout inside redis-py can be swallowed (and uncancelled) there.
            self._stopping = True
            await stop(*tasks)

    async def _read_shard(self, reader: Client, shard: JobShard) -> None:
        backoff = Backoff(0.05, cap=2.0)  # quick after a blip, gentle on an outage
        claim_every = max(self._settings.claim_idle / 2, 0.05)
        while not self._stopping:
            _honour_cancel()
            free = await self._slots.wait_free()
            # Abandoned jobs are looked for every claim_every, by whichever reader comes first,
            # before fresh ones: a freed slot goes to the job that has waited longest.
            if time.monotonic() >= self._next_claim:
                self._next_claim = time.monotonic() + claim_every
                if await self._claim_abandoned(free):
                    continue
            # A blocking read is cut short to keep the claim schedule.
            block_ms = int(min(BLOCK_MS, max((self._next_claim - time.monotonic()) * 1000, 1)))
            deliveries = await self._attempt_read(
                shard, backoff, self._read(reader, shard, self._share(free), block_ms)
            )
            # What the read returned stays pending and is claimed by another worker.
            _honour_cancel()
            if self._stopping:
                return
            if deliveries:
                await self._take(shard, deliveries)

    async def _read_batch_shard(self, reader: Client, shard: JobShard) -> None:
        """Batch sentences of one shard, whenever a slot batch may use is free and no
        real-time sentence wants it: such a slot is offered to the real-time streams first
        (without waiting), and only when they are empty does this wait on the batch stream.
        Claims of abandoned batch jobs ride the real-time reader's claims."""
        backoff = Backoff(0.05, cap=2.0)  # quick after a blip, gentle on an outage
        while not self._stopping:
            _honour_cancel()
            want = await self._slots.wait_free(self._slots.batch_room)
            deliveries = await self._attempt_read(
                shard, backoff, self._read_batch(reader, shard, want)
            )
            _honour_cancel()
            if self._stopping:
                return
            if deliveries:
                await self._take(shard, deliveries)

    async def _read_batch(self, reader: Client, shard: JobShard, want: int) -> list[Delivery]:
        realtime = dict.fromkeys(shard.streams, ">")
        got = _deliveries(await read_group(reader, self._id, realtime, count=want))
        if got:
            return sorted(got, key=lambda d: d.stream != shard.first)
        batch = {shard.batch: ">"}
        return _deliveries(await read_group(reader, self._id, batch, count=want, block=BLOCK_MS))

    async def _attempt_read(
        self, shard: JobShard, backoff: Backoff, read: Awaitable[list[Delivery]]
    ) -> list[Delivery]:
        """One read of a shard; nothing (after a back-off) when Redis failed it."""
        try:
            deliveries = await read
            backoff.reset()
            return deliveries
        except TRANSIENT_ERRORS as exc:  # before ResponseError: CLUSTERDOWN is one
            metrics.redis_error("read")
            delay = backoff.next()
            log.warning("jobs shard %d unreachable (%s); retry in %.2fs", shard.index, exc, delay)
            await asyncio.sleep(delay)
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            with contextlib.suppress(*TRANSIENT_ERRORS):  # the stream was deleted
                await ensure_jobs_group(self._redis, self._keys)
        return []

    async def _take(self, shard: JobShard, deliveries: list[Delivery]) -> None:
        """Start what the slots hold room for. Readers of other shards (and this shard's batch
        reader) may have filled the slots meanwhile, as they wait at the same time: the surplus
        goes back to this shard, a real-time job ahead of its queue."""
        room = max(self._slots.room(), 0)
        batch_room = max(self._slots.batch_room(), 0)
        take: list[Delivery] = []
        surplus: list[Delivery] = []
        for delivery in deliveries:
            if len(take) >= room:
                surplus.append(delivery)
            elif delivery.stream == shard.batch:
                if batch_room > 0:
                    batch_room -= 1
                    take.append(delivery)
                else:
                    surplus.append(delivery)
            else:
                take.append(delivery)
        # Started before the hand-back's round trip, so no other reader counts their slots free.
        self._start(take)
        if surplus:
            try:
                await self._requeue(shard, surplus)
                await self._registration.bump(handed_back=len(surplus))
            except TRANSIENT_ERRORS as exc:
                metrics.redis_error("read")
                # Still pending here: they look abandoned after claim_idle and are claimed.
                log.warning("could not hand back %d jobs (%s)", len(surplus), exc)
        if take:
            # Let the new jobs send their first commands before this reader sends its next
            # read: time to first audio is on their path, not on the read's.
            await asyncio.sleep(0)

    def _share(self, free: int) -> int:
        """What one shard's reader asks for: its share of the free slots (at least one). The
        readers wait at the same time, and all that they bring beyond the free slots has to be
        handed back; a shard with a burst is served in a few quick reads instead."""
        return max(1, -(-free // self._keys.shards))

    async def _read(
        self, reader: Client, shard: JobShard, free: int, block_ms: int
    ) -> list[Delivery]:
        """Up to `free` jobs of one shard, first sentences first. Only as many as there are free
        slots: the rest stay in the streams for other workers instead of queueing here (a
        session's sentences spread over the pool)."""
        first, rest = shard.streams
        got = _deliveries(await read_group(reader, self._id, {first: ">"}, count=free))
        if len(got) < free:
            # Nothing urgent: wait on both streams (a first sentence arriving still wins). The
            # two share a hash tag, so this is one command on a cluster too.
            streams = {rest: ">"} if got else {first: ">", rest: ">"}
            block = None if got else block_ms
            reply = await read_group(reader, self._id, streams, count=free - len(got), block=block)
            got += sorted(_deliveries(reply), key=lambda d: d.stream != first)
        # COUNT is per stream, so a wait on two can bring one too many; the caller hands the
        # surplus back.
        return got

    async def _requeue(self, shard: JobShard, surplus: list[Delivery]) -> None:
        """Hand jobs to the next free worker, ahead of the queue (they have waited their turn
        already): one transaction on the shard's slot. A batch sentence goes to the back of
        its stream, and its coordinator learns the new entry id before the old one goes."""
        batch = [d for d in surplus if d.stream == shard.batch]
        moved: list[tuple[Delivery, bytes]] = []
        if batch:
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery in batch:
                    # redis-py's Dict[FieldT, EncodableT] is invariant: dict[bytes, bytes] fails.
                    pipe.xadd(shard.batch, delivery.fields)  # type: ignore[arg-type]
                moved = list(zip(batch, await pipe.execute(), strict=True))
            async with self._redis.pipeline(transaction=False) as pipe:
                for delivery, entry_id in moved:
                    job = Job.unpack(delivery.fields[b"j"])
                    pipe.hset(self._keys.batch_queued(job.batch), str(job.sentence), entry_id)
                await pipe.execute()
        async with self._redis.pipeline(transaction=True) as pipe:
            for delivery in surplus:
                if delivery.stream != shard.batch:
                    pipe.xadd(shard.first, delivery.fields)  # type: ignore[arg-type]  # as above
                acknowledge_in(pipe, delivery)
            await pipe.execute()

    async def _claim_abandoned(self, free: int) -> bool:
        # Claimed jobs are started whatever the count (handing one back would cost it a
        # delivery), so their slots are held while the claim runs; readers returning meanwhile
        # hand their surplus back instead.
        batch = max(self._slots.batch_room(), 0)
        self._slots.claiming = free
        try:
            result = await self._recovery.claim(free, batch)
        except TRANSIENT_ERRORS as exc:
            metrics.redis_error("claim")
            log.warning("could not look for abandoned jobs (%s)", exc)
            return False
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            return False  # the readers recreate the group
        finally:
            self._slots.end_claim()
        self._start(result.deliveries)
        counts = {
            "claimed": len(result.deliveries),
            "dead_lettered": result.dead_lettered,
            "vanished": result.vanished,
        }
        if any(counts.values()):
            with contextlib.suppress(*TRANSIENT_ERRORS):
                await self._registration.bump(**counts)
        return bool(result.deliveries)


def _honour_cancel() -> None:
    """Raise if the current task was asked to stop. A cancel that lands inside a Redis command
    can be swallowed there (seen with redis-py on fakeredis); the loop must not go on."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _deliveries(reply: list | None) -> list[Delivery]:
    return [
        Delivery(stream.decode() if isinstance(stream, bytes) else stream, entry_id, fields)
        for stream, batch in (reply or [])
        for entry_id, fields in batch
    ]
