"""What redis-py's asyncio `RedisCluster` does for what voxline needs, checked against a real
3-master Redis Cluster (tests/redis_servers.py). Each test asserts today's behaviour — the
gaps included — so an upgrade of redis-py or Redis that changes a finding shows up here.
Findings and the design they lead to: docs/architecture.md, "Redis Cluster (groundwork)"."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster
from redis.exceptions import (
    CrossSlotTransactionError,
    MovedError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)

from tests.redis_servers import RedisBinaryMissing, RedisClusterNodes, RedisServer
from voxline.shared.connections import connect, is_cluster, parse_cluster_url, redacted
from voxline.shared.keys import JOBS_GROUP

# A Redis Cluster of its own.
pytestmark = pytest.mark.integration


@pytest.fixture
def prefix() -> str:
    return f"vxtest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def cluster(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect(redis_cluster_url)
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
async def blocking(redis_cluster_url: str) -> AsyncIterator[RedisCluster]:
    client = connect(redis_cluster_url, blocking=True)
    yield client
    await client.aclose()


def spread(client: RedisCluster, name: Callable[[str], str], count: int = 3) -> list[str]:
    """`count` names built by `name(session_id)` whose slots live on `count` different masters."""
    found: dict[str, str] = {}
    for i in range(10_000):
        candidate = name(f"s{i}")
        found.setdefault(client.get_node_from_key(candidate).name, candidate)
        if len(found) == count:
            return list(found.values())
    raise AssertionError("the cluster has fewer masters than asked")


SHARD_KINDS = ("ssubscribe", "sunsubscribe", "smessage")


async def next_message(pubsub: PubSub, kind: str, timeout: float = 3.0) -> dict[str, Any]:
    """The next message of `kind` (sharded reads for shard kinds), skipping others."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if kind in SHARD_KINDS and isinstance(pubsub, ClusterPubSub):
            message = await pubsub.get_sharded_message(timeout=0.05)
        else:
            message = await pubsub.get_message(timeout=0.05)
        if message is not None and message["type"] == kind:
            return message
    raise AssertionError(f"no {kind} message within {timeout}s")


async def sharded_messages(pubsub: ClusterPubSub, seconds: float) -> list[dict[str, Any]]:
    """Every sharded message that arrives within `seconds` (polling each node without waiting)."""
    messages = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = await pubsub.get_sharded_message(timeout=0.0)
        if message is None:
            await asyncio.sleep(0.01)
        else:
            messages.append(message)
    return messages


# --- shared/connections.py -------------------------------------------------------------------


def test_cluster_urls_are_parsed() -> None:
    assert is_cluster("redis+cluster://h:7000") and is_cluster("rediss+cluster://h:7000")
    assert not is_cluster("redis://h:6379/0") and not is_cluster("memory://x")

    parsed = parse_cluster_url("rediss+cluster://user:p%40ss@a:7000,b:7001,[::1]:7002/0")
    assert [(n.host, n.port) for n in parsed["startup_nodes"]] == [
        ("a", 7000),
        ("b", 7001),
        ("::1", 7002),
    ]
    assert parsed["ssl"] is True
    assert (parsed["username"], parsed["password"]) == ("user", "p@ss")

    plain = parse_cluster_url("redis+cluster://h")
    assert plain["ssl"] is False and plain["startup_nodes"][0].port == 6379
    assert plain["username"] is None and plain["password"] is None
    for bad in ("redis+cluster://h:1/1", "redis+cluster://h:1?ssl_cert_reqs=none", "redis://h:1"):
        with pytest.raises(ValueError):
            parse_cluster_url(bad)


async def test_connect_returns_a_cluster_client_with_the_same_timeouts() -> None:
    for blocking, read_timeout in ((False, 10), (True, 30)):
        client = connect("redis+cluster://127.0.0.1:1,127.0.0.1:2", blocking=blocking)
        plain = connect("redis://127.0.0.1:1/0", blocking=blocking)
        try:
            assert isinstance(client, RedisCluster) and not isinstance(plain, RedisCluster)
            kwargs = client.get_connection_kwargs()
            plain_kwargs = plain.connection_pool.connection_kwargs
            for name in (
                "socket_timeout",
                "socket_connect_timeout",
                "socket_keepalive",
                "health_check_interval",
            ):
                assert kwargs[name] == plain_kwargs[name], name
            assert kwargs["socket_timeout"] == read_timeout
            assert [(n.host, n.port) for n in client.startup_nodes] == [
                ("127.0.0.1", 1),
                ("127.0.0.1", 2),
            ]
        finally:
            await client.aclose()
            await plain.aclose()


