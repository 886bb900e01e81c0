"""The executor's gate: where a pause, a trip or an Abort stops the recipe's branches.

Interruptions take effect at step boundaries: a wait, delay, prompt or stepping question in
progress is cut and re-entered on resume; a write or call in flight always completes, and no
new one starts once frozen (a trip) or aborted.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable
from typing import NoReturn, TypeVar

from cellctl.recipe.steps import At

__all__ = ["Gate", "Interrupted", "PauseReason"]

T = TypeVar("T")


class PauseReason(enum.StrEnum):
    """Why the executor pauses at the next step boundary."""

    HOLD = "hold"
    SUSPEND = "suspend"
    STOP = "stop"


class Interrupted(Exception):
    """The executor was paused while a step was in progress: re-enter it on resume."""


class Gate:
    """The pause, freeze and abort state every branch checks, and what a pause cuts short."""

    def __init__(self) -> None:
        self.pause_reason: PauseReason | None = None
        self.frozen = False
        self.aborted = False
        self._running = asyncio.Event()
        self._running.set()
        # What a pause may cut short: waits and delays, and questions to the operator.
        self.wakers: dict[At, set[asyncio.Event]] = {At.WAIT: set(), At.OPERATOR: set()}
        self._busy = 0  # branches running a step action (not parked at a boundary)
        self.idle = asyncio.Event()
        self.idle.set()

    def pause(self, reason: PauseReason) -> None:
        """Stop every branch at its next step boundary; cut what this pause cuts."""
        self.pause_reason = reason
        self._running.clear()
        cut = [At.OPERATOR] if reason is PauseReason.STOP else [At.OPERATOR, At.WAIT]
        for kind in cut:
            for waker in self.wakers[kind]:
                waker.set()

    def freeze(self) -> None:
        """No new write or call starts; waits and questions are cut."""
        self.frozen = True
        self._running.clear()
        if self.pause_reason is None:
            self.pause_reason = PauseReason.HOLD
        for wakers in self.wakers.values():
            for waker in wakers:
                waker.set()

    def release(self) -> None:
        """Lift the pause and the freeze."""
        self.pause_reason = None
        self.frozen = False
        self._running.set()

    def add_busy(self, delta: int) -> None:
        """A branch starts (+1) or stops (-1) running a step action."""
        self._busy += delta
        if self._busy <= 0:
            self.idle.set()
        else:
            self.idle.clear()

    async def park(self) -> None:
        """A step boundary: wait here while paused."""
        if self.pause_reason is None:
            return
        self.add_busy(-1)
        try:
            while self.pause_reason is not None:
                await self._running.wait()
        finally:
            self.add_busy(1)

    def checkpoint(self, at: At) -> None:
        """Before a write, call, wait or question: raise Interrupted when a pause stops it,
        CancelledError after an Abort."""
        if self.aborted:
            raise asyncio.CancelledError("aborted")
        if self.frozen:
            raise Interrupted
        if self.pause_reason is None or at is At.OUTPUT:
            return  # the running step's writes and calls go on to its end
        if at is At.WAIT and self.pause_reason is PauseReason.STOP:
            return  # Stop lets the running step finish
        raise Interrupted

    async def sleep(self, seconds: float | None) -> bool:
        """Sleep (None: forever); True when a pause cut it short."""
        self.checkpoint(At.WAIT)
        waker = asyncio.Event()
        self.wakers[At.WAIT].add(waker)
        try:
            async with asyncio.timeout(seconds):
                await waker.wait()
        except TimeoutError:
            return False
        finally:
            self.wakers[At.WAIT].discard(waker)
        return True

    async def interruptible(self, ask: Callable[[], Awaitable[T]]) -> T:
        """Await the operator; raises Interrupted when a pause cuts it short."""
        # Before asking: a question never asked is never left unawaited.
        self.checkpoint(At.OPERATOR)
        task = asyncio.ensure_future(ask())
        waker = asyncio.Event()
        self.wakers[At.OPERATOR].add(waker)
        woken = asyncio.ensure_future(waker.wait())
        try:
            done, _ = await asyncio.wait({task, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.wakers[At.OPERATOR].discard(waker)
            woken.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        raise Interrupted

    async def until_cancelled(self) -> NoReturn:
        """Abort asked of the controller: no branch starts anything more; wait for the cancel."""
        self.pause(PauseReason.STOP)
        self.add_busy(-1)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self.add_busy(1)
        raise AssertionError("unreachable: the future is never set")
