"""Connections: bursts beyond the pool wait for a connection, pub/sub skips redis-py's
per-message debug string."""

from __future__ import annotations

import asyncio
import logging

import pytest

from tests.conftest import REDIS_URL, real_redis_or_fail
from voxline.shared.connections import MAX_CONNECTIONS, connect, pubsub


async def test_a_burst_beyond_the_pool_waits_instead_of_failing() -> None:
    real_redis_or_fail()
    client = connect(REDIS_URL)
    try:
        # redis-py's own pool raised "Too many connections" past 100 commands at once.
        replies = await asyncio.gather(*(client.ping() for _ in range(5 * MAX_CONNECTIONS)))
        assert all(replies)
        pool = client.connection_pool
        assert len(pool._in_use_connections) + len(pool._available_connections) <= MAX_CONNECTIONS
    finally:
        await client.aclose()


async def test_pubsub_messages_are_not_turned_into_debug_strings(
    redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    channel = f"{key_prefix}:{{s}}:audio"
    listener = connect(redis_url, blocking=True)
    publisher = connect(redis_url)
    subscription = pubsub(listener, ignore_subscribe_messages=True)
    try:
        await subscription.subscribe(channel)
        caplog.set_level(logging.DEBUG, logger="push_response")
        await publisher.publish(channel, b"\x00" * 4000)
        async with asyncio.timeout(5):
            while (message := await subscription.get_message(timeout=1.0)) is None:
                pass
        assert message["data"] == b"\x00" * 4000
        assert not [r for r in caplog.records if r.name == "push_response"]
    finally:
        await subscription.aclose()
        await listener.aclose()
        await publisher.aclose()