async def test_the_client_discovers_every_master(
    cluster: RedisCluster, redis_cluster_nodes: RedisClusterNodes
) -> None:
    assert await cluster.ping() is True
    primaries = {node.port for node in cluster.get_primaries()}
    assert primaries == {node.port for node in redis_cluster_nodes.nodes}


# --- jobs streams ----------------------------------------------------------------------------


async def test_xreadgroup_block_wakes_on_xadd(
    cluster: RedisCluster, blocking: RedisCluster, prefix: str
) -> None:
    stream = f"{prefix}:{{jobs-0}}"
    await cluster.xgroup_create(stream, JOBS_GROUP, id="$", mkstream=True)
    read = asyncio.create_task(
        blocking.xreadgroup(JOBS_GROUP, "w1", {stream: ">"}, count=4, block=5000)
    )
    await asyncio.sleep(0.2)
    assert not read.done()  # really blocking on the server
    sent = time.monotonic()
    entry_id = await cluster.xadd(stream, {"j": b"job"}, maxlen=1000, approximate=True)
    reply = await asyncio.wait_for(read, 2)
    assert time.monotonic() - sent < 1.0
    assert reply == [[stream.encode(), [(entry_id, {b"j": b"job"})]]]


async def test_xreadgroup_reads_both_streams_of_a_shard_in_one_call(
    cluster: RedisCluster, blocking: RedisCluster, prefix: str
) -> None:
    priority, normal = f"{prefix}:{{jobs-1}}:priority", f"{prefix}:{{jobs-1}}"
    assert cluster.keyslot(priority) == cluster.keyslot(normal)
    for stream in (priority, normal):
        await cluster.xgroup_create(stream, JOBS_GROUP, id="$", mkstream=True)

    read = asyncio.create_task(
        blocking.xreadgroup(JOBS_GROUP, "w1", {priority: ">", normal: ">"}, count=1, block=5000)
    )
    await asyncio.sleep(0.2)
    await cluster.xadd(normal, {"j": b"n1"})
    reply = await asyncio.wait_for(read, 2)
    assert [stream for stream, _ in reply] == [normal.encode()]

    # COUNT applies to each stream: COUNT 1 over two streams can hand out two entries.
    await cluster.xadd(priority, {"j": b"p1"})
    await cluster.xadd(normal, {"j": b"n2"})
    await cluster.xadd(normal, {"j": b"n3"})
    reply = await blocking.xreadgroup(
        JOBS_GROUP, "w1", {priority: ">", normal: ">"}, count=1, block=100
    )
    assert {stream: [fields[b"j"] for _, fields in entries] for stream, entries in reply} == {
        priority.encode(): [b"p1"],
        normal.encode(): [b"n2"],
    }


async def test_xreadgroup_over_two_slots_is_refused(cluster: RedisCluster, prefix: str) -> None:
    one, other = f"{prefix}:{{jobs-0}}", f"{prefix}:{{jobs-1}}"
    assert cluster.keyslot(one) != cluster.keyslot(other)
    with pytest.raises(RedisClusterException, match="same key slot"):
        await cluster.xreadgroup(JOBS_GROUP, "w1", {one: ">", other: ">"}, count=1, block=10)


