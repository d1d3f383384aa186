"""The whole pipeline on a real Redis Cluster (3 masters started from `redis-server` binaries
by tests/redis_servers.py): jobs sharded over the masters, the return path on sharded pub/sub,
cancels, crash recovery, a slot moving under a live session, and a master killed outright."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from redis.cluster import RedisCluster as SyncCluster

from tests.conftest import CI
from tests.harness import Client, Pipeline, pending_jobs, queued_jobs, start_pipeline
from tests.redis_servers import RedisBinaryMissing, RedisClusterNodes
from tests.worker.test_recovery import FAST, TEXT, ghost_pipeline, reference_audio, worker_on
from voxline.shared.connections import connect
from voxline.shared.keys import JOBS_GROUP, Keys
from voxline.shared.streams import shard_advice
from voxline.worker.engines.tone import ToneEngine

# A Redis Cluster of its own.
pytestmark = pytest.mark.integration

SHARDS = 3
SENTENCES = ["First of three.", "Second one here.", "And the third."]


def sync_cluster(url: str) -> SyncCluster:
    hosts = url.removeprefix("redis+cluster://")
    host, port = hosts.split(",")[0].rsplit(":", 1)
    return SyncCluster(host=host, port=int(port))


@pytest.fixture
def prefix(redis_cluster_url: str) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards, on every master."""
    name = f"vxcl-{uuid.uuid4().hex[:10]}"
    yield name
    client = sync_cluster(redis_cluster_url)
    try:
        for key in list(client.scan_iter(match=f"{name}:*", count=1000)):
            client.delete(key)
    finally:
        client.close()


def shard_node_ports(nodes: RedisClusterNodes, keys: Keys) -> list[int]:
    return [nodes.node_for_key(shard.rest).port for shard in keys.job_shards]


def entries_read(client: SyncCluster, stream: str) -> int:
    """How many entries the workers' group has read from `stream` (Redis 7)."""
    groups = client.xinfo_groups(stream)
    return sum(int(g.get("entries-read") or 0) for g in groups if g["name"] == JOBS_GROUP.encode())


def shard_subscribers(nodes: RedisClusterNodes, channel: str) -> tuple[int, int]:
    """(sharded, classic) subscribers of `channel` on the master owning its slot."""
    owner = nodes.node_for_key(channel).client()
    try:
        ((_, sharded),) = owner.pubsub_shardnumsub(channel)
        ((_, classic),) = owner.pubsub_numsub(channel)
    finally:
        owner.close()
    return int(sharded), int(classic)


async def speak(pipeline: Pipeline, texts: list[str]) -> tuple[str, list[Any], dict[str, Any]]:
    """One session speaking one utterance; its id, sentences and session.done."""
    async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
        ready = next(m for m in client.received if isinstance(m, dict))
        session_id = ready["session_id"]
        for text in texts:
            await client.send("input.text", text=text + " ")
        await client.send("input.done")
        sentences, done = await client.utterance(timeout=15)
    return session_id, sentences, done


async def test_sessions_stream_in_order_over_every_shard_and_leave_nothing_behind(
    redis_cluster_url: str, redis_cluster_nodes: RedisClusterNodes, prefix: str
) -> None:
    keys = Keys(prefix, SHARDS)
    assert len(set(shard_node_ports(redis_cluster_nodes, keys))) == 3, "one shard per master"
    tone = ToneEngine()
    expected = [tone.duration_samples(t, 1.0) * 2 for t in SENTENCES]
    async with start_pipeline(
        redis_cluster_url, prefix, workers=2, concurrency=2, job_shards=SHARDS
    ) as pipeline:
        results = await asyncio.gather(*(speak(pipeline, SENTENCES) for _ in range(8)))
        client = sync_cluster(redis_cluster_url)
        try:
            for _, sentences, done in results:
                assert done["total_sentences"] == 3
                assert [s.start["sentence_index"] for s in sentences] == [0, 1, 2]
                assert [len(s.audio) for s in sentences] == expected
                assert not any(s.done["error"] for s in sentences)
            # Each session's jobs went to its own shard, and only there: 8 sessions x 3, plus
            # the jobs readers brought beyond their free slots and put back.
            used = [keys.shard_of(sid).index for sid, _, _ in results]
            reads = [
                entries_read(client, shard.first) + entries_read(client, shard.rest)
                for shard in keys.job_shards
            ]
            for shard, read in zip(keys.job_shards, reads, strict=True):
                assert read >= 3 * used.count(shard.index)
                assert (read == 0) == (shard.index not in used)
            assert sum(reads) == 24 + pipeline.total("handed_back")
            redis_client = connect(redis_cluster_url)
            try:
                assert await pending_jobs(redis_client, keys) == 0
                assert await queued_jobs(redis_client, keys) == 0
            finally:
                await redis_client.aclose()
            # Sessions closed: leases released, channels unsubscribed.
            for sid, _, _ in results:
                assert not client.exists(keys.lease(sid))
                assert shard_subscribers(redis_cluster_nodes, keys.audio_channel(sid)) == (0, 0)
        finally:
            client.close()
    assert pipeline.total("completed") == 24 and pipeline.total("failed") == 0


