"""Housekeeping (batch/housekeeping.py): each task's effect on Redis (and on batch_dir), on
both backends; a second run changes nothing, and replicas running a task at the same moment
neither fail nor count anything twice."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from voxline.batch import housekeeping
from voxline.batch.housekeeping import (
    CRON_TASKS,
    DRAIN_GROUP,
    dead_letter_report,
    drain_dead_letters,
    expire_orphans,
    publish_stats,
    trim_streams,
)
from voxline.shared.config import Settings
from voxline.shared.connections import Client, connect
from voxline.shared.keys import JOBS_GROUP, Keys, batch_session
from voxline.shared.streams import ensure_jobs_group
from voxline.shared.wire import Job
from voxline.worker.recovery import Delivery, Recovery

SHARDS = 2


@dataclass
class Env:
    redis: Client
    keys: Keys
    settings: Settings
    batch_dir: Path


@pytest.fixture
async def env(redis_url: str, key_prefix: str, tmp_path: Path) -> AsyncIterator[Env]:
    settings = Settings(
        redis_url=redis_url,
        key_prefix=key_prefix,
        job_shards=SHARDS,
        stream_max_age=600.0,
        dead_letter_max_age=3600.0,
        session_ttl=60,
        worker_ttl=10.0,
        batch_result_ttl=1000,
        batch_timeout=500.0,
        batch_dir=str(tmp_path / "results"),
    )
    redis = connect(redis_url)
    try:
        yield Env(redis, Keys(key_prefix, SHARDS), settings, tmp_path / "results")
    finally:
        await redis.aclose()


def ms_id(unix: float, seq: int = 0) -> str:
    return f"{int(unix * 1000)}-{seq}"


async def stream_ids(redis: Client, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]


def test_cron_tasks_name_every_task() -> None:
    assert CRON_TASKS == {
        "trim_streams": trim_streams,
        "expire_orphans": expire_orphans,
        "drain_dead_letters": drain_dead_letters,
        "publish_stats": publish_stats,
    }


# ------------------------------------------------------------------------------ trim_streams


async def test_trim_streams_drops_old_realtime_entries_and_old_dead_letters(env: Env) -> None:
    redis, keys, now = env.redis, env.keys, time.time()
    kept: dict[str, list[str]] = {}
    for stream in keys.job_streams:
        for age in (700, 650):  # older than stream_max_age (600 s)
            await redis.xadd(stream, {"j": b"old"}, id=ms_id(now - age))
        kept[stream] = [ms_id(now - 590), ms_id(now - 1)]
        for entry_id in kept[stream]:
            await redis.xadd(stream, {"j": b"new"}, id=entry_id)
    for stream in keys.batch_streams:  # never trimmed, however old
        kept[stream] = [ms_id(now - 100_000), ms_id(now - 1)]
        for entry_id in kept[stream]:
            await redis.xadd(stream, {"j": b"batch"}, id=entry_id)
    await redis.xadd(keys.dead_letters, {"reason": "old"}, id=ms_id(now - 4000))
    kept[keys.dead_letters] = [ms_id(now - 3000)]
    await redis.xadd(keys.dead_letters, {"reason": "new"}, id=kept[keys.dead_letters][0])

    counts = await trim_streams(redis, keys, env.settings, now=now)

    assert counts == {"jobs": 2 * len(keys.job_streams), "dead_letters": 1}
    for stream, ids in kept.items():
        assert await stream_ids(redis, stream) == ids, stream
    assert await trim_streams(redis, keys, env.settings, now=now) == {"jobs": 0, "dead_letters": 0}
    for stream, ids in kept.items():
        assert await stream_ids(redis, stream) == ids, stream


async def test_concurrent_trims_count_each_entry_once(env: Env) -> None:
    redis, keys, now = env.redis, env.keys, time.time()
    for stream in keys.job_streams:
        for seq in range(20):
            await redis.xadd(stream, {"j": b"old"}, id=ms_id(now - 1000, seq))
    results = await asyncio.gather(
        *(trim_streams(redis, keys, env.settings, now=now) for _ in range(3))
    )
    assert sum(r["jobs"] for r in results) == 20 * len(keys.job_streams)
    for stream in keys.job_streams:
        assert await redis.xlen(stream) == 0


# ---------------------------------------------------------------------------- expire_orphans


@dataclass
class Orphans:
    now: float
    files: dict[str, Path]


async def make_orphans(env: Env) -> Orphans:
    """One of everything expire_orphans looks at, orphaned or not."""
    redis, keys, now = env.redis, env.keys, time.time()
    # Sessions: s1's keys have no TTL; s2's have their own, shorter than session_ttl.
    await redis.sadd(keys.cancelled("s1"), "*")
    await redis.set(keys.lease("s1"), b"1")
    await redis.sadd(keys.cancelled("s2"), "u1")
    await redis.expire(keys.cancelled("s2"), 30)
    await redis.set(keys.lease("s2"), b"1", ex=5)
    # Batches: "gone" has working keys and no hash; "live" has both (a hash with no TTL, and a
    # cancel set with none); "done" has a hash with its TTL and a result with none.
    for batch_id in ("gone", "live"):
        await redis.rpush(keys.batch_sentences(batch_id), "One.", "Two.")
        await redis.hset(keys.batch_queued(batch_id), "0", "1-0")
        await redis.hset(keys.batch_audio(batch_id), "0", b"\x00\x00")
        await redis.xadd(keys.batch_events(batch_id), {"s": 0})
    await redis.hset(keys.batch("live"), mapping={"status": "running", "format": "mp3"})
    await redis.sadd(keys.cancelled(batch_session("live")), "u0:s1")
    await redis.hset(keys.batch("done"), mapping={"status": "done", "format": "wav"})
    await redis.expire(keys.batch("done"), 900)
    await redis.set(keys.batch_result("done"), b"RIFF")
    # Workers: silent for 100 s (cutoff 3 * worker_ttl = 30 s) with and without a hash, and
    # one heard a second ago whose hash is (already) gone.
    await redis.zadd(keys.workers, {"stale-gone": now - 100, "stale-hash": now - 100})
    await redis.zadd(keys.workers, {"fresh": now - 1})
    await redis.hset(keys.worker("stale-hash"), "slots", 1)
    # Result files: old ones of a gone and of a live batch, a fresh one of a gone batch, and
    # an old temporary file being written.
    env.batch_dir.mkdir()
    files = {
        "gone": env.batch_dir / "gone.wav",
        "live": env.batch_dir / "live.mp3",
        "fresh": env.batch_dir / "fresh.wav",
        "temporary": env.batch_dir / ".gone2.wav.abc123",
    }
    for name, path in files.items():
        path.write_bytes(b"audio")
        mtime = now - 10 if name == "fresh" else now - 5000
        os.utime(path, (mtime, mtime))
    # A key of no kind expire_orphans knows stays as it is.
    await redis.xadd(keys.job_shard(0).rest, {"j": b"x"})
    return Orphans(now, files)


EXPECTED_ORPHANS = {
    "session_keys": 3,  # s1's cancel set and lease, the live batch's cancel set
    "batch_hashes": 1,
    "batch_results": 1,
    "batch_working_keys": 4,
    "workers": 1,
    "files": 1,
}


async def assert_orphans_fixed(env: Env, orphans: Orphans) -> None:
    redis, keys, settings = env.redis, env.keys, env.settings
    live_ttl = settings.batch_result_ttl + int(settings.batch_timeout)
    assert 0 < await redis.ttl(keys.cancelled("s1")) <= settings.session_ttl
    assert 0 < await redis.ttl(keys.lease("s1")) <= settings.session_ttl
    assert 0 < await redis.ttl(keys.cancelled("s2")) <= 30  # its own TTL, untouched
    assert 0 < await redis.ttl(keys.lease("s2")) <= 5
    assert await redis.smembers(keys.cancelled("s1")) == {b"*"}
    for key in (keys.batch("live"), keys.cancelled(batch_session("live"))):
        assert settings.batch_result_ttl < await redis.ttl(key) <= live_ttl
    assert 0 < await redis.ttl(keys.batch("done")) <= 900
    assert 0 < await redis.ttl(keys.batch_result("done")) <= settings.batch_result_ttl
    assert await redis.get(keys.batch_result("done")) == b"RIFF"
    for name, expected in (("gone", 0), ("live", 1)):
        assert await redis.exists(keys.batch_sentences(name)) == expected
        assert await redis.exists(keys.batch_queued(name)) == expected
        assert await redis.exists(keys.batch_audio(name)) == expected
        assert await redis.exists(keys.batch_events(name)) == expected
    workers = {member.decode() for member in await redis.zrange(keys.workers, 0, -1)}
    assert workers == {"stale-hash", "fresh"}
    assert not orphans.files["gone"].exists()
    for name in ("live", "fresh", "temporary"):
        assert orphans.files[name].exists(), name
    assert await redis.ttl(keys.job_shard(0).rest) == -1


async def test_expire_orphans_fixes_every_kind_once(env: Env) -> None:
    orphans = await make_orphans(env)

    counts = await expire_orphans(env.redis, env.keys, env.settings, now=orphans.now)

    assert counts == EXPECTED_ORPHANS
    await assert_orphans_fixed(env, orphans)
    again = await expire_orphans(env.redis, env.keys, env.settings, now=orphans.now)
    assert again == dict.fromkeys(EXPECTED_ORPHANS, 0)
    await assert_orphans_fixed(env, orphans)


async def test_concurrent_expire_orphans_count_each_fix_once(env: Env) -> None:
    orphans = await make_orphans(env)
    results = await asyncio.gather(
        *(expire_orphans(env.redis, env.keys, env.settings, now=orphans.now) for _ in range(3))
    )
    total: Counter[str] = Counter()
    for counts in results:
        total.update(counts)
    assert dict(total) == EXPECTED_ORPHANS
    await assert_orphans_fixed(env, orphans)


async def test_a_heartbeat_during_the_check_keeps_the_worker(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker comes back between the hash check and the ZREM: its ZADD aborts the
    transaction, and the second look finds it fresh."""
    redis, keys, now = env.redis, env.keys, time.time()
    await redis.zadd(keys.workers, {"w1": now - 100, "w2": now - 100})
    original = housekeeping._without_hash
    beats = 0

    async def check_then_beat(redis: Client, keys: Keys, members: list[bytes]) -> list[bytes]:
        nonlocal beats
        gone = await original(redis, keys, members)
        if not beats:
            beats += 1
            await redis.hset(keys.worker("w1"), "slots", 1)
            await redis.zadd(keys.workers, {"w1": now})
        return gone

    monkeypatch.setattr(housekeeping, "_without_hash", check_then_beat)
    counts = await expire_orphans(redis, keys, env.settings, now=now)
    assert beats == 1 and counts["workers"] == 1
    assert await redis.zrange(keys.workers, 0, -1) == [b"w1"]


