"""Ending background tasks for certain, even when a library swallows the cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

#: How long to wait for a cancelled task before cancelling it again.
RECANCEL_EVERY = 0.05


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any]]) -> None:
    """Cancel the tasks and wait until every one has ended, cancelling again any that go on.

    Why again: in Python 3.11 `asyncio.wait_for` returns the result, dropping the cancel, when
    the awaited call finishes in the same loop pass as the cancel arrives. pymodbus awaits its
    connect that way, so a connect loop cancelled as a refused connect came back went on
    trying for ever, and whoever closed the driver waited for ever. Outcomes are retrieved
    (never raised here); a cancel aimed at the caller still reaches the caller.
    """
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
    for task in tasks:
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: no "exception was never retrieved" warning