async def test_xpending_and_xautoclaim(cluster: RedisCluster, prefix: str) -> None:
    stream = f"{prefix}:{{jobs-2}}"
    await cluster.xgroup_create(stream, JOBS_GROUP, id="$", mkstream=True)
    entry_id = await cluster.xadd(stream, {"j": b"job"})
    await cluster.xreadgroup(JOBS_GROUP, "dead", {stream: ">"}, count=1)

    summary = await cluster.xpending(stream, JOBS_GROUP)
    assert summary["pending"] == 1
    assert summary["consumers"] == [{"name": b"dead", "pending": 1}]
    [row] = await cluster.xpending_range(stream, JOBS_GROUP, "-", "+", 10)
    assert (row["message_id"], row["consumer"]) == (entry_id, b"dead")

    await asyncio.sleep(0.05)
    cursor, claimed, deleted = await cluster.xautoclaim(
        stream, JOBS_GROUP, "alive", min_idle_time=20, start_id="0-0", count=10
    )
    assert cursor == b"0-0" and deleted == []  # Redis 7: the third element lists deleted ids
    assert claimed == [(entry_id, {b"j": b"job"})]
    summary = await cluster.xpending(stream, JOBS_GROUP)
    assert summary["consumers"] == [{"name": b"alive", "pending": 1}]


# --- pipelines -------------------------------------------------------------------------------


async def test_pipeline_without_transaction_mixes_slots(cluster: RedisCluster, prefix: str) -> None:
    """The worker's per-job round trips: cancel check + STARTED (session slot), ack (shard slot),
    counters and heartbeat (registry slots), in one pipeline."""
    stream = f"{prefix}:{{jobs-0}}"
    cancelled, audio = f"{prefix}:{{sid}}:cancelled", f"{prefix}:{{sid}}:audio"
    workers = f"{prefix}:workers"
    stream_node = cluster.get_node_from_key(stream).name
    worker = next(
        key
        for key in (f"{prefix}:worker:w{i}" for i in range(1000))
        if cluster.get_node_from_key(key).name != stream_node
    )
    await cluster.xgroup_create(stream, JOBS_GROUP, id="$", mkstream=True)
    entry_id = await cluster.xadd(stream, {"j": b"job"})
    await cluster.xreadgroup(JOBS_GROUP, "w1", {stream: ">"}, count=1)

    async with cluster.pipeline(transaction=False) as pipe:
        pipe.smismember(cancelled, ["*", "u0", "u0:s0"])
        pipe.spublish(audio, b"started")
        pipe.xack(stream, JOBS_GROUP, entry_id)
        pipe.xdel(stream, entry_id)
        pipe.hincrby(worker, "completed", 1)
        pipe.zadd(workers, {"w1": time.time()})
        results = await pipe.execute()
    assert results == [[0, 0, 0], 0, 1, 1, 1, 1]


async def test_pipeline_refuses_publish_but_sends_it_as_a_raw_command(
    cluster: RedisCluster, prefix: str
) -> None:
    channel = f"{prefix}:cancel"
    pubsub = cluster.pubsub()
    await pubsub.subscribe(channel)
    await next_message(pubsub, "subscribe")
    try:
        async with cluster.pipeline(transaction=False) as pipe:
            with pytest.raises(RedisClusterException, match="blocked"):
                pipe.publish(channel, b"refused")
            pipe.sadd(f"{prefix}:{{sid}}:cancelled", "*")
            pipe.execute_command("PUBLISH", channel, b"notice")  # routed by the channel's slot
            assert await pipe.execute() == [1, 1]
        assert (await next_message(pubsub, "message"))["data"] == b"notice"
    finally:
        await pubsub.aclose()


async def test_transactions_need_a_single_slot(cluster: RedisCluster, prefix: str) -> None:
    # A shard's two streams share the hash tag, so a claimed job can be handed back atomically.
    priority, normal = f"{prefix}:{{jobs-3}}:priority", f"{prefix}:{{jobs-3}}"
    await cluster.xgroup_create(normal, JOBS_GROUP, id="$", mkstream=True)
    entry_id = await cluster.xadd(normal, {"j": b"job"})
    await cluster.xreadgroup(JOBS_GROUP, "w1", {normal: ">"}, count=1)
    async with cluster.pipeline(transaction=True) as pipe:
        pipe.xadd(priority, {"j": b"job"})
        pipe.xack(normal, JOBS_GROUP, entry_id)
        pipe.xdel(normal, entry_id)
        _, acked, deleted = await pipe.execute()
    assert (acked, deleted) == (1, 1)
    assert (await cluster.xlen(priority), await cluster.xlen(normal)) == (1, 0)

    one, other = f"{prefix}:{{a}}", f"{prefix}:{{b}}"
    assert cluster.keyslot(one) != cluster.keyslot(other)
    with pytest.raises(CrossSlotTransactionError):
        async with cluster.pipeline(transaction=True) as pipe:
            pipe.set(one, 1)
            pipe.set(other, 1)
            await pipe.execute()


