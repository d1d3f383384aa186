from __future__ import annotations

from voxline.shared.connections import connect
from voxline.shared.keys import Keys
from voxline.shared.wire import Cancel, Job
from voxline.speech.queue import JobQueue
from voxline.worker.cancellations import CancelListener, InFlight, is_cancelled


def _job(session: str = "s", utterance: int = 0, sentence: int = 0) -> Job:
    return Job(session, utterance, sentence, "text", "voice")


def test_in_flight_flags_only_matching_jobs() -> None:
    in_flight = InFlight()
    a, b, c = (
        in_flight.add(_job("s", 0, 0)),
        in_flight.add(_job("s", 1, 0)),
        in_flight.add(_job("t", 0, 0)),
    )
    assert in_flight.apply(Cancel("s", 0)) == 1
    assert a.is_set() and not b.is_set() and not c.is_set()
    in_flight.remove(a)
    assert len(in_flight) == 2


async def test_cancel_marks_are_seen_at_every_level(redis_url: str, key_prefix: str) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    queue = JobQueue(redis, keys, maxlen=100, session_ttl=60)
    await queue.cancel("s", [1], 2)
    assert await is_cancelled(redis, keys, _job("s", 1, 2))
    assert not await is_cancelled(redis, keys, _job("s", 1, 3))
    await queue.cancel("s", [4])
    assert await is_cancelled(redis, keys, _job("s", 4, 9))
    assert not await is_cancelled(redis, keys, _job("other", 4, 9))
    await queue.cancel("s")
    assert await is_cancelled(redis, keys, _job("s", 99, 0))
    assert 0 < await redis.ttl(keys.cancelled("s")) <= 60, "per-session keys expire"
    await redis.aclose()


async def test_a_listener_that_missed_notices_asks_the_cancel_sets(
    redis_url: str, key_prefix: str
) -> None:
    keys = Keys(key_prefix)
    redis = connect(redis_url)
    in_flight = InFlight()
    token = in_flight.add(_job("s", 0, 0))
    other = in_flight.add(_job("s", 1, 0))
    # Marked while the listener was not connected: no notice will ever arrive.
    await redis.sadd(keys.cancelled("s"), "u0")
    listener = CancelListener(redis_url, keys, in_flight)
    await listener._recheck()
    assert token.is_set() and not other.is_set()
    await listener.close()
    await redis.aclose()