async def test_the_return_path_is_sharded_pubsub_on_the_sessions_master(
    redis_cluster_url: str, redis_cluster_nodes: RedisClusterNodes, prefix: str
) -> None:
    async with start_pipeline(redis_cluster_url, prefix, job_shards=SHARDS) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
            session_id = c.received[0]["session_id"]  # type: ignore[index]
            channel = Keys(prefix).audio_channel(session_id)
            # SSUBSCRIBE on the owner of the session's slot; nothing on classic pub/sub, which
            # the cluster bus would copy to every node.
            assert shard_subscribers(redis_cluster_nodes, channel) == (1, 0)
            await c.send("input.text", text=TEXT)
            await c.send("input.done")
            sentences, _ = await c.utterance()
            assert len(sentences) == 1 and sentences[0].audio


async def test_barge_in_stops_in_flight_and_queued_work(
    redis_cluster_url: str, prefix: str
) -> None:
    """The cancel mark (on the session's slot) lands before the notice (classic PUBLISH on
    another node): queued sentences are never started, the one in flight stops."""
    async with start_pipeline(
        redis_cluster_url,
        prefix,
        job_shards=SHARDS,
        engine_options={"rtf": "1.0", "chunk_ms": "50"},
    ) as p:
        async with Client.connect(p, {"response_format": "pcm", "stream_audio": True}) as c:
            session_id = c.received[0]["session_id"]  # type: ignore[index]
            await c.send("input.text", text="One long first sentence here. Two. Three. Four.")
            await c.send("input.text", text=" buffered partial")
            await c.expect("audio.start")
            assert isinstance(await c.recv(), bytes)
            await c.send("input.cancel")
            message = await c.until("input.cancelled")
            assert message["cancelled_sentences"] == [0, 1, 2, 3]
            await c.send("input.text", text="After the barge-in.")
            await c.send("input.done")
            sentences, _ = await c.utterance()
            assert [s.start["sentence_text"] for s in sentences] == ["After the barge-in."]
            client = sync_cluster(redis_cluster_url)
            try:
                assert client.smembers(Keys(prefix).cancelled(session_id)) == {b"u0"}
            finally:
                client.close()
    assert p.total("cancelled") == 1
    assert p.total("skipped_cancelled") == 3
    assert p.total("chunks_after_cancel") <= 1


async def test_a_dead_workers_job_is_claimed_from_its_shard(
    redis_cluster_url: str, prefix: str
) -> None:
    async with ghost_pipeline(redis_cluster_url, prefix, job_shards=SHARDS) as (pipeline, ghost):
        expected = await reference_audio(pipeline, TEXT)
        async with Client.connect(pipeline, {"response_format": "pcm"}) as client:
            await pipeline.stop_workers()
            await client.send("input.text", text=TEXT)
            await client.send("input.done")
            await ghost.take()
            async with worker_on(pipeline.settings) as rescuer:
                sentences, _ = await client.utterance()
                assert rescuer.stats["claimed"] == 1
        assert sentences[0].audio == expected and not sentences[0].errors
        assert await ghost.pending() == 0


