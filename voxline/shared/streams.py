"""Jobs-stream plumbing both sides need."""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError
from redis.typing import EncodableT

from voxline.shared.connections import Client, primary_of
from voxline.shared.keys import JOBS_GROUP, Keys


async def ensure_jobs_group(redis: Client, keys: Keys) -> None:
    """Create the workers' consumer group (and the streams) if missing.

    Both sides call this at start-up, and workers again when Redis lost the group (a restart
    without persistence). From id 0, not `$`: jobs the front end queued before the group
    existed must be delivered, and the stream holds nothing else (entries are deleted once
    acknowledged).
    """
    for stream in keys.worker_streams:
        try:
            await redis.xgroup_create(stream, JOBS_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def read_group(
    redis: Client,
    consumer: str,
    streams: dict[str, str],
    *,
    count: int,
    block: int | None = None,
) -> list[Any]:
    """XREADGROUP for the workers' group over streams of one slot (one shard).

    On a Cluster the node is named from the first stream's slot: redis-py would otherwise ask
    a node of its choosing (COMMAND GETKEYS) where XREADGROUP's keys are, on every call — one
    round trip more per read, and no read at all while that node is down.
    """
    if not isinstance(redis, RedisCluster):
        # redis-py's parameter is a Dict[KeyT, StreamIdT], invariant: a dict[str, str] fails.
        reply = await redis.xreadgroup(
            JOBS_GROUP,
            consumer,
            streams,  # type: ignore[arg-type]
            count=count,
            block=block,
        )
        assert isinstance(reply, list)  # RESP2's [[stream, entries]] (redis-py: or RESP3's dict)
        return reply
    args: list[EncodableT] = ["XREADGROUP", "GROUP", JOBS_GROUP, consumer, "COUNT", count]
    if block is not None:
        args += ["BLOCK", block]
    args += ["STREAMS", *streams, *streams.values()]
    await redis.initialize()  # a no-op once the slot map is loaded (and not known stale)
    node = primary_of(redis, next(iter(streams)))
    return await redis.execute_command(*args, target_nodes=node)


def shard_advice(redis: Client, keys: Keys) -> str | None:
    """A warning when the jobs shards leave some masters of a Cluster without a shard."""
    if not isinstance(redis, RedisCluster):
        return None
    masters = {node.name for node in redis.get_primaries()}
    used = {primary_of(redis, shard.rest).name for shard in keys.job_shards}
    if used >= masters:
        return None
    return (
        f"the jobs queue's {keys.shards} shards live on {len(used)} of the cluster's "
        f"{len(masters)} masters; set VOXLINE_JOB_SHARDS={2 * len(masters)} on every process "
        "to spread it"
    )