async def test_expire_orphans_without_batch_dir(env: Env) -> None:
    settings = env.settings.replace(batch_dir="")
    await env.redis.set(env.keys.lease("s1"), b"1")
    counts = await expire_orphans(env.redis, env.keys, settings)
    assert counts["session_keys"] == 1 and counts["files"] == 0
    # A batch_dir that does not exist (yet) is nothing to clean either.
    counts = await expire_orphans(env.redis, env.keys, env.settings)
    assert counts["files"] == 0


# ------------------------------------------------------------------------ drain_dead_letters


async def dead_letter_jobs(env: Env, jobs: list[Job]) -> list[str]:
    """Dead-letter `jobs` as a worker does (Recovery.dead_letter); their dead-letter ids."""
    await ensure_jobs_group(env.redis, env.keys)
    recovery = Recovery(env.redis, env.keys, "w1", claim_idle=1.0, max_deliveries=3)
    for index, job in enumerate(jobs):
        stream = env.keys.shard_of(job.session_id).rest
        delivery = Delivery(stream, f"{index + 1}-0".encode(), {b"j": job.pack()}, attempt=4)
        await recovery.dead_letter(delivery)
    return await stream_ids(env.redis, env.keys.dead_letters)


def job(index: int, batch: str = "") -> Job:
    session = batch_session(batch) if batch else f"sess-{index}"
    return Job(session, 2, index, "x" * (10 + index), "alba", batch=batch)


