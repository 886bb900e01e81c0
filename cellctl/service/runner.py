"""The life of `cellctl serve`: the cell's devices locked, connected and watched for the
service's whole life (served by simulators with --sim), the heartbeat, the service and its
surfaces; it ends on SIGTERM or SIGINT (or a surface that fails) with the running batch stopped
and the safe state confirmed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cellctl.cell import Cell
from cellctl.control.journal.recorder import os_user
from cellctl.io.celllock import CellLock
from cellctl.io.drivers import ConnectReport, build_drivers
from cellctl.io.heartbeat import Heartbeat
from cellctl.io.session import TagIO
from cellctl.service.core import CellService, ServiceOptions

if TYPE_CHECKING:
    from cellctl.io.sim import CellSimulator

log = logging.getLogger("cellctl.service")

#: The signals that end a service normally (`Serving.why` names them so).
SIGNALS = ("SIGTERM", "SIGINT")


@dataclass
class Serving:
    """A running service: the service itself and how its end is asked for."""

    service: CellService
    stop: asyncio.Event
    why: list[str]

    def end(self, why: str) -> None:
        """Ask the service to end (a signal, a failed surface)."""
        if not self.stop.is_set():
            self.why.append(why)
            self.stop.set()

    def failure(self) -> str | None:
        """Why the service ended when no signal asked it to (a surface or a task of the
        service failed): its exit is then an internal error's, which a supervisor restarts."""
        return next((why for why in self.why if why not in SIGNALS), None)


@contextlib.asynccontextmanager
async def _served(cell: Cell, sim: bool, speed: float) -> AsyncIterator[Cell]:
    """The cell to connect to: its simulators' with --sim, else as written."""
    if not sim:
        yield cell
        return
    from cellctl.io.sim import CellSimulator

    simulator: CellSimulator = CellSimulator(cell, speed=speed)
    async with simulator:
        yield simulator.served_cell


@contextlib.asynccontextmanager
async def serving(
    cell: Cell, options: ServiceOptions, *, sim: bool = False, speed: float = 1.0
) -> AsyncIterator[Serving]:
    """The service of `cell`, connected and open; on exit the batch stopped, the safe state
    confirmed (CellService.close), everything closed."""
    async with (
        _served(cell, sim, speed) as connected,
        CellLock(
            connected, batch=f"serve-{os.getpid()}", operator=os_user(), journal=options.journal
        ),
    ):
        io = TagIO(connected, build_drivers(connected, list(connected.devices)), list(cell.tags))
        with ConnectReport() as report:
            await io.connect(report=report)  # DevicesUnreachable: nothing was written
        try:
            async with Heartbeat(io, connected.heartbeat):
                service = CellService(connected, io, options)
                try:
                    await service.open()
                    served = Serving(service, asyncio.Event(), [])
                    service.on_failure = served.end  # a failed task of the service ends it
                    yield served
                finally:
                    await service.close()  # once: until_stopped() may have closed it
        finally:
            await io.close()


async def until_stopped(
    serving: Serving, surfaces: list[Callable[[], Awaitable[None]]]
) -> dict[str, str]:
    """Wait for SIGTERM or SIGINT (or `serving.end()`), then stop the surfaces (`surfaces`:
    their stop functions), stop the batch and confirm the safe state: what is unconfirmed."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, serving.end, signum.name)
    try:
        await serving.stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: None)  # the cleanup is bounded: let it end
    log.info("the service stops: %s", ", ".join(serving.why))
    for stop in surfaces:
        try:
            await stop()
        except Exception:
            log.error("a surface failed to stop", exc_info=True)
    return await serving.service.close()