# --- classic pub/sub: the cancel broadcast ---------------------------------------------------


async def test_classic_pubsub_reaches_subscribers_on_any_node(
    cluster: RedisCluster, redis_cluster_nodes: RedisClusterNodes, prefix: str
) -> None:
    channel = f"{prefix}:cancel"
    pubsub = cluster.pubsub()
    assert isinstance(pubsub, ClusterPubSub)
    await pubsub.subscribe(channel)
    await next_message(pubsub, "subscribe")
    subscribed_on = pubsub.get_pubsub_node()
    assert subscribed_on is not None
    assert subscribed_on.name == cluster.get_node_from_key(channel).name  # the channel's slot
    try:
        for node in redis_cluster_nodes.nodes:
            direct = aioredis.Redis(host="127.0.0.1", port=node.port)
            try:
                receivers = await direct.publish(channel, f"via {node.port}")
            finally:
                await direct.aclose()
            # The cluster bus forwards PUBLISH to every node; the reply counts local ones only.
            assert receivers == (1 if node.port == subscribed_on.port else 0)
            message = await next_message(pubsub, "message")
            assert message["data"] == f"via {node.port}".encode()
        assert await cluster.publish(channel, b"routed") == 1  # sent to the channel's slot
        assert (await next_message(pubsub, "message"))["data"] == b"routed"
    finally:
        await pubsub.aclose()


# --- sharded pub/sub: the return path --------------------------------------------------------


async def test_sharded_pubsub_with_cluster_pubsub(
    cluster: RedisCluster, redis_cluster_nodes: RedisClusterNodes, prefix: str
) -> None:
    channels = spread(cluster, lambda sid: f"{prefix}:{{{sid}}}:audio")
    pubsub = cluster.pubsub()
    await pubsub.ssubscribe(*channels)
    try:
        confirmed = {m["channel"] for m in await sharded_messages(pubsub, 0.3)}
        assert confirmed == {c.encode() for c in channels}
        assert len(pubsub.node_pubsub_mapping) == 3  # one connection per master

        for channel in channels:
            assert await cluster.spublish(channel, channel.encode()) == 1
        async with cluster.pipeline(transaction=False) as pipe:
            for channel in channels:
                pipe.spublish(channel, b"piped")
            assert await pipe.execute() == [1, 1, 1]
        received = [(m["type"], m["data"]) for m in await sharded_messages(pubsub, 0.3)]
        assert sorted(received) == sorted(
            [("smessage", c.encode()) for c in channels] + [("smessage", b"piped")] * 3
        )

        # SPUBLISH is answered by the shard that owns the channel's slot only.
        elsewhere = next(
            n
            for n in redis_cluster_nodes.nodes
            if n is not redis_cluster_nodes.node_for_key(channels[0])
        )
        direct = aioredis.Redis(host="127.0.0.1", port=elsewhere.port)
        try:
            with pytest.raises(MovedError):
                await direct.spublish(channels[0], b"x")
        finally:
            await direct.aclose()
    finally:
        await pubsub.aclose()


async def test_sharded_subscribe_needs_an_initialized_client(
    redis_cluster_url: str, prefix: str
) -> None:
    client = connect(redis_cluster_url, blocking=True)
    try:
        with pytest.raises(SlotNotCoveredError):  # the slot map is loaded on first command
            await client.pubsub().ssubscribe(f"{prefix}:{{sid}}:audio")
        await client.initialize()
        pubsub = client.pubsub()
        await pubsub.ssubscribe(f"{prefix}:{{sid}}:audio")
        await next_message(pubsub, "ssubscribe")
        await pubsub.aclose()
    finally:
        await client.aclose()


