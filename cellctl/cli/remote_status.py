"""`status` and `watch`: what a running `cellctl serve` is doing, once or live (the options are
cellctl.cli.remote's)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.remote import CertsOption, ServerOption, Target, UserOption, target

if TYPE_CHECKING:
    import asyncio

    from cellctl.cli.views.service import ServiceWatch
    from cellctl.service.api import ServiceStatus

#: Seconds between two frames of the live view at least (at most 8 a second).
FRAME = 1 / 8
#: Seconds between two frames at most when nothing changed (a resized terminal is redrawn).
IDLE_FRAME = 1.0


@app.command()
def status(
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """What the running service is doing: state, mode, batch, recipe, step, parts, trips."""
    import asyncio

    from cellctl.cli.views.service import status_lines

    async def once() -> ServiceStatus:
        async with target(server, user, certs).connect() as cell:
            return await cell.status()

    for line in status_lines(asyncio.run(once())):
        consoles.out.print(line, markup=False)


@app.command()
def watch(
    server: ServerOption = None,
    user: UserOption = None,
    certs: CertsOption = None,
) -> None:
    """Follow the running service live until Ctrl-C: its status, its last state changes.

    Off a terminal: one line per change of state, step or parts produced.
    """
    import asyncio

    from cellctl.cli.signals import until_signalled

    remote = target(server, user, certs)
    asyncio.run(until_signalled(lambda stop: _watch(remote, stop)))


async def _watch(remote: Target, stop: asyncio.Event) -> None:
    """Follow the service until `stop`; ServerUnreachable (exit 2) when it goes away."""
    import asyncio
    import contextlib
    import time

    from cellctl.cli.views.service import ServiceWatch

    view = ServiceWatch(remote.url)
    changed = asyncio.Event()
    lines = None if consoles.out.is_terminal else _ChangeLines()

    def on_status(status: ServiceStatus, states: tuple[str, ...]) -> None:
        now = time.time()
        view.update(now, status, states)
        changed.set()
        if lines is not None:
            lines.write(now, status, states)

    async with remote.connect() as cell:
        follow = asyncio.ensure_future(cell.subscribe_status(on_status))
        try:
            if lines is None:
                await _live(view, changed, follow, stop)
            else:
                await _first(follow, stop)
            if follow.done():
                follow.result()  # the service went away: its error, exit 2
        finally:
            follow.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await follow


class _ChangeLines:
    """`watch` off a terminal: one line per change of state, step or parts produced."""

    def __init__(self) -> None:
        self._last: ServiceStatus | None = None

    def write(self, at: float, status: ServiceStatus, states: tuple[str, ...]) -> None:
        """The lines of a new status: the states passed through on the way (with the step
        and count known before), then the status now if what a line shows changed."""
        from cellctl.cli.views.service import change_line

        last = self._last
        if last is not None:
            for state in states[:-1]:
                consoles.out.print(change_line(at, state, last), markup=False)
        shown = (status.state, status.step, status.produced)
        if last is None or states or shown != (last.state, last.step, last.produced):
            consoles.out.print(change_line(at, status.state, status), markup=False)
        self._last = status


async def _first(follow: asyncio.Future[None], *events: asyncio.Event) -> None:
    """Wait until one of `events` is set or `follow` ended."""
    import asyncio

    waits = [asyncio.ensure_future(event.wait()) for event in events]
    pending: set[asyncio.Future[Any]] = {follow, *waits}
    try:
        await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


async def _live(
    view: ServiceWatch, changed: asyncio.Event, follow: asyncio.Future[None], stop: asyncio.Event
) -> None:
    """The live view redrawn on each change, at most 8 times a second, until `stop` or the
    end of `follow`; its last frame stays on the screen."""
    import asyncio
    import contextlib

    from rich.live import Live

    with Live(view, console=consoles.out, auto_refresh=False) as live:
        while not stop.is_set() and not follow.done():
            changed.clear()
            live.refresh()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(FRAME):  # no frame sooner than this
                    await _first(follow, stop)
            if not changed.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(IDLE_FRAME):
                        await _first(follow, stop, changed)
