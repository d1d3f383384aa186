"""The kokoro engine's sessions, lent earliest deadline first (no weights needed)."""

from __future__ import annotations

import asyncio

from voxline.worker.engines.kokoro.sessions import Sessions


async def test_a_free_session_is_lent_at_once_and_waiters_go_by_deadline() -> None:
    sessions = Sessions(["s"])
    held = await sessions.acquire(5.0)
    served: list[str] = []

    async def wants(name: str, deadline: float) -> None:
        session = await sessions.acquire(deadline)
        served.append(name)
        await asyncio.sleep(0)
        sessions.release(session)

    tasks = [asyncio.create_task(wants(n, d)) for n, d in [("late", 3.0), ("soon", 1.0)]]
    tasks.append(asyncio.create_task(wants("tie", 3.0)))  # same deadline as "late", asked later
    await asyncio.sleep(0.01)
    assert served == [] and sessions.waiting == 3
    sessions.release(held)
    await asyncio.gather(*tasks)
    assert served == ["soon", "late", "tie"]
    assert await sessions.acquire(0.0) == "s"  # back, free


async def test_a_waiter_that_gives_up_loses_nobody_the_session() -> None:
    sessions = Sessions(["s"])
    held = await sessions.acquire(0.0)
    quitter = asyncio.create_task(sessions.acquire(1.0))
    stayer = asyncio.create_task(sessions.acquire(2.0))
    await asyncio.sleep(0.01)
    quitter.cancel()
    await asyncio.sleep(0)
    sessions.release(held)
    assert await asyncio.wait_for(stayer, 1) == "s"
    # Handed to a waiter in the very moment it is cancelled: passed on, not lost.
    late = asyncio.create_task(sessions.acquire(1.0))
    await asyncio.sleep(0.01)
    sessions.release("s")  # late's future holds the session now
    late.cancel()
    await asyncio.gather(late, return_exceptions=True)
    assert sessions.waiting == 0
    assert await asyncio.wait_for(sessions.acquire(0.0), 1) == "s"
