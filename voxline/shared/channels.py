"""Publishing on voxline's two kinds of channel, the same way on a Redis server and a Cluster.

- A session's audio channel carries the session's hash tag. On a Cluster it uses sharded
  pub/sub (SPUBLISH), which stays on the shard owning that slot, instead of classic PUBLISH,
  which the cluster bus copies to every node: audio is nearly all of voxline's traffic.
- The cancel channel is a broadcast every worker must hear, wherever it is connected: classic
  PUBLISH everywhere. A cluster pipeline refuses `publish()` (redis-py lists it as blocked),
  but sends the raw command.
"""

from __future__ import annotations

from typing import Any

from redis.asyncio.cluster import ClusterPipeline, RedisCluster


def is_cluster(target: Any) -> bool:
    """Whether `target` (a client or a pipeline) talks to a Redis Cluster."""
    return isinstance(target, (RedisCluster, ClusterPipeline))


def publish_event(target: Any, channel: str, data: bytes) -> Any:
    """Publish on a session's audio channel (a client returns an awaitable, a pipeline queues)."""
    if is_cluster(target):
        return target.spublish(channel, data)
    return target.publish(channel, data)


def broadcast(target: Any, channel: str, data: bytes) -> Any:
    """Publish on a channel every subscriber of the deployment hears (the cancel channel)."""
    if isinstance(target, ClusterPipeline):
        return target.execute_command("PUBLISH", channel, data)
    return target.publish(channel, data)
