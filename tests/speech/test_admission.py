"""Admission (speech/admission.py): the one place every door asks whether new work may start."""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError

from tests.speech.test_session import _Backend
from voxline.shared.config import Settings
from voxline.speech.admission import Refusal, refusal


class _Busy(_Backend):
    def __init__(self, answer: str | None | Exception, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.answer = answer

    async def overloaded(self) -> str | None:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _ready(backend: _Backend) -> _Backend:
    backend.returns.connected.set()
    return backend


async def test_a_healthy_process_admits() -> None:
    assert await refusal(_ready(_Backend())) is None  # type: ignore[arg-type]


async def test_the_reasons_in_their_order() -> None:
    draining = _Busy("busy")
    draining.draining = True  # shutting down outranks everything, even a lost Redis
    refused = await refusal(draining)  # type: ignore[arg-type]
    assert refused is not None and refused.reason is Refusal.DRAINING
    reconnecting = await refusal(_Busy("busy"))  # type: ignore[arg-type]
    assert reconnecting is not None and reconnecting.reason is Refusal.UNAVAILABLE
    unreachable = await refusal(_ready(_Busy(RedisConnectionError("down"))))  # type: ignore[arg-type]
    assert unreachable is not None and unreachable.reason is Refusal.UNAVAILABLE
    assert "Redis unreachable" in unreachable.message
    busy = await refusal(_ready(_Busy("queue full")))  # type: ignore[arg-type]
    assert busy is not None and busy.reason is Refusal.BUSY and busy.message == "queue full"


async def test_batch_work_is_not_refused_for_a_busy_pool_or_a_full_process() -> None:
    backend = _ready(_Busy("queue full", settings=Settings(max_sessions=1)))
    backend.sessions.add(object())
    full = await refusal(backend, busy=False)  # type: ignore[arg-type]
    assert full is not None and full.reason is Refusal.FULL and "limit of 1" in full.message
    assert await refusal(backend, busy=False, session=False) is None  # type: ignore[arg-type]
