"""The worker's outbox: every job's events on one connection, coalesced, in order."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from voxline.shared.connections import connect, pubsub
from voxline.worker.publisher import Outbox


async def _listen(redis_url: str, channels: list[str]) -> tuple[object, object]:
    client = connect(redis_url, blocking=True)
    subscription = pubsub(client, ignore_subscribe_messages=True)
    await subscription.subscribe(*channels)
    return client, subscription


async def _collect(subscription: object, n: int) -> list[tuple[str, bytes]]:
    got: list[tuple[str, bytes]] = []
    async with asyncio.timeout(10):
        while len(got) < n:
            message = await subscription.get_message(timeout=1.0)  # type: ignore[attr-defined]
            if message is not None:
                got.append((message["channel"].decode(), message["data"]))
    return got


async def test_concurrent_publishes_arrive_in_order_per_sender(
    redis_url: str, key_prefix: str
) -> None:
    channels = [f"{key_prefix}:{{s{i}}}:audio" for i in range(20)]
    client, subscription = await _listen(redis_url, channels)
    redis = connect(redis_url)
    outbox = Outbox(redis)
    outbox.start()
    writes = 0
    pipeline = redis.pipeline

    def counting_pipeline(*args: object, **kwargs: object) -> object:
        nonlocal writes
        writes += 1
        return pipeline(*args, **kwargs)

    redis.pipeline = counting_pipeline  # type: ignore[method-assign]
    try:

        async def sender(channel: str) -> None:
            for seq in range(10):
                await outbox.publish(channel, f"{seq}".encode())

        await asyncio.gather(*(sender(c) for c in channels))
        got = await _collect(subscription, 200)
    finally:
        await outbox.close()
        await subscription.aclose()  # type: ignore[attr-defined]
        await client.aclose()  # type: ignore[attr-defined]
        await redis.aclose()
    for channel in channels:
        assert [d for c, d in got if c == channel] == [f"{i}".encode() for i in range(10)]
    # 20 senders waiting at once share writes: far fewer pipelines than messages.
    assert writes <= 40, writes


async def test_a_failed_write_fails_its_publishes_and_the_outbox_goes_on(
    redis_url: str, key_prefix: str
) -> None:
    channel = f"{key_prefix}:{{s}}:audio"
    client, subscription = await _listen(redis_url, [channel])
    redis = connect(redis_url)
    outbox = Outbox(redis)
    outbox.start()
    pipeline = redis.pipeline
    broken = True

    class _Broken:
        async def __aenter__(self) -> _Broken:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        def publish(self, *args: object) -> None:
            pass

        async def execute(self) -> None:
            raise RedisConnectionError("connection reset")

    redis.pipeline = lambda **kw: _Broken() if broken else pipeline(**kw)  # type: ignore[method-assign]
    try:
        with pytest.raises(RedisConnectionError):
            await outbox.publish(channel, b"lost")
        broken = False
        await outbox.publish(channel, b"after")
        assert await _collect(subscription, 1) == [(channel, b"after")]
    finally:
        await outbox.close()
        await subscription.aclose()  # type: ignore[attr-defined]
        await client.aclose()  # type: ignore[attr-defined]
        await redis.aclose()


async def test_publishing_on_a_closed_outbox_is_an_error(redis_url: str) -> None:
    redis = connect(redis_url)
    outbox = Outbox(redis)
    with pytest.raises(RuntimeError, match="not running"):
        await outbox.publish("x", b"y")
    outbox.start()
    await outbox.close()
    with pytest.raises(RuntimeError, match="not running"):
        await outbox.publish("x", b"y")
    await redis.aclose()
