"""Fixtures: every integration test runs against the in-memory Redis and a real server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from tests.harness import REDIS_URL, Pipeline, start_pipeline
from tests.redis_servers import RedisBinaryMissing, RedisClusterNodes, RedisServer
from voxline.shared.embedded_redis import drop_server as drop_memory_server

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# A test that uses one of these (itself or through another fixture) talks to Redis, real or
# in-memory, through a running pipeline or worker: an integration test.
INTEGRATION_FIXTURES = {"redis_url", "key_prefix", "pipeline", "redis_cluster_nodes"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test `integration` or `unit`, so `pytest -m unit` runs the fast subset."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        slow = any(item.get_closest_marker(m) for m in ("multiprocess", "weights", "integration"))
        if slow or fixtures & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
        else:
            item.add_marker(pytest.mark.unit)


def real_redis_or_fail() -> None:
    """Skip without a Redis server locally; under CI=true a missing Redis fails the run."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.exceptions.RedisError as exc:
        message = f"no Redis at {REDIS_URL} ({exc}); set REDIS_URL or start redis-server"
        if CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture(params=["memory", "redis"])
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A Redis URL of each backend: fakeredis in-process, and the real server."""
    if request.param == "memory":
        name = uuid.uuid4().hex
        yield f"memory://{name}"
        drop_memory_server(name)
    else:
        real_redis_or_fail()
        yield REDIS_URL


@pytest.fixture
def key_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    prefix = f"vxtest-{uuid.uuid4().hex[:10]}"
    yield prefix
    if not redis_url.startswith("memory://"):
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


@pytest.fixture
async def pipeline(redis_url: str, key_prefix: str) -> AsyncIterator[Pipeline]:
    """Front end + one tone worker, defaults suitable for most protocol tests."""
    async with start_pipeline(redis_url, key_prefix) as running:
        yield running


def _redis_binary_missing(exc: RedisBinaryMissing) -> None:
    """Skip without the redis-server/redis-cli binaries locally; under CI=true, fail."""
    if CI:
        pytest.fail(str(exc), pytrace=False)
    pytest.skip(str(exc))


@pytest.fixture(scope="session")
def redis_cluster_nodes() -> Iterator[RedisClusterNodes]:
    """A 3-master Redis Cluster on free loopback ports, shared by the whole test session
    (tests must use their own key prefixes and look slot owners up, not assume them)."""
    try:
        cluster = RedisClusterNodes(3)
    except RedisBinaryMissing as exc:
        _redis_binary_missing(exc)
    cluster.start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def redis_cluster_url(redis_cluster_nodes: RedisClusterNodes) -> str:
    """`redis+cluster://…` URL of the session's cluster (for `shared.connections.connect`)."""
    return redis_cluster_nodes.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A standalone redis-server of the test's own on a free port; the test may stop, kill and
    restart it (same port). Killed and its dir removed afterwards."""
    try:
        server = RedisServer()
    except RedisBinaryMissing as exc:
        _redis_binary_missing(exc)
    server.start()
    yield server
    server.close()
