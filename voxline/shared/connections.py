"""Redis connections: a real server (`redis://`, `rediss://`, `unix://`), a Redis Cluster
(`redis+cluster://`, `rediss+cluster://`) or the in-memory one (`memory://[name]`) that the
embedded mode and fast tests use.

Cluster URLs: `redis+cluster://[[user]:password@]host:port[,host:port...][/0]` — one or more
seed nodes, comma-separated (any node of the cluster will do; the client discovers the rest
and follows slot moves and failovers). `rediss+cluster://` is the same over TLS. A cluster has
only database 0, and the URL takes no query options. `connect()` returns a
`redis.asyncio.cluster.RedisCluster` for these; see docs/architecture.md ("Redis Cluster") for
what it can and cannot do.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ClusterError, MovedError, RedisClusterException, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

MEMORY_SCHEME = "memory://"
CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")

# Either kind of client `connect()` returns for a real server.
Client = aioredis.Redis | RedisCluster

# What a live Redis (or Cluster) can throw while a server restarts, a network blips or a
# master fails over: callers that run for the life of the process wait and retry on these.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ClusterError,  # CLUSTERDOWN, MASTERDOWN: a failover under way
    TryAgainError,  # a slot being migrated
    MovedError,
    RedisClusterException,  # slot not covered yet, the slot map unreadable
)


def is_memory(url: str) -> bool:
    return url.startswith(MEMORY_SCHEME)


def is_cluster(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


def _timeouts(blocking: bool) -> dict[str, Any]:
    return {
        "socket_connect_timeout": 5,
        # Blocking reads wait at most 5 s (BLOCK, pub/sub waits); 30 s of silence on such a
        # connection means a dead peer, not an idle one.
        "socket_timeout": 30 if blocking else 10,
        "socket_keepalive": True,
        "health_check_interval": 15,
    }


def connect(url: str, *, blocking: bool = False) -> Client:
    """A client for `url`: `redis.asyncio.Redis` (or fakeredis) or, for a cluster URL,
    `redis.asyncio.cluster.RedisCluster` (see `Client`).

    `blocking=True` is for a connection that sits in XREADGROUP BLOCK or a pub/sub read:
    it gets no socket read timeout, since redis-py raises when a blocking read outlasts
    `socket_timeout`; those callers bound their waits themselves.
    """
    if is_memory(url):
        from voxline.shared import embedded_redis  # fakeredis: loaded only where it is used

        return embedded_redis.client(url[len(MEMORY_SCHEME) :] or "default")
    if is_cluster(url):
        return _cluster_client(url, blocking)
    # One quick retry on a dropped connection: after a Redis restart every pooled connection
    # is dead, and the first command on each would fail although the server is back. No retry
    # on timeouts (the command may have run).
    pool = aioredis.BlockingConnectionPool.from_url(
        url, **_pool_limits(), **_timeouts(blocking), **_quick_retry()
    )
    return aioredis.Redis.from_pool(pool)  # closing the client closes the pool


# A process's concurrent commands share this many connections; more wait for a free one.
# redis-py's plain pool fails the command past its limit ("Too many connections"), which a
# burst of new sessions or a worker with many jobs reached, and read as Redis being down.
MAX_CONNECTIONS = 64
POOL_WAIT = 10.0  # seconds a command waits for a connection before it fails


def _pool_limits() -> dict[str, Any]:
    return {"max_connections": MAX_CONNECTIONS, "timeout": POOL_WAIT}


def _quick_retry() -> dict[str, Any]:
    # redis-py's default is 3 retries with backoff in seconds: a dead server would hold every
    # caller (and the return path's notice of the loss) for several seconds.
    # Only connection errors: after a timeout the command may have run. (Retry's own default
    # would retry timeouts as well.)
    return {
        "retry": Retry(
            ExponentialBackoff(cap=0.2, base=0.02), 1, supported_errors=(RedisConnectionError,)
        )
    }


def pubsub(client: Any, **options: Any) -> Any:
    """`client.pubsub(**options)` that hands each message over as it is. redis-py's default
    push handler builds a debug log line of every message it parses, payload included
    (`"Push response: " + str(response)`), logged or not: with audio chunks that was the front
    end's largest single cost after the socket writes (docs/benchmarks.md)."""
    return client.pubsub(push_handler_func=_as_is, **options)


async def _as_is(response: Any) -> Any:
    return response


def redacted(url: str) -> str:
    """`url` with its password replaced, for logs and banners."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.partition(':')[0]}:***@{hosts}"


def parse_cluster_url(url: str) -> dict[str, Any]:
    """`startup_nodes`, `ssl`, `username`, `password` of a cluster URL (see the docstring)."""
    scheme = next((s for s in CLUSTER_SCHEMES if url.startswith(s)), None)
    if scheme is None:
        raise ValueError(f"not a cluster URL: {url!r}")
    rest = url[len(scheme) :]
    if "?" in rest or "#" in rest:
        raise ValueError(f"cluster URLs take no query options: {url!r}")
    netloc, _, path = rest.partition("/")
    if path not in ("", "0"):
        raise ValueError(f"a Redis Cluster has only database 0: {url!r}")
    userinfo, _, hosts = netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = []
    for seed in hosts.split(","):
        if seed.startswith("["):  # [ipv6]:port
            host, _, port = seed[1:].partition("]")
            port = port.removeprefix(":")
        else:
            host, _, port = seed.partition(":")
        if not host:
            raise ValueError(f"empty host in cluster URL: {url!r}")
        nodes.append(ClusterNode(host, int(port) if port else 6379))
    return {
        "startup_nodes": nodes,
        "ssl": scheme.startswith("rediss"),
        "username": username,
        "password": password,
    }


def connect_node(url: str, host: str, port: int, *, blocking: bool = False) -> aioredis.Redis:
    """A plain client to one node of the cluster at `url`, with the URL's credentials and TLS
    (for connections that must stay on one node: voxline's sharded subscriber)."""
    options = parse_cluster_url(url)
    return aioredis.Redis(
        host=host,
        port=port,
        username=options["username"],
        password=options["password"],
        ssl=options["ssl"],
        **_timeouts(blocking),
        **_quick_retry(),
    )


def primary_of(cluster: RedisCluster, key: str | bytes) -> ClusterNode:
    """The master owning `key`'s slot (`SlotNotCoveredError` when none does).

    redis-py types `get_node_from_key` as taking a str and returning an Optional node; it
    encodes bytes keys as well, and only a replica lookup can come back empty.
    """
    node = cluster.get_node_from_key(key)  # type: ignore[arg-type]  # bytes keys work too
    assert node is not None  # replica=False: the slot's master
    return node


def _cluster_client(url: str, blocking: bool) -> RedisCluster:
    # RedisCluster has no retry_on_timeout: on ConnectionError/TimeoutError it re-reads the
    # slot map and retries (cluster_error_retry_attempts), which is how it follows a failover.
    return RedisCluster(**parse_cluster_url(url), **_timeouts(blocking))
