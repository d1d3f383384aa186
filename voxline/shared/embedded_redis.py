"""The in-memory Redis of the embedded mode (`voxline serve`, `memory://[name]` URLs): fakeredis,
one server per name within the process, made to block on stream reads as a real server does."""

from __future__ import annotations

from typing import Any

import fakeredis
import fakeredis.aioredis

_servers: dict[str, fakeredis.FakeServer] = {}
_patched = False


def client(name: str) -> fakeredis.aioredis.FakeRedis:
    _block_on_empty_xreadgroup()
    server = _servers.get(name)
    if server is None:
        server = _servers[name] = fakeredis.FakeServer()
    return fakeredis.aioredis.FakeRedis(server=server)


def drop_server(name: str = "default") -> None:
    """Forget an in-memory server (tests start each run from an empty one)."""
    _servers.pop(name, None)


def _block_on_empty_xreadgroup() -> None:
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