async def test_a_session_follows_its_slot_to_another_master(
    redis_cluster_url: str, redis_cluster_nodes: RedisClusterNodes, prefix: str
) -> None:
    """Resharding under a live session: the server drops the shard subscription on the old
    owner; the front end reports what may have been lost and subscribes on the new owner."""
    nodes = redis_cluster_nodes
    async with start_pipeline(redis_cluster_url, prefix, job_shards=SHARDS) as pipeline:
        async with Client.connect(pipeline, {"response_format": "pcm"}) as c:
            session_id = c.received[0]["session_id"]  # type: ignore[index]
            channel = Keys(prefix).audio_channel(session_id)
            slot = nodes.slot_of(channel)
            source = nodes.node_for_key(channel)
            target = next(n for n in nodes.nodes if n is not source)
            try:
                nodes.move_slot(slot, target)
                deadline = time.monotonic() + 5
                while shard_subscribers(nodes, channel) != (1, 0):
                    assert time.monotonic() < deadline, "the front end did not follow the slot"
                    await asyncio.sleep(0.05)
                assert nodes.node_for_key(channel) is target
                for text in ("After the move.", "Still here."):
                    await c.send("input.text", text=text)
                    await c.send("input.done")
                    sentences, _ = await c.utterance()
                    assert len(sentences) == 1 and sentences[0].audio
                    assert not sentences[0].errors
            finally:
                nodes.move_slot(slot, source)


# --- a master killed outright (a cluster of its own, with replicas) --------------------------


@pytest.fixture
def cluster_with_replicas() -> Iterator[RedisClusterNodes]:
    try:
        nodes = RedisClusterNodes(3, replicas=1, node_timeout_ms=1000)
    except RedisBinaryMissing as exc:
        if CI:
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    nodes.start()
    yield nodes
    nodes.close()


async def ready(http: str) -> int:
    async with httpx.AsyncClient() as client:
        return (await client.get(http + "/readyz")).status_code


async def wait_ready(http: str, expected: int, timeout: float) -> float:
    started = time.monotonic()
    while await ready(http) != expected:
        assert time.monotonic() - started < timeout, f"/readyz never said {expected}"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


@contextlib.asynccontextmanager
async def session_on(pipeline: Pipeline) -> AsyncIterator[tuple[Client, str]]:
    async with Client.connect(pipeline, {"response_format": "pcm", "stream_audio": True}) as client:
        yield client, client.received[0]["session_id"]  # type: ignore[index]


async def test_a_master_killed_mid_sentence(cluster_with_replicas: RedisClusterNodes) -> None:
    """SIGKILL of the master holding a live session's slot: its sentence ends with an explicit
    error at once (never a hang), /readyz says not ready until the replica has taken over, and
    then sessions work again, with their channels on the new master."""
    nodes = cluster_with_replicas
    prefix = f"vxcl-{uuid.uuid4().hex[:10]}"
    async with start_pipeline(
        nodes.url,
        prefix,
        job_shards=SHARDS,
        engine_options={"rtf": "1.0", "chunk_ms": "50"},
        **FAST,  # type: ignore[arg-type]
    ) as pipeline:
        async with session_on(pipeline) as (c, session_id):
            channel = Keys(prefix).audio_channel(session_id)
            victim = nodes.node_for_key(channel)
            replica = nodes.replica_of(victim)
            await c.send("input.text", text="A long sentence spoken slowly, word after word.")
            await c.send("input.done")
            await c.expect("audio.start")
            killed_at = time.monotonic()
            victim.kill()  # SIGKILL
            error = await c.until("error", timeout=10)
            assert error["code"] == "generation_failed"
            failed_after = time.monotonic() - killed_at
            done = await c.until("audio.done")
            assert done["error"] is True
            await c.until("session.done")
        assert failed_after < 3.0
        assert await ready(pipeline.http) == 503
        await wait_ready(pipeline.http, 200, timeout=30)
        assert nodes.node_for_key(channel) is replica
        # A new session whose channel lives on the promoted replica's slots.
        deadline = time.monotonic() + 20
        while True:
            async with session_on(pipeline) as (c, session_id):
                if nodes.node_for_key(Keys(prefix).audio_channel(session_id)) is replica:
                    await c.send("input.text", text="Back again.")
                    await c.send("input.done")
                    sentences, _ = await c.utterance(timeout=15)
                    break
            assert time.monotonic() < deadline
        assert len(sentences) == 1 and sentences[0].audio and not sentences[0].errors


async def test_too_few_shards_for_the_masters_are_reported(redis_cluster_url: str) -> None:
    client = connect(redis_cluster_url)
    try:
        await client.initialize()
        advice = shard_advice(client, Keys("vx", 1))
        assert advice is not None and "1 of the cluster's 3 masters" in advice
        assert "VOXLINE_JOB_SHARDS=6" in advice
        assert shard_advice(client, Keys("vx", SHARDS)) is None
    finally:
        await client.aclose()