async def test_get_sharded_message_waits_on_each_node_in_turn(
    cluster: RedisCluster, prefix: str
) -> None:
    channels = spread(cluster, lambda sid: f"{prefix}:{{{sid}}}:audio")
    pubsub = cluster.pubsub()
    await pubsub.ssubscribe(*channels)
    try:
        await sharded_messages(pubsub, 0.3)  # the confirmations
        # With nothing to read, one call waits `timeout` on every node, one after the other...
        started = time.monotonic()
        assert await pubsub.get_sharded_message(timeout=0.5) is None
        assert time.monotonic() - started >= 1.4

        # ...so a reader must not block on all nodes in one call. One task per node
        # (`target_node`) wakes as soon as its own node has a message.
        nodes = [cluster.get_node_from_key(c) for c in channels]
        readers = [
            asyncio.create_task(pubsub.get_sharded_message(timeout=5, target_node=node))
            for node in nodes
        ]
        await asyncio.sleep(0.1)
        sent = time.monotonic()
        await cluster.spublish(channels[-1], b"last node")
        last = await asyncio.wait_for(readers[-1], 2)
        assert time.monotonic() - sent < 0.5
        assert last is not None and last["data"] == b"last node"
        for channel in channels[:-1]:
            await cluster.spublish(channel, b"release")
        await asyncio.wait_for(asyncio.gather(*readers[:-1]), 2)
    finally:
        await pubsub.aclose()


async def test_cluster_pubsub_after_a_slot_move(
    cluster: RedisCluster,
    redis_cluster_nodes: RedisClusterNodes,
    redis_cluster_url: str,
    prefix: str,
) -> None:
    """The server drops shard subscriptions of a slot that moves away (pushing `sunsubscribe`);
    redis-py resubscribes on the new owner only once its slot map is refreshed."""
    channel = f"{prefix}:{{moving}}:audio"
    slot = redis_cluster_nodes.slot_of(channel)
    source = redis_cluster_nodes.node_for_key(channel)
    target = next(n for n in redis_cluster_nodes.nodes if n is not source)
    subscriber = connect(redis_cluster_url, blocking=True)
    await subscriber.initialize()
    pubsub = subscriber.pubsub()
    await pubsub.ssubscribe(channel)
    await next_message(pubsub, "ssubscribe")
    try:
        redis_cluster_nodes.move_slot(slot, target)
        pushed = await next_message(pubsub, "sunsubscribe")
        assert pushed["channel"] == channel.encode()
        assert channel.encode() in pubsub.shard_channels  # redis-py still counts it subscribed

        # The publisher follows MOVED to the new owner, where nobody listens: the event is lost.
        assert await cluster.spublish(channel, b"lost") == 0
        assert await sharded_messages(pubsub, 0.3) == []

        # A refresh of the subscriber's slot map makes redis-py re-SSUBSCRIBE on the new owner
        # (and its reader sees one MovedError: the SUNSUBSCRIBE it sends to the old owner).
        await subscriber.nodes_manager.initialize()
        errors: list[Exception] = []
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            try:
                message = await pubsub.get_sharded_message(timeout=0.05)
            except MovedError as exc:
                errors.append(exc)
                continue
            if message is not None and message["type"] == "ssubscribe":
                break
        else:
            raise AssertionError("not resubscribed after the slot map refresh")
        assert len(errors) <= 1
        assert await cluster.spublish(channel, b"after") == 1
        assert (await next_message(pubsub, "smessage"))["data"] == b"after"
    finally:
        await pubsub.aclose()
        await subscriber.aclose()
        redis_cluster_nodes.move_slot(slot, source)


# --- the workaround: a sharded subscriber of voxline's own -----------------------------------


