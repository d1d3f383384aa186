"""Housekeeping: the periodic chores nothing on the live path does for itself (arq cron runs
them; see CRON_TASKS). Several arq replicas may run the same task at the same moment, so each
one is idempotent and counts only what its own commands changed.

- `trim_streams`: workers delete the entries they acknowledge, but an entry whose job never
  got acknowledged (its session gone, its sentence failed long ago on the front end's
  queue_timeout) would stay on a real-time stream forever; dead letters are kept for a while
  to be looked at, and no longer.
- `expire_orphans`: keys written without a TTL (a crash between two commands, a worker that
  records a batch sentence after its batch was finished) and files under `batch_dir` outlive
  everything that could read them; so do registry entries of workers that all died at once
  (a live worker's heartbeat prunes its dead peers, but nobody prunes the last one).
- `drain_dead_letters`: moves each dead letter, once, into a report keyed by its entry id,
  where operators read it (`dead_letter_report`) instead of walking a stream.
- `publish_stats`: queue lengths, backlog and live workers, in one hash and on one channel,
  for dashboards and autoscalers that should not scan the streams themselves.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, cast

from redis.exceptions import ResponseError, WatchError

from voxline.shared.config import Settings
from voxline.shared.connections import Client
from voxline.shared.keys import BATCH_SESSION_PREFIX, JOBS_GROUP, Keys
from voxline.shared.wire import Job

log = logging.getLogger("voxline.batch.housekeeping")

# The casts of replies below: replies are bytes (no client sets decode_responses) and stream
# reads are RESP2's lists, where redis-py's types say bytes | str and name RESP3's dicts too.

# The dead-letter stream's consumer group: one group for every replica, so each entry is
# delivered to one drainer only.
DRAIN_GROUP = "housekeeping"
# A drainer's pending entry idle this long belongs to a replica that died mid-drain.
DRAIN_CLAIM_IDLE = 60.0
DRAIN_BATCH = 100
STATS_TTL = 300
SCAN_COUNT = 1000
# Keys handled per round of pipelined commands while scanning.
CHUNK = 500
# Rounds of the workers-registry transaction before leaving the rest to the next run.
WATCH_ATTEMPTS = 5

SESSION_SUFFIXES = frozenset({"cancelled", "lease"})
BATCH_WORKING_SUFFIXES = frozenset({"sentences", "queued", "audio", "events"})


def _ms_id(unix: float) -> str:
    """The smallest stream id at or after `unix` seconds (ids are ms timestamps)."""
    return f"{max(int(unix * 1000), 0)}-0"


def _id_seconds(entry_id: bytes | str) -> float:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.partition("-")[0]) / 1000


def _log_counts(task: str, counts: dict[str, Any]) -> None:
    if any(counts.values()):
        log.info("%s: %s", task, counts)


# ------------------------------------------------------------------------------ trim_streams


async def trim_streams(
    redis: Client, keys: Keys, settings: Settings, *, now: float | None = None
) -> dict[str, int]:
    """Trim every real-time jobs stream to `stream_max_age` and the dead letters to
    `dead_letter_max_age`. Batch streams are left alone: a batch sentence may wait behind
    real time for far longer, and its coordinator re-queues or removes its own entries."""
    now = time.time() if now is None else now
    # Exact MINID (not `~`): approximate trimming only drops whole macro nodes, so what
    # survives would depend on the stream's internal layout.
    jobs_cutoff = _ms_id(now - settings.stream_max_age)
    async with redis.pipeline(transaction=False) as pipe:
        for stream in keys.job_streams:
            pipe.xtrim(stream, minid=jobs_cutoff, approximate=False)
        pipe.xtrim(
            keys.dead_letters, minid=_ms_id(now - settings.dead_letter_max_age), approximate=False
        )
        *trimmed, dead = await pipe.execute()
    # XTRIM counts what it removed itself, so concurrent replicas never count an entry twice.
    counts = {"jobs": sum(trimmed), "dead_letters": dead}
    _log_counts("trim_streams", counts)
    return counts


# ---------------------------------------------------------------------------- expire_orphans


def _scan_pattern(prefix: str) -> str:
    for special in "\\*?[]":
        prefix = prefix.replace(special, "\\" + special)
    return f"{prefix}:*"


def _tagged(key: bytes, prefix: str) -> tuple[str, str] | None:
    """(hash tag, suffix) of `<prefix>:{<tag>}:<suffix>`, else None. The suffix is split off
    at the last `}:`, so a tag (a client's session id) holding `}` is still read whole."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        return None
    head = f"{prefix}:{{"
    if not text.startswith(head):
        return None
    tag, sep, suffix = text[len(head) :].rpartition("}:")
    if not sep or not tag or ":" in suffix:
        return None
    return tag, suffix


async def expire_orphans(
    redis: Client, keys: Keys, settings: Settings, *, now: float | None = None
) -> dict[str, int]:
    """Give a TTL to session and batch keys that have none, delete the working keys of batches
    that are gone, drop long-silent workers whose registry hash expired, and remove result
    files of expired batches."""
    now = time.time() if now is None else now
    counts = dict.fromkeys(
        ("session_keys", "batch_hashes", "batch_results", "batch_working_keys", "workers", "files"),
        0,
    )
    chunk: list[bytes] = []
    async for key in redis.scan_iter(match=_scan_pattern(keys.prefix), count=SCAN_COUNT):
        chunk.append(key)
        if len(chunk) >= CHUNK:
            await _fix_keys(redis, keys, settings, chunk, counts)
            chunk = []
    if chunk:
        await _fix_keys(redis, keys, settings, chunk, counts)
    counts["workers"] = await _prune_workers(redis, keys, now - 3 * settings.worker_ttl)
    counts["files"] = await _remove_result_files(redis, keys, settings, now)
    _log_counts("expire_orphans", counts)
    return counts


async def _fix_keys(
    redis: Client, keys: Keys, settings: Settings, chunk: list[bytes], counts: dict[str, int]
) -> None:
    batch_live_ttl = settings.batch_result_ttl + int(settings.batch_timeout)
    expiries: list[tuple[str, bytes, int]] = []  # (count name, key, ttl)
    orphaned_batches: set[str] = set()
    for key in chunk:
        parsed = _tagged(key, keys.prefix)
        if parsed is None:
            continue
        tag, suffix = parsed
        is_batch = tag.startswith(BATCH_SESSION_PREFIX)
        batch_id = tag[len(BATCH_SESSION_PREFIX) :]
        if suffix in SESSION_SUFFIXES:
            # A batch's cancel marks must outlast any run of the batch, not one session's TTL.
            ttl = batch_live_ttl if is_batch and suffix == "cancelled" else settings.session_ttl
            expiries.append(("session_keys", key, ttl))
        elif not is_batch or not batch_id:
            continue
        elif suffix == "batch":
            expiries.append(("batch_hashes", key, batch_live_ttl))
        elif suffix == "result":
            expiries.append(("batch_results", key, settings.batch_result_ttl))
        elif suffix in BATCH_WORKING_SUFFIXES:
            orphaned_batches.add(batch_id)
    if expiries:
        # EXPIRE NX sets a TTL only where there is none (Redis 7): no read-then-write race
        # with a writer setting its own TTL meanwhile, and only one replica counts each key.
        async with redis.pipeline(transaction=False) as pipe:
            for _, key, ttl in expiries:
                pipe.expire(key, ttl, nx=True)
            for (kind, _, _), changed in zip(expiries, await pipe.execute(), strict=True):
                counts[kind] += int(bool(changed))
    if orphaned_batches:
        candidates = sorted(orphaned_batches)
        async with redis.pipeline(transaction=False) as pipe:
            for batch_id in candidates:
                pipe.exists(keys.batch(batch_id))
            alive = await pipe.execute()
        for batch_id, exists in zip(candidates, alive, strict=True):
            if not exists:
                counts["batch_working_keys"] += await _delete_working_keys(redis, keys, batch_id)


async def _delete_working_keys(redis: Client, keys: Keys, batch_id: str) -> int:
    """Delete a gone batch's working keys, unless its hash appears meanwhile (WATCH; all
    of a batch's keys share one slot, so this is one transaction on a cluster too)."""
    batch_key = keys.batch(batch_id)
    working = [
        keys.batch_sentences(batch_id),
        keys.batch_queued(batch_id),
        keys.batch_audio(batch_id),
        keys.batch_events(batch_id),
    ]
    async with redis.pipeline(transaction=True) as pipe:
        try:
            await pipe.watch(batch_key)
            if await pipe.exists(batch_key):
                return 0
            pipe.multi()
            pipe.delete(*working)
            (deleted,) = await pipe.execute()
        except WatchError:
            return 0  # the batch is back: its keys are not orphans
    return int(deleted)


async def _prune_workers(redis: Client, keys: Keys, cutoff: float) -> int:
    """ZREM registry members silent since before `cutoff` whose worker hash has expired.

    The zset is WATCHed from reading the members' scores to the ZREM: a heartbeat (HSET of the
    hash, then ZADD) or another replica's ZREM in between aborts the transaction, and it is
    read again, so a worker that has just come back is never dropped and no member is counted
    by two replicas. The hashes are read outside the transaction (another slot on a cluster):
    a hash written after that read comes with a ZADD, which the WATCH sees.
    """
    removed = 0
    for _ in range(WATCH_ATTEMPTS):
        async with redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.workers)
                stale = cast(
                    list[bytes],
                    await pipe.zrangebyscore(keys.workers, "-inf", f"({cutoff}", 0, CHUNK),
                )
                if not stale:
                    return removed
                gone = await _without_hash(redis, keys, stale)
                if not gone:
                    return removed
                pipe.multi()
                pipe.zrem(keys.workers, *gone)
                (count,) = await pipe.execute()
            except WatchError:
                continue
        removed += int(count)
        if len(stale) < CHUNK:
            return removed
    return removed