async def report_by_id(env: Env) -> dict[str, dict[str, Any]]:
    return {report["id"]: report for report in await dead_letter_report(env.redis, env.keys)}


async def assert_drained(env: Env) -> None:
    assert await env.redis.xlen(env.keys.dead_letters) == 0
    assert (await env.redis.xpending(env.keys.dead_letters, DRAIN_GROUP))["pending"] == 0


async def test_drain_reports_each_dead_letter_once(env: Env) -> None:
    jobs = [job(0), job(1), job(2, batch="b1")]
    ids = await dead_letter_jobs(env, jobs)
    now = time.time()

    counts = await drain_dead_letters(env.redis, env.keys, env.settings, now=now)

    reason = "gave up after 3 deliveries: every worker that took it died"
    assert counts == {"drained": 3, "reasons": {reason: 3}, "pruned": 0}
    reports = await report_by_id(env)
    assert sorted(reports) == sorted(ids)
    for index, (entry_id, queued) in enumerate(zip(ids, jobs, strict=True)):
        report = reports[entry_id]
        assert report["session_id"] == queued.session_id
        assert (report["utterance"], report["sentence"]) == (2, index)
        assert report["batch"] == queued.batch
        assert report["text_chars"] == len(queued.text)
        assert report["voice"] == "alba"
        assert report["stream"] == env.keys.shard_of(queued.session_id).rest
        assert report["entry"] == f"{index + 1}-0"
        assert report["deliveries"] == 3
        assert report["reason"] == reason
        assert now - 60 < report["at"] <= now + 1
        assert report["reported_at"] == round(now, 3)
        assert "error" not in report
    ttl = await env.redis.ttl(env.keys.dead_letter_report)
    assert 0 < ttl <= env.settings.dead_letter_max_age
    await assert_drained(env)

    again = await drain_dead_letters(env.redis, env.keys, env.settings, now=now + 60)
    assert again == {"drained": 0, "reasons": {}, "pruned": 0}
    assert await report_by_id(env) == reports


