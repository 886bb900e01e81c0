"""Commands that run until they are told to stop: `sim` and `read --watch`."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable

#: Seconds `sim` and `read --watch` get to finish by themselves after SIGINT/SIGTERM.
STOP_GRACE = 2.0


async def until_signalled(work: Callable[[asyncio.Event], Awaitable[None]]) -> None:
    """Run `work(stop)` where SIGINT/SIGTERM set `stop`: the normal end of sim and --watch."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    task = asyncio.ensure_future(work(stop))
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            # The work ends by itself when it sees `stop`; one still connecting does not look,
            # so it is cancelled (its drivers and simulators close on the way out).
            await asyncio.wait({task}, timeout=STOP_GRACE)
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        stopped.cancel()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