async def _without_hash(redis: Client, keys: Keys, members: list[bytes]) -> list[bytes]:
    async with redis.pipeline(transaction=False) as pipe:
        for member in members:
            pipe.exists(keys.worker(member.decode(errors="replace")))
        exists = await pipe.execute()
    return [member for member, present in zip(members, exists, strict=True) if not present]


async def _remove_result_files(redis: Client, keys: Keys, settings: Settings, now: float) -> int:
    """Unlink `<id>.<ext>` files under batch_dir older than the result TTL whose batch hash is
    gone. Dotfiles are results being written (batch/results.py renames them into place)."""
    if not settings.batch_dir:
        return 0
    directory = Path(settings.batch_dir)
    old = await asyncio.to_thread(_old_files, directory, now - settings.batch_result_ttl)
    removed = 0
    for start in range(0, len(old), CHUNK):
        part = old[start : start + CHUNK]
        async with redis.pipeline(transaction=False) as pipe:
            for batch_id, _ in part:
                pipe.exists(keys.batch(batch_id))
            alive = await pipe.execute()
        doomed = [path for (_, path), exists in zip(part, alive, strict=True) if not exists]
        removed += await asyncio.to_thread(_unlink_all, doomed)
    return removed


def _old_files(directory: Path, cutoff: float) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        batch_id, dot, ext = entry.name.partition(".")
        if not batch_id or not dot or not ext:
            continue  # a dotfile (temporary), or not a result's name
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                found.append((batch_id, Path(entry.path)))
        except FileNotFoundError:
            continue  # removed meanwhile (another replica)
    return found