async def test_concurrent_drains_report_each_entry_exactly_once(env: Env) -> None:
    ids = await dead_letter_jobs(env, [job(index) for index in range(50)])
    others = [connect(env.settings.redis_url) for _ in range(2)]
    try:
        results = await asyncio.gather(
            drain_dead_letters(env.redis, env.keys, env.settings),
            *(drain_dead_letters(client, env.keys, env.settings) for client in others),
        )
    finally:
        for client in others:
            await client.aclose()
    assert sum(result["drained"] for result in results) == 50
    assert sorted(await report_by_id(env)) == sorted(ids)
    assert await env.redis.hlen(env.keys.dead_letter_report) == 50
    await assert_drained(env)


async def test_malformed_dead_letters_are_reported(env: Env) -> None:
    keys = env.keys
    garbled = await env.redis.xadd(
        keys.dead_letters,
        {"j": b"\xc1\xff not msgpack", "stream": "s", "reason": "r1", "at": "12.5"},
    )
    bare = await env.redis.xadd(keys.dead_letters, {"deliveries": "many", "reason": "r2"})
    wrong_shape = await env.redis.xadd(keys.dead_letters, {"j": b"\x93\x01\x02\x03"})

    counts = await drain_dead_letters(env.redis, env.keys, env.settings)

    assert counts["drained"] == 3
    assert counts["reasons"] == {"r1": 1, "r2": 1, "unknown": 1}
    reports = await report_by_id(env)
    assert sorted(reports) == sorted(i.decode() for i in (garbled, bare, wrong_shape))
    for report in reports.values():
        assert report["error"].startswith("malformed job")
        assert report["session_id"] is None
    assert reports[garbled.decode()]["stream"] == "s"
    assert reports[garbled.decode()]["at"] == 12.5
    assert reports[bare.decode()]["deliveries"] == "many"
    assert reports[wrong_shape.decode()]["reason"] is None
    await assert_drained(env)


async def test_entries_of_a_crashed_drainer_are_claimed(env: Env) -> None:
    redis, keys = env.redis, env.keys
    ids = await dead_letter_jobs(env, [job(0), job(1), job(2)])
    await redis.xgroup_create(keys.dead_letters, DRAIN_GROUP, id="0")
    # A drainer took two entries, reported the first (HSETNX) and died before acknowledging.
    taken = await redis.xreadgroup(DRAIN_GROUP, "dead-drainer", {keys.dead_letters: ">"}, count=2)
    assert [entry_id.decode() for entry_id, _ in taken[0][1]] == ids[:2]
    earlier = {"id": ids[0], "reason": "reported before the crash", "at": 1.0}
    await redis.hset(keys.dead_letter_report, ids[0], json.dumps(earlier))

    # Recently taken: still the dead drainer's for now; only the third entry is drained.
    first = await drain_dead_letters(redis, keys, env.settings)
    assert first["drained"] == 1
    assert (await redis.xpending(keys.dead_letters, DRAIN_GROUP))["pending"] == 2
    assert await stream_ids(redis, keys.dead_letters) == ids[:2]

    # Idle past the claim threshold (XCLAIM IDLE ages them as time would).
    await redis.xclaim(keys.dead_letters, DRAIN_GROUP, "dead-drainer", 0, ids[:2], idle=120_000)
    second = await drain_dead_letters(redis, keys, env.settings)
    assert second["drained"] == 2
    reports = await report_by_id(env)
    assert sorted(reports) == sorted(ids)
    assert reports[ids[0]] == earlier  # reported once: the earlier report stands
    assert reports[ids[1]]["session_id"] == "sess-1"
    await assert_drained(env)