class PerNodeShardSubscriber:
    """Sharded subscriptions on plain `redis.asyncio.Redis` connections, one per master.

    - A channel is SSUBSCRIBEd on the master that owns its slot (`get_node_from_key`).
    - One reader task per node, each blocking on its own connection, so an event on any node
      is delivered at once (unlike `ClusterPubSub.get_sharded_message`).
    - A `sunsubscribe` the server pushes (slot moved, failover) makes it refresh the cluster
      client's slot map and resubscribe the channel on the new owner.
    """

    def __init__(self, cluster: RedisCluster) -> None:
        self.cluster = cluster
        self.received: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
        self.owner: dict[bytes, str] = {}  # channel -> node it is subscribed on
        self.followed = 0  # resubscriptions after a server-pushed sunsubscribe
        self._clients: dict[str, aioredis.Redis] = {}
        self._pubsubs: dict[str, PubSub] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._confirm: dict[bytes, asyncio.Future[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def subscribe(self, channel: str | bytes, timeout: float = 5.0) -> None:
        key = channel.encode() if isinstance(channel, str) else channel
        node = self.cluster.get_node_from_key(key)
        pubsub = self._pubsub(node)
        confirmed = asyncio.get_running_loop().create_future()
        self._confirm[key] = confirmed
        self.owner[key] = node.name
        await pubsub.ssubscribe(key)
        if node.name not in self._readers:
            self._readers[node.name] = asyncio.create_task(self._read(node.name))
        await asyncio.wait_for(confirmed, timeout)

    def _pubsub(self, node: ClusterNode) -> PubSub:
        if node.name not in self._pubsubs:
            client = aioredis.Redis(
                host=node.host,
                port=node.port,
                socket_connect_timeout=5,
                socket_timeout=30,
                health_check_interval=15,
            )
            self._clients[node.name] = client
            self._pubsubs[node.name] = client.pubsub()
        return self._pubsubs[node.name]

    async def _read(self, name: str) -> None:
        pubsub = self._pubsubs[name]
        while True:
            try:
                message = await pubsub.get_message(timeout=5.0)
            except (OSError, RedisError):
                await asyncio.sleep(0.1)  # redis-py reconnects and resubscribes
                continue
            if message is None:
                continue
            channel, kind = message["channel"], message["type"]
            if kind == "smessage":
                self.received.put_nowait((channel, message["data"]))
            elif kind == "ssubscribe":
                confirmed = self._confirm.pop(channel, None)
                if confirmed is not None and not confirmed.done():
                    confirmed.set_result(None)
            elif kind == "sunsubscribe" and self.owner.get(channel) == name:
                # Not asked for: the slot left this node. Forget it here (so a reconnect does
                # not replay it) and follow it to its new owner.
                pubsub.shard_channels.pop(channel, None)
                task = asyncio.create_task(self._follow(channel, name))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _follow(self, channel: bytes, old: str) -> None:
        for _ in range(100):
            await self.cluster.nodes_manager.initialize()
            if self.cluster.get_node_from_key(channel).name != old:
                break
            await asyncio.sleep(0.05)  # the node we asked may not know the new owner yet
        await self.subscribe(channel)
        self.followed += 1

    async def close(self) -> None:
        for task in [*self._readers.values(), *self._tasks]:
            task.cancel()
        await asyncio.gather(*self._readers.values(), *self._tasks, return_exceptions=True)
        for pubsub in self._pubsubs.values():
            await pubsub.aclose()
        for client in self._clients.values():
            await client.aclose()


async def receive(subscriber: PerNodeShardSubscriber, timeout: float = 2.0) -> tuple[bytes, bytes]:
    return await asyncio.wait_for(subscriber.received.get(), timeout)


async def test_per_node_subscriber_delivers_at_once_and_follows_a_slot_move(
    cluster: RedisCluster,
    redis_cluster_nodes: RedisClusterNodes,
    redis_cluster_url: str,
    prefix: str,
) -> None:
    own = connect(redis_cluster_url, blocking=True)
    await own.initialize()
    subscriber = PerNodeShardSubscriber(own)
    channels = spread(cluster, lambda sid: f"{prefix}:{{{sid}}}:audio")
    moving = channels[0]
    slot = redis_cluster_nodes.slot_of(moving)
    source = redis_cluster_nodes.node_for_key(moving)
    try:
        for channel in channels:
            await subscriber.subscribe(channel)
        assert len(subscriber._clients) == 3
        for channel in reversed(channels):
            sent = time.monotonic()
            assert await cluster.spublish(channel, b"event") == 1
            assert await receive(subscriber) == (channel.encode(), b"event")
            assert time.monotonic() - sent < 0.5  # though each read waits up to 5 s

        target = next(n for n in redis_cluster_nodes.nodes if n is not source)
        redis_cluster_nodes.move_slot(slot, target)
        deadline = time.monotonic() + 5
        while subscriber.followed < 1:
            assert time.monotonic() < deadline, "did not follow the slot move"
            await asyncio.sleep(0.02)
        assert subscriber.owner[moving.encode()] == f"127.0.0.1:{target.port}"
        assert await cluster.spublish(moving, b"after move") == 1
        assert await receive(subscriber) == (moving.encode(), b"after move")
    finally:
        await subscriber.close()
        await own.aclose()
        redis_cluster_nodes.move_slot(slot, source)


# --- failover (a cluster with one replica per master) ----------------------------------------


@pytest.fixture(scope="module")
def cluster_with_replicas() -> Iterator[RedisClusterNodes]:
    try:
        nodes = RedisClusterNodes(3, replicas=1)
    except RedisBinaryMissing as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))
    nodes.start()
    yield nodes
    nodes.close()