def _unlink_all(paths: Iterable[Path]) -> int:
    removed = 0
    for path in paths:
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another replica got there first: its count, not ours
        removed += 1
    return removed


# ------------------------------------------------------------------------ drain_dead_letters


def _consumer_name() -> str:
    # Unique per call: a crashed call's pending entries must look abandoned to the next one,
    # never like its own.
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


async def _ensure_drain_group(redis: Client, keys: Keys) -> None:
    try:
        await redis.xgroup_create(keys.dead_letters, DRAIN_GROUP, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def _text(fields: dict[bytes, bytes], name: bytes) -> str | None:
    value = fields.get(name)
    return None if value is None else value.decode(errors="replace")


def _number(fields: dict[bytes, bytes], name: bytes, kind: type[int] | type[float]) -> Any:
    value = fields.get(name)
    try:
        return None if value is None else kind(value)
    except ValueError:
        return value.decode(errors="replace")  # type: ignore[union-attr]


def _report_entry(entry_id: str, fields: dict[bytes, bytes], now: float) -> dict[str, Any]:
    """The report of one dead letter: what there is of it (a malformed one is reported too,
    with the error, rather than stall the drain forever)."""
    report: dict[str, Any] = {
        "id": entry_id,
        "session_id": None,
        "utterance": None,
        "sentence": None,
        "batch": None,
        "text_chars": None,
        "voice": None,
    }
    try:
        job = Job.unpack(fields[b"j"])
        report.update(
            session_id=job.session_id,
            utterance=job.utterance,
            sentence=job.sentence,
            batch=job.batch,
            text_chars=len(job.text),
            voice=job.voice,
        )
    except Exception as exc:  # anything at all: a missing, truncated or foreign `j`
        report["error"] = f"malformed job: {type(exc).__name__}: {exc}"
    report.update(
        stream=_text(fields, b"stream"),
        entry=_text(fields, b"entry"),
        deliveries=_number(fields, b"deliveries", int),
        reason=_text(fields, b"reason"),
        at=_number(fields, b"at", float),
        reported_at=round(now, 3),
    )
    return report


async def drain_dead_letters(
    redis: Client,
    keys: Keys,
    settings: Settings,
    *,
    now: float | None = None,
    claim_idle: float = DRAIN_CLAIM_IDLE,
) -> dict[str, Any]:
    """Move every dead letter into the report hash, exactly once however many replicas drain
    at the same time: the consumer group hands each entry to one of them, HSETNX keeps a
    re-drained entry (its drainer died between report and XACK) from being reported twice,
    and an entry left pending by a dead drainer is claimed after `claim_idle` seconds.
    Report entries older than `dead_letter_max_age` are pruned."""
    now = time.time() if now is None else now
    await _ensure_drain_group(redis, keys)
    consumer = _consumer_name()
    reasons: Counter[str] = Counter()
    cursor: bytes | str = "0-0"
    while True:
        reply = await redis.xautoclaim(
            keys.dead_letters,
            DRAIN_GROUP,
            consumer,
            min_idle_time=max(int(claim_idle * 1000), 0),
            start_id=cursor,
            count=DRAIN_BATCH,
        )
        cursor, entries = reply[0], reply[1]
        await _report_and_ack(redis, keys, settings, entries, now, reasons)
        if cursor in (b"0-0", "0-0"):
            break
    while True:
        reply = cast(
            list[Any],
            await redis.xreadgroup(
                DRAIN_GROUP, consumer, {keys.dead_letters: ">"}, count=DRAIN_BATCH
            ),
        )
        entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
        if not entries:
            break
        await _report_and_ack(redis, keys, settings, entries, now, reasons)
    pruned = await _prune_report(redis, keys, now - settings.dead_letter_max_age)
    counts = {"drained": sum(reasons.values()), "reasons": dict(reasons), "pruned": pruned}
    _log_counts("drain_dead_letters", counts)
    return counts


async def _report_and_ack(
    redis: Client,
    keys: Keys,
    settings: Settings,
    entries: list[tuple[bytes, dict[bytes, bytes] | None]],
    now: float,
    reasons: Counter[str],
) -> None:
    if not entries:
        return
    # Redis 6.2's XAUTOCLAIM returns trimmed entries as nil, still pending: just acknowledge.
    live = [(entry_id, fields) for entry_id, fields in entries if fields is not None]
    reports = {entry_id: _report_entry(entry_id.decode(), fields, now) for entry_id, fields in live}
    if reports:
        async with redis.pipeline(transaction=False) as pipe:
            for entry_id, report in reports.items():
                pipe.hsetnx(keys.dead_letter_report, entry_id, json.dumps(report))
            pipe.expire(keys.dead_letter_report, int(settings.dead_letter_max_age))
            await pipe.execute()
    # The report is written before the entry is acknowledged, in a pipeline of its own (a
    # cluster pipeline runs each node's share concurrently): a crash in between leaves the
    # entry pending, to be claimed and found already reported.
    async with redis.pipeline(transaction=False) as pipe:
        for entry_id, _ in entries:
            pipe.xack(keys.dead_letters, DRAIN_GROUP, entry_id)
        pipe.xdel(keys.dead_letters, *(entry_id for entry_id, _ in entries))
        *acked, _ = await pipe.execute()
    for (entry_id, _), ack in zip(entries, acked, strict=True):
        if ack and entry_id in reports:  # counted by whoever acknowledged it
            reasons[reports[entry_id]["reason"] or "unknown"] += 1


async def _prune_report(redis: Client, keys: Keys, cutoff: float) -> int:
    # The report's own EXPIRE is renewed by every drain that adds to it: under a steady
    # trickle of dead letters it would never lapse, so old entries go one by one. Field
    # names are entry ids, that is, ms timestamps.
    old: list[bytes] = []
    for field in cast(list[bytes], await redis.hkeys(keys.dead_letter_report)):
        try:
            if _id_seconds(field) < cutoff:
                old.append(field)
        except ValueError:
            continue  # not an entry id: not ours to prune
    if not old:
        return 0
    return int(await redis.hdel(keys.dead_letter_report, *old))


async def dead_letter_report(redis: Client, keys: Keys) -> list[dict[str, Any]]:
    """Every reported dead letter, oldest (by when it was given up on) first."""
    raw = cast(dict[bytes, bytes], await redis.hgetall(keys.dead_letter_report))
    reports: list[dict[str, Any]] = []
    for entry_id, value in raw.items():
        try:
            reports.append(json.loads(value))
        except ValueError:
            reports.append({"id": entry_id.decode(errors="replace"), "error": "unreadable"})

    def order(report: dict[str, Any]) -> tuple[float, str]:
        at = report.get("at")
        return (at if isinstance(at, int | float) else 0.0, str(report.get("id", "")))

    return sorted(reports, key=order)


# ----------------------------------------------------------------------------- publish_stats


def _labelled_streams(keys: Keys) -> list[tuple[str, str, str]]:
    """(label, stream, group) of every stream the workers read, and the dead letters."""
    streams: list[tuple[str, str, str]] = []
    for shard in keys.job_shards:
        for kind, stream in (("first", shard.first), ("rest", shard.rest), ("batch", shard.batch)):
            streams.append((f"shard{shard.index}.{kind}", stream, JOBS_GROUP))
    streams.append(("dead_letters", keys.dead_letters, DRAIN_GROUP))
    return streams


async def publish_stats(
    redis: Client, keys: Keys, settings: Settings, *, now: float | None = None
) -> dict[str, Any]:
    """Per stream: `<label>.length`, `.pending` (delivered, not acknowledged) and `.oldest_age`
    (seconds; 0 when empty); `workers` (heartbeat within worker_ttl) and `at`. Written to the
    stats hash (TTL, so a dead cron leaves no stale figures) and published as JSON."""
    now = time.time() if now is None else now
    streams = _labelled_streams(keys)
    async with redis.pipeline(transaction=False) as pipe:
        for _, stream, group in streams:
            pipe.xlen(stream)
            pipe.xpending(stream, group)
            pipe.xrange(stream, "-", "+", count=1)
        pipe.zcount(keys.workers, now - settings.worker_ttl, "+inf")
        # A missing stream or group is an error only to XPENDING: it means nothing pending.
        *replies, workers = await pipe.execute(raise_on_error=False)
    for index, reply in enumerate([*replies, workers]):
        if isinstance(reply, Exception) and not (index % 3 == 1 and "NOGROUP" in str(reply)):
            raise reply
    stats: dict[str, Any] = {}
    for index, (label, _, _) in enumerate(streams):
        length, pending, oldest = replies[3 * index : 3 * index + 3]
        stats[f"{label}.length"] = int(length)
        stats[f"{label}.pending"] = int(pending["pending"]) if isinstance(pending, dict) else 0
        age = max(now - _id_seconds(oldest[0][0]), 0.0) if oldest else 0.0
        stats[f"{label}.oldest_age"] = round(age, 3)
    stats["workers"] = int(workers)
    stats["at"] = round(now, 3)
    # Replace the hash whole (one key, one transaction): fields of streams no longer read
    # (fewer shards) do not linger beside fresh ones.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.stats)
        pipe.hset(keys.stats, mapping={name: str(value) for name, value in stats.items()})
        pipe.expire(keys.stats, STATS_TTL)
        await pipe.execute()
    await redis.publish(keys.stats_channel, json.dumps(stats))
    return stats


CRON_TASKS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "trim_streams": trim_streams,
    "expire_orphans": expire_orphans,
    "drain_dead_letters": drain_dead_letters,
    "publish_stats": publish_stats,
}
