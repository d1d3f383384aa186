"""Redis connections: a real server (`redis://`, `rediss://`, `unix://`) or the in-memory
one (`memory://[name]`) that the embedded mode and fast tests use."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

MEMORY_SCHEME = "memory://"

_memory_servers: dict[str, Any] = {}


def is_memory(url: str) -> bool:
    return url.startswith(MEMORY_SCHEME)


def connect(url: str, *, blocking: bool = False) -> aioredis.Redis:
    """A client for `url`.

    `blocking=True` is for a connection that sits in XREADGROUP BLOCK or a pub/sub read:
    it gets no socket read timeout, since redis-py raises when a blocking read outlasts
    `socket_timeout`; those callers bound their waits themselves.
    """
    if is_memory(url):
        return _memory_client(url[len(MEMORY_SCHEME) :] or "default")
    return aioredis.Redis.from_url(
        url,
        socket_connect_timeout=5,
        # Blocking reads wait at most 5 s (BLOCK, pub/sub waits); 30 s of silence on such a
        # connection means a dead peer, not an idle one.
        socket_timeout=30 if blocking else 10,
        socket_keepalive=True,
        health_check_interval=15,
        retry_on_timeout=False,
    )


def _memory_client(name: str) -> aioredis.Redis:
    import fakeredis
    import fakeredis.aioredis

    _patch_fakeredis_blocking_xreadgroup()
    server = _memory_servers.get(name)
    if server is None:
        server = _memory_servers[name] = fakeredis.FakeServer()
    return fakeredis.aioredis.FakeRedis(server=server)


def drop_memory_server(name: str = "default") -> None:
    """Forget an in-memory server (tests start each run from an empty one)."""
    _memory_servers.pop(name, None)


_patched = False


def _patch_fakeredis_blocking_xreadgroup() -> None:
    # fakeredis answers `XREADGROUP COUNT n BLOCK ms` at once with an empty reply instead of
    # blocking (it only blocks without COUNT), which would turn every worker's blocking read
    # into a busy loop. An empty result must mean "keep waiting", as on a real server.
    global _patched
    if _patched:
        return
    from fakeredis.commands_mixins.streams_mixin import StreamsCommandsMixin

    original = StreamsCommandsMixin._xreadgroup

    def _xreadgroup(self: Any, *args: Any, **kwargs: Any) -> Any:
        return original(self, *args, **kwargs) or None

    StreamsCommandsMixin._xreadgroup = _xreadgroup  # type: ignore[method-assign]
    _patched = True
