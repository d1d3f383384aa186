from __future__ import annotations

import asyncio
import contextlib

from voxline.shared.tasks import stop


async def test_a_task_that_swallows_a_cancel_is_still_stopped() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                # What a library loop does when a cancel comes out as a TimeoutError.
                if swallowed < 3:
                    swallowed += 1
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    continue
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop(task), 2)
    assert task.cancelled() and swallowed == 3


async def test_a_task_that_never_stops_is_left_after_the_limit(caplog: object) -> None:
    quit = asyncio.Event()

    async def immortal() -> None:
        while not quit.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    task = asyncio.create_task(immortal())
    await asyncio.sleep(0)
    await asyncio.wait_for(stop(task, within=0.3), 2)
    assert not task.done()
    assert "did not stop" in caplog.text  # type: ignore[attr-defined]
    quit.set()  # leave nothing behind
    await asyncio.wait_for(task, 1)


async def test_finished_and_missing_tasks_are_fine() -> None:
    async def quick() -> int:
        return 1

    done = asyncio.create_task(quick())
    await done
    await stop(done, None)
