"""Fixtures: every integration test runs against the in-memory Redis and a real server."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from shared.connections import drop_memory_server
from tests.harness import REDIS_URL, Pipeline, start_pipeline

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


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