async def test_claim_idle_can_be_lowered(env: Env) -> None:
    redis, keys = env.redis, env.keys
    ids = await dead_letter_jobs(env, [job(0)])
    await redis.xgroup_create(keys.dead_letters, DRAIN_GROUP, id="0")
    await redis.xreadgroup(DRAIN_GROUP, "dead-drainer", {keys.dead_letters: ">"}, count=1)
    counts = await drain_dead_letters(redis, keys, env.settings, claim_idle=0)
    assert counts["drained"] == 1
    assert sorted(await report_by_id(env)) == ids
    await assert_drained(env)


async def test_report_is_sorted_and_old_reports_are_pruned(env: Env) -> None:
    redis, keys, now = env.redis, env.keys, time.time()
    for at in ("30", "10", "20"):
        await redis.xadd(keys.dead_letters, {"reason": f"at {at}", "at": at})
    stale_id = ms_id(now - env.settings.dead_letter_max_age - 10)
    await redis.hset(keys.dead_letter_report, stale_id, json.dumps({"id": stale_id, "at": 1}))

    counts = await drain_dead_letters(redis, keys, env.settings, now=now)

    assert counts["drained"] == 3 and counts["pruned"] == 1
    assert [report["at"] for report in await dead_letter_report(redis, keys)] == [10, 20, 30]


# ----------------------------------------------------------------------------- publish_stats


async def test_publish_stats_writes_and_publishes_queue_figures(env: Env) -> None:
    redis, keys, now = env.redis, env.keys, time.time()
    await ensure_jobs_group(redis, keys)
    first0, rest1, batch0 = keys.job_shard(0).first, keys.job_shard(1).rest, keys.job_shard(0).batch
    for seq in range(3):
        await redis.xadd(first0, {"j": b"x"}, id=ms_id(now - 5, seq))
    for seq in range(2):
        await redis.xadd(rest1, {"j": b"x"}, id=ms_id(now - 2, seq))
    await redis.xadd(batch0, {"j": b"x"}, id=ms_id(now - 100))
    await redis.xreadgroup(JOBS_GROUP, "w1", {first0: ">"}, count=2)  # two in flight
    await redis.xadd(keys.dead_letters, {"reason": "r"}, id=ms_id(now - 50))
    await redis.zadd(keys.workers, {"w1": now - 1, "w2": now - 5, "w3": now - 100})

    subscriber = redis.pubsub()
    await subscriber.subscribe(keys.stats_channel)
    try:
        assert (await subscriber.get_message(timeout=2.0))["type"] == "subscribe"
        stats = await publish_stats(redis, keys, env.settings, now=now)
        message = await subscriber.get_message(ignore_subscribe_messages=True, timeout=2.0)
    finally:
        await subscriber.aclose()

    expected = {
        "shard0.first": (3, 2, 5.0),
        "shard0.rest": (0, 0, 0.0),
        "shard0.batch": (1, 0, 100.0),
        "shard1.first": (0, 0, 0.0),
        "shard1.rest": (2, 0, 2.0),
        "shard1.batch": (0, 0, 0.0),
        "dead_letters": (1, 0, 50.0),  # no drain yet: no group, nothing pending
    }
    for label, (length, pending, age) in expected.items():
        assert stats[f"{label}.length"] == length, label
        assert stats[f"{label}.pending"] == pending, label
        assert stats[f"{label}.oldest_age"] == pytest.approx(age, abs=0.002), label
    assert stats["workers"] == 2
    assert stats["at"] == round(now, 3)
    assert len(stats) == 3 * len(expected) + 2
    assert message is not None and json.loads(message["data"]) == stats
    stored = await redis.hgetall(keys.stats)
    assert {k.decode(): v.decode() for k, v in stored.items()} == {
        k: str(v) for k, v in stats.items()
    }
    assert 0 < await redis.ttl(keys.stats) <= 300


async def test_publish_stats_counts_a_drainers_pending_entries(env: Env) -> None:
    redis, keys = env.redis, env.keys
    await redis.xgroup_create(keys.dead_letters, DRAIN_GROUP, id="0", mkstream=True)
    await redis.xadd(keys.dead_letters, {"reason": "r"})
    await redis.xreadgroup(DRAIN_GROUP, "drainer", {keys.dead_letters: ">"}, count=1)
    stats = await publish_stats(redis, keys, env.settings)
    assert (stats["dead_letters.length"], stats["dead_letters.pending"]) == (1, 1)
    assert stats["workers"] == 0
    # Fewer shards later: the hash holds the new figures only.
    fewer = Keys(keys.prefix, 1)
    stats = await publish_stats(redis, fewer, env.settings)
    stored = {k.decode() for k in await redis.hkeys(keys.stats)}
    assert stored == set(stats) and "shard1.rest.length" not in stored
