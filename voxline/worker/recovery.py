"""At-least-once delivery: a worker keeps its own pending jobs fresh, and claims the jobs of
workers that died (XAUTOCLAIM) or gives up on them after `max_deliveries` (dead letters).

A pending entry's idle time is the only liveness signal the stream itself keeps: a live worker
resets it for every job it holds (XCLAIM JUSTID, which does not count as a delivery) several
times per `claim_idle`, so only a dead (or cut-off) worker's jobs ever reach it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from voxline.shared.batches import record_failure_in
from voxline.shared.channels import publish_event
from voxline.shared.connections import Client
from voxline.shared.keys import JOBS_GROUP, Keys
from voxline.shared.wire import Event, EventKind, Job

log = logging.getLogger("voxline.worker.recovery")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One job as this worker received it: fresh from the stream or claimed from a dead one."""

    stream: str
    entry_id: bytes
    fields: dict[bytes, bytes]
    attempt: int = 1  # the entry's delivery count


def acknowledge_in(pipe: Any, delivery: Delivery) -> None:
    """Done with a job's entry: off the pending list and out of the stream (a stream of
    finished jobs would only grow). The one place a worker lets go of an entry it finished or
    handed on."""
    pipe.xack(delivery.stream, JOBS_GROUP, delivery.entry_id)
    pipe.xdel(delivery.stream, delivery.entry_id)


@dataclass
class ClaimResult:
    deliveries: list[Delivery]
    dead_lettered: int = 0
    vanished: int = 0  # pending entries whose stream entry was trimmed or deleted


class Recovery:
    def __init__(
        self,
        redis: Client,
        keys: Keys,
        worker_id: str,
        *,
        claim_idle: float,
        max_deliveries: int,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._id = worker_id
        self._idle_ms = max(int(claim_idle * 1000), 1)
        self._max_deliveries = max_deliveries
        self._cursors: dict[str, bytes | str] = dict.fromkeys(keys.worker_streams, "0-0")

    async def refresh(self, held: set[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
        """Reset the idle time of the jobs this worker holds, as (stream, entry id); return
        those it no longer owns (another worker claimed them while this one was cut off: it
        must stop and not acknowledge)."""
        lost: set[tuple[str, bytes]] = set()
        for stream in self._keys.worker_streams:
            ids = {entry_id for s, entry_id in held if s == stream}
            if not ids:
                continue
            # This consumer's own pending list: what it holds, plus any entry a cut-short read
            # delivered to it unseen (those are left to age and be claimed).
            pending = await self._redis.xpending_range(
                stream, JOBS_GROUP, "-", "+", len(ids) + 64, consumername=self._id
            )
            owned = {p["message_id"] for p in pending} & ids
            if owned:
                # redis-py's list[StreamIdT] is invariant: a list of one of its members fails.
                await self._redis.xclaim(
                    stream,
                    JOBS_GROUP,
                    self._id,
                    0,
                    sorted(owned),  # type: ignore[arg-type]
                    justid=True,
                )
            lost |= {(stream, entry_id) for entry_id in ids - owned}
        return lost

    def release_in(self, pipe: Any, delivery: Delivery) -> None:
        """Hand a job back unfinished (shutting down): it looks abandoned at once, so another
        worker's next claim takes it. JUSTID: a hand-back is not a failed delivery."""
        pipe.xclaim(
            delivery.stream,
            JOBS_GROUP,
            self._id,
            0,
            [delivery.entry_id],
            idle=self._idle_ms,
            justid=True,
        )

    async def claim(self, count: int, batch: int = 0) -> ClaimResult:
        """Take up to `count` jobs abandoned for `claim_idle` by other consumers, first
        sentences first (every shard's), batch sentences last and at most `batch` of them,
        one XAUTOCLAIM per stream: a cluster runs no command across slots."""
        result = ClaimResult([])
        for stream in self._keys.job_streams:
            room = count - len(result.deliveries)
            if room < 1:
                return result
            await self._claim_from(stream, room, result)
        taken = len(result.deliveries)
        for stream in self._keys.batch_streams:
            room = min(count - len(result.deliveries), batch - (len(result.deliveries) - taken))
            if room < 1:
                break
            await self._claim_from(stream, room, result)
        return result

    async def _claim_from(self, stream: str, count: int, result: ClaimResult) -> None:
        reply = await self._redis.xautoclaim(
            stream,
            JOBS_GROUP,
            self._id,
            min_idle_time=self._idle_ms,
            start_id=self._cursors[stream],
            count=count,
        )
        self._cursors[stream], entries = reply[0], reply[1]
        deleted = list(reply[2]) if len(reply) > 2 else []
        # Redis 7 drops trimmed entries from the pending list itself and names them apart;
        # Redis 6.2 returns them as nil entries, still pending: acknowledge those here.
        nil_ids = [entry_id for entry_id, fields in entries if fields is None and entry_id]
        entries = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
        if nil_ids:
            await self._redis.xack(stream, JOBS_GROUP, *nil_ids)
        vanished = len(deleted) + len(nil_ids)
        result.vanished += vanished
        if vanished:
            # Their sentences cannot be named (the job is gone); the front end fails them on
            # its deadlines.
            log.warning("%d abandoned jobs were trimmed before a retry", vanished)
        if not entries:
            return
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in entries:
                pipe.xpending_range(stream, JOBS_GROUP, entry_id, entry_id, 1)
            replies = await pipe.execute()
        delivered = {p["message_id"]: p["times_delivered"] for reply in replies for p in reply}
        for entry_id, fields in entries:
            attempt = delivered.get(entry_id, self._max_deliveries + 1)
            delivery = Delivery(stream, entry_id, fields, attempt)
            if attempt > self._max_deliveries:
                await self.dead_letter(delivery)
                result.dead_lettered += 1
            else:
                log.info("claimed abandoned job %s (delivery %d)", entry_id.decode(), attempt)
                result.deliveries.append(delivery)

    async def dead_letter(self, delivery: Delivery) -> None:
        """Park the job on the dead-letter stream and fail its sentence at once."""
        entry_id, fields, attempt = delivery.entry_id, delivery.fields, delivery.attempt
        reason = f"gave up after {attempt - 1} deliveries: every worker that took it died"
        log.error("job %s dead-lettered: %s", entry_id.decode(), reason)
        try:
            job: Job | None = Job.unpack(fields[b"j"])
        except Exception:
            job = None
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.xadd(
                self._keys.dead_letters,
                {
                    # redis-py's Dict[FieldT, EncodableT] is invariant: dict[bytes, bytes] fails.
                    **fields,  # type: ignore[dict-item]
                    b"stream": delivery.stream,
                    b"entry": entry_id,
                    b"deliveries": attempt - 1,
                    b"reason": reason,
                    b"at": f"{time.time():.3f}",
                },
                maxlen=10_000,
                approximate=True,
            )
            pipe.xack(delivery.stream, JOBS_GROUP, entry_id)
            pipe.xdel(delivery.stream, entry_id)
            if job is not None and job.batch:
                record_failure_in(pipe, self._keys, job.batch, job.sentence, reason)
            elif job is not None:
                # As a new attempt, so the front end takes it even after another worker's
                # STARTED; seq 0 since nothing else of this attempt exists.
                event = Event(EventKind.ERROR, job.utterance, job.sentence, 0, reason, attempt)
                publish_event(pipe, self._keys.audio_channel(job.session_id), event.pack())
            await pipe.execute()
