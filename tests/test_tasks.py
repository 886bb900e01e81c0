"""Background tasks end when cancelled, even when Python 3.11's `asyncio.wait_for` drops the
cancel (as pymodbus's connect does when a refused connect comes back in the same loop pass)."""

from __future__ import annotations

import asyncio
import sys

import pytest

from drivers.tasks import cancel_and_wait


async def _swallowing_loop(started: asyncio.Event, answer: asyncio.Future[int]) -> None:
    """A connect loop as pymodbus writes it: wait_for on a call, then try again after a pause."""
    started.set()
    await asyncio.wait_for(answer, timeout=10)
    await asyncio.sleep(3600)  # the loop's next try, much later


async def _cancel_as_the_call_returns() -> asyncio.Task[None]:
    """The task, cancelled in the same loop pass as the call it waits for finishes."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[int] = loop.create_future()
    started = asyncio.Event()
    task = asyncio.create_task(_swallowing_loop(started, answer))
    await started.wait()
    await asyncio.sleep(0)  # the task is now parked in wait_for
    answer.set_result(1)
    task.cancel()
    return task


@pytest.mark.asyncio
async def test_wait_for_drops_a_cancel_that_arrives_as_the_call_returns() -> None:
    # The race itself, so that the test below is known to exercise it (3.12 rewrote wait_for
    # on asyncio.timeout, which keeps the cancel).
    task = await _cancel_as_the_call_returns()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    assert bool(done) is (sys.version_info >= (3, 12))
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


@pytest.mark.asyncio
async def test_a_task_that_swallowed_the_cancel_is_cancelled_again() -> None:
    task = await _cancel_as_the_call_returns()
    async with asyncio.timeout(3):  # one re-cancel is 50 ms; 3 s is room for a loaded machine
        await cancel_and_wait([task])
    assert task.cancelled()


@pytest.mark.asyncio
async def test_outcomes_are_retrieved_and_a_finished_task_is_left_alone() -> None:
    async def fails() -> None:
        raise ValueError("boom")

    async def finishes() -> int:
        return 3

    failing = asyncio.create_task(fails())
    finished = asyncio.create_task(finishes())
    await asyncio.wait({failing, finished})
    await cancel_and_wait([failing, finished])  # nothing raised
    assert isinstance(failing.exception(), ValueError)
    assert finished.result() == 3


@pytest.mark.asyncio
async def test_a_cancel_aimed_at_the_caller_reaches_it() -> None:
    never = asyncio.Event()

    async def stubborn() -> None:
        while not never.is_set():
            try:
                await never.wait()
            except asyncio.CancelledError:
                continue  # refuses every cancel: the caller must still be cancellable

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    closer = asyncio.create_task(cancel_and_wait([task]))
    await asyncio.wait({closer}, timeout=0.2)  # several re-cancels, all refused
    assert not closer.done()
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closer
    assert not task.done()
    never.set()  # the test cleans up the task it made
    done, _ = await asyncio.wait({task}, timeout=1)
    assert task in done
