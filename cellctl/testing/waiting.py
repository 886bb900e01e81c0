"""Waiting for a condition with a deadline, from a test function or from a coroutine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Generator, Iterator
from typing import Any

#: Seconds between two looks at the predicate: on a loop a look is cheap and other tasks run
#: meanwhile; a blocked thread looks less often.
LOOP_POLL = 0.002
THREAD_POLL = 0.01


def wait_until(
    predicate: Callable[[], bool], within: float = 3.0, what: str = "the condition"
) -> Awaitable[None]:
    """Wait until `predicate()` holds; AssertionError naming `what` after `within` seconds.

    In a coroutine, `await wait_until(...)`: it polls on the running loop, whose tasks make the
    predicate true. Anywhere else it blocks until then (what it returns is already done).
    """
    looks = _looks(predicate, within, what)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        for _ in looks:
            time.sleep(THREAD_POLL)  # a poll interval, not synchronisation: the deadline rules
        return _Done()
    return _on_loop(looks)


def _looks(predicate: Callable[[], bool], within: float, what: str) -> Iterator[None]:
    """Yield once per false look at `predicate`; raise once `within` seconds have passed."""
    # The clock starts at the first look: for a coroutine, when it is awaited.
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        yield


async def _on_loop(looks: Iterator[None]) -> None:
    """Let the loop run between two looks."""
    for _ in looks:
        await asyncio.sleep(LOOP_POLL)


class _Done:
    """An awaitable that is already done: the blocking wait has happened."""

    def __await__(self) -> Generator[Any, None, None]:
        yield from ()