async def test_after_a_failover(cluster_with_replicas: RedisClusterNodes, prefix: str) -> None:
    """A manual failover: streams follow at once (MOVED); shard subscriptions on the demoted
    master are dropped by the server, and both subscribers above recover."""
    nodes = cluster_with_replicas
    stream, channel = f"{prefix}:{{jobs-0}}", f"{prefix}:{{jobs-0}}:events"
    client = connect(nodes.url)
    subscriber_client = connect(nodes.url, blocking=True)
    own = connect(nodes.url, blocking=True)
    for c in (client, subscriber_client, own):
        await c.initialize()
    pubsub = subscriber_client.pubsub()
    subscriber = PerNodeShardSubscriber(own)
    try:
        await client.xgroup_create(stream, JOBS_GROUP, id="$", mkstream=True)
        await pubsub.ssubscribe(channel)
        await next_message(pubsub, "ssubscribe")
        await subscriber.subscribe(channel)

        master = nodes.node_for_key(stream)
        replica = nodes.replica_of(master)
        nodes.failover(replica)

        entry_id = await client.xadd(stream, {"j": b"job"})  # MOVED, map refresh, retry
        reply = await client.xreadgroup(JOBS_GROUP, "w1", {stream: ">"}, count=1)
        assert reply == [[stream.encode(), [(entry_id, {b"j": b"job"})]]]
        assert client.get_node_from_key(stream).port == replica.port

        await next_message(pubsub, "sunsubscribe")  # pushed by the demoted master
        deadline = time.monotonic() + 5
        while subscriber.followed < 1:
            assert time.monotonic() < deadline, "per-node subscriber did not follow"
            await asyncio.sleep(0.02)

        await subscriber_client.nodes_manager.initialize()
        await next_message(pubsub, "ssubscribe", timeout=5)  # redis-py resubscribed
        await client.spublish(channel, b"after failover")
        assert await receive(subscriber) == (channel.encode(), b"after failover")
        assert (await next_message(pubsub, "smessage"))["data"] == b"after failover"
    finally:
        await subscriber.close()
        await pubsub.aclose()
        for c in (client, subscriber_client, own):
            await c.aclose()


# --- tests/redis_servers.py itself -----------------------------------------------------------


def test_redis_server_restarts_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    client = redis_server.client()
    try:
        assert client.set("k", "v")
        redis_server.restart()
        assert redis_server.port == port and redis_server.running
        assert client.get("k") is None  # no persistence by default; the client reconnects
        redis_server.restart(kill=True, down_for=0.1)
        assert client.ping()
        redis_server.stop()
        assert not redis_server.running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        redis_server.start()
        assert client.ping()
    finally:
        client.close()


def test_passwords_are_redacted_from_urls_shown_to_people() -> None:
    assert redacted("redis://:s3cret@h:6379/0") == "redis://:***@h:6379/0"
    assert redacted("rediss+cluster://u:p%40ss@a:1,b:2") == "rediss+cluster://u:***@a:1,b:2"
    assert redacted("redis://user@h:6379") == "redis://user@h:6379"  # no password
    assert redacted("memory://x") == "memory://x"
