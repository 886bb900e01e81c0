"""The way a surface on a thread of its own reaches the service on the control loop, and back.

What crosses between the loops is immutable (statuses, tag values, requests, answers) and
crosses only through `call_soon_threadsafe` and `run_coroutine_threadsafe`: a surface's call is
run on the control loop and awaited with a deadline (ControllerTimeout after it); a refused
login goes to `backend.security_refused` there. Shared by the OPC UA surface
(cellctl.service.opcua_thread) and the web view (cellctl.web.thread).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from cellctl import exitcodes
from cellctl.errors import CellctlError
from cellctl.service.api import Accepted, Backend, Caller, Refused, Request

__all__ = ["ControlBridge", "ControllerTimeout", "on_loop", "settle"]

log = logging.getLogger("cellctl.service")

T = TypeVar("T")


class ControllerTimeout(CellctlError):
    """The controller did not answer a request in time (the request may still be carried out)."""

    exit_code = exitcodes.DEVICE_FAILURE


class ControlBridge:
    """A surface's way to the service: each call is carried to the control loop."""

    def __init__(self, backend: Backend, control: asyncio.AbstractEventLoop, deadline: float):
        self._backend = backend
        self._control = control
        self._deadline = deadline

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """`backend.submit` on the control loop; ControllerTimeout after the deadline."""
        work = self._backend.submit(caller, request)
        try:
            future = asyncio.run_coroutine_threadsafe(work, self._control)
        except RuntimeError:  # the control loop has closed
            work.close()
            raise
        # Shielded: a late answer is not cancelled halfway (the command layer records it).
        answer = asyncio.wrap_future(future)
        answer.add_done_callback(_late_answer)
        try:
            async with asyncio.timeout(self._deadline):
                return await asyncio.shield(answer)
        except TimeoutError:
            raise ControllerTimeout(
                f"the controller did not answer within {self._deadline:g} s; the request may "
                "still be carried out: read the status before trying again"
            ) from None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` (a backend method that reads) on the control loop, its result or its
        exception; ControllerTimeout after the deadline."""
        result: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not result.set_running_or_notify_cancel():
                return  # given up on already
            try:
                result.set_result(fn(*args))
            except BaseException as error:
                result.set_exception(error)

        self._control.call_soon_threadsafe(run)  # RuntimeError: the control loop has closed
        try:
            async with asyncio.timeout(self._deadline):
                return await asyncio.wrap_future(result)
        except TimeoutError:
            raise ControllerTimeout(
                f"the controller did not answer within {self._deadline:g} s: try again"
            ) from None

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """`backend.security_refused` on the control loop."""
        on_loop(self._control, self._backend.security_refused, what, who, peer, reason)


def _late_answer(answer: asyncio.Future[Accepted | Refused]) -> None:
    """Log what a request that ran past its deadline ended with (nobody awaits it any more)."""
    if answer.cancelled():
        return
    error = answer.exception()
    if error is not None:
        log.error("a request failed on the controller", exc_info=error)


def on_loop(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    """`fn(*args)` soon on `loop`, unless that loop has closed (then logged)."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        log.error("cannot hand %s to a closed event loop", getattr(fn, "__name__", fn))


def settle(started: asyncio.Future[str], url: str, error: BaseException | None) -> None:
    """Resolve a surface's `start` future (on the control loop), unless `start` gave up on it."""
    if started.done():
        return
    if error is not None:
        started.set_exception(error)
    else:
        started.set_result(url)
