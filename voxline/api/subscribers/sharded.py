"""Sharded pub/sub on a Redis Cluster: one connection and one reader per master.

A session's audio channel carries the session's hash tag, so it lives on one slot; workers
SPUBLISH on it and only the master owning that slot carries the traffic (classic PUBLISH would
copy every audio chunk to every node over the cluster bus). redis-py's `ClusterPubSub` polls
the nodes one after the other and never notices a slot leaving a node (docs/architecture.md,
"Redis Cluster"), hence this subscriber of voxline's own, on plain connections:

- A channel is SSUBSCRIBEd on the master owning its slot, confirmed by the server's reply.
- Each node has its own reader task blocking on its own connection: an event on any master is
  delivered at once.
- When a slot moves or its master fails over, the server drops the shard subscriptions there
  (pushing `sunsubscribe`) or the connection breaks. The subscriber reports the channels as
  lost (what was published meanwhile is gone), reloads the slot map and subscribes them on
  their new owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisError

from voxline.api.subscribers.base import Deliver, Lost, read_forever
from voxline.shared.connections import connect, connect_node, primary_of, pubsub
from voxline.shared.keys import Keys
from voxline.shared.tasks import stop

log = logging.getLogger("voxline.api.subscribers")

# How long a moved channel is followed before it is subscribed where the map says anyway.
_FOLLOW_FOR = 5.0


@dataclass(eq=False)
class _Node:
    name: str
    client: aioredis.Redis
    pubsub: PubSub
    reader: asyncio.Task[None] | None = None
    healthy: bool = False  # connected, its control subscription confirmed
    channels: set[bytes] = field(default_factory=set)


class ShardedSubscriber:
    def __init__(self, redis_url: str, keys: Keys) -> None:
        self._url = redis_url
        cluster = connect(redis_url)
        assert isinstance(cluster, RedisCluster)
        self._cluster = cluster  # for its slot map only
        self._control = f"{keys.prefix}:api:control".encode()
        self._nodes: dict[str, _Node] = {}
        self._owner: dict[bytes, str] = {}  # wanted channel -> name of the node it is on
        self._pending: dict[bytes, asyncio.Future[None]] = {}
        self._open_lock = asyncio.Lock()
        self._rehome_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._deliver: Deliver = lambda _c, _d: None
        self._lost: Lost = lambda _c: None
        self.connected = asyncio.Event()

    async def start(self, deliver: Deliver, lost: Lost) -> None:
        self._deliver, self._lost = deliver, lost
        await self._cluster.initialize()
        for primary in self._cluster.get_primaries():
            await self._node(primary)
        await asyncio.wait_for(self.connected.wait(), timeout=10)

    async def close(self) -> None:
        await stop(*self._tasks, *(n.reader for n in self._nodes.values()))
        for node in list(self._nodes.values()):
            await self._close_node(node)
        with contextlib.suppress(Exception):
            await self._cluster.aclose()

    async def subscribe(self, channel: bytes, timeout: float) -> None:
        confirmed = asyncio.get_running_loop().create_future()
        self._pending[channel] = confirmed
        try:
            await self._subscribe_on_owner(channel)
            await asyncio.wait_for(confirmed, timeout)
        except BaseException:
            await self.unsubscribe(channel)
            raise
        finally:
            self._pending.pop(channel, None)

    async def unsubscribe(self, channel: bytes) -> None:
        node = self._nodes.get(self._owner.pop(channel, ""))
        if node is not None:
            node.channels.discard(channel)
            with contextlib.suppress(RedisError, OSError):
                await node.pubsub.sunsubscribe(channel)

    # --- nodes -------------------------------------------------------------------------------

    async def _node(self, owner: ClusterNode) -> _Node:
        """The node's connection, opened (and its reader started) on first use."""
        async with self._open_lock:
            node = self._nodes.get(owner.name)
            if node is not None:
                return node
            assert isinstance(owner.port, int)  # the slot map's nodes (redis-py: str | int)
            client = connect_node(self._url, owner.host, owner.port, blocking=True)
            node = _Node(owner.name, client, pubsub(client))
            try:
                # A classic subscription to a channel nobody publishes on: it makes the
                # connection readable, and its confirmation after a reconnect says redis-py has
                # subscribed everything again.
                await node.pubsub.subscribe(self._control)
            except BaseException:
                await self._close_node(node)
                raise
            # A fresh context: the session that happened to open the node must not lend its
            # log fields (shared/logs.py) to a reader every session shares.
            node.reader = asyncio.create_task(
                self._read(node), name=f"voxline-return-{owner.name}", context=contextvars.Context()
            )
            self._nodes[owner.name] = node
            self._update_connected()
            return node

    async def _close_node(self, node: _Node) -> None:
        with contextlib.suppress(Exception):
            await node.pubsub.aclose()
        with contextlib.suppress(Exception):
            await node.client.aclose()

    def _update_connected(self) -> None:
        if self._nodes and all(n.healthy for n in self._nodes.values()):
            self.connected.set()
        else:
            self.connected.clear()

    async def _subscribe_on_owner(self, channel: bytes) -> None:
        node = await self._node(primary_of(self._cluster, channel))
        self._owner[channel] = node.name
        node.channels.add(channel)
        await node.pubsub.ssubscribe(channel)

    # --- reading -----------------------------------------------------------------------------

    async def _read(self, node: _Node) -> None:
        def failed(exc: Exception, delay: float) -> None:
            # Connection lost, or a MOVED reply to an SSUBSCRIBE sent on a stale slot map.
            if node.healthy:
                node.healthy = False
                self._update_connected()
                self._lost(set(node.channels))
            log.warning("return path to %s lost (%s); retry in %.2fs", node.name, exc, delay)
            self._spawn(self._rehome())

        await read_forever(node.pubsub, lambda message: self._handle(node, message), failed)

    def _handle(self, node: _Node, message: dict) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "smessage":
            self._deliver(channel, message["data"])
        elif kind == "subscribe" and channel == self._control:
            node.healthy = True
            self._update_connected()
        elif kind == "ssubscribe":
            future = self._pending.get(channel)
            if self._owner.get(channel) != node.name:
                # Released, or moved on, while this subscription was under way or replayed by
                # a reconnect.
                node.pubsub.shard_channels.pop(channel, None)
                self._spawn(self._drop(node, channel))
            elif future is not None and not future.done():
                future.set_result(None)
        elif kind == "sunsubscribe" and self._owner.get(channel) == node.name:
            # Not asked for: the slot left this node (resharding, failover). What was published
            # since is gone; follow the channel to its new owner.
            node.pubsub.shard_channels.pop(channel, None)
            self._lost({channel})
            self._spawn(self._rehome(moved_from={channel: node.name}))

    async def _drop(self, node: _Node, channel: bytes) -> None:
        with contextlib.suppress(RedisError, OSError):
            await node.pubsub.sunsubscribe(channel)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- following slots ---------------------------------------------------------------------

    async def _rehome(self, moved_from: dict[bytes, str] | None = None) -> None:
        """Reload the slot map and put every channel on its owner; close nodes that are no
        longer masters. `moved_from`: channels known to have left a node, followed until the
        slot map shows it (the node asked may not know the new owner yet)."""
        if self._rehome_lock.locked() and not moved_from:
            return  # one is under way; it reads the newest map
        async with self._rehome_lock:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + _FOLLOW_FOR
            while True:
                try:
                    await self._cluster.nodes_manager.initialize()
                except Exception as exc:
                    log.warning("could not reload the cluster's slot map (%s)", exc)
                    return  # the next read error tries again
                pending = {
                    c: old
                    for c, old in (moved_from or {}).items()
                    if self._owner.get(c) == old and primary_of(self._cluster, c).name == old
                }
                if not pending or loop.time() > deadline:
                    break
                await asyncio.sleep(0.05)
            for channel, name in list(self._owner.items()):
                owner = primary_of(self._cluster, channel)
                if owner.name == name and channel not in (moved_from or {}):
                    continue
                old = self._nodes.get(name)
                if old is not None:
                    old.channels.discard(channel)
                    old.pubsub.shard_channels.pop(channel, None)
                try:
                    await self._subscribe_on_owner(channel)
                except (RedisError, OSError) as exc:
                    log.warning("could not resubscribe %r on %s (%s)", channel, owner.name, exc)
            primaries = {p.name for p in self._cluster.get_primaries()}
            for node in list(self._nodes.values()):
                if node.name not in primaries and not node.channels:
                    del self._nodes[node.name]
                    if node.reader is not None:
                        node.reader.cancel()
                    await self._close_node(node)
            self._update_connected()
