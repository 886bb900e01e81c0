"""The service before its first batch is loaded: the interlocks watched all the same, and a
trip writes the cell's safe state (kept until the devices confirm it), as in a batch."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from cellctl.cell import Cell
from cellctl.control.events import Event, TripCleared, Tripped
from cellctl.control.interlocks import InterlockMonitor
from cellctl.control.safestate import SafeState
from cellctl.io.session import TagIO

log = logging.getLogger("cellctl.service.standby")


class Standby:
    """Interlocks and the safe state of a cell that no batch holds."""

    def __init__(self, cell: Cell, io: TagIO, emit: Callable[[Event], None]) -> None:
        self.cell = cell
        self.io = io
        self._emit = emit
        self.faults: list[str] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.safe = SafeState(cell, io, emit=emit, fault=self._fault, task_done=self._done)
        self.interlocks = InterlockMonitor(
            cell, io, on_trip=self._tripped, on_clear=self._cleared, comm_devices=list(cell.devices)
        )
        self.open_now = False

    def _fault(self, text: str) -> None:
        log.error("standby: %s", text)
        self.faults.append(text)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("a standby task failed", exc_info=error)
            self._fault(f"internal error: {type(error).__name__}: {error}")

    def _tripped(self, trip: Tripped) -> None:
        self._emit(trip)
        task = asyncio.ensure_future(self.safe.write(f"interlock {trip.interlock}, no batch"))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _cleared(self, name: str) -> None:
        self._emit(TripCleared(interlock=name))
        self.safe.trip_cleared(name)

    async def open(self) -> None:
        """Watch the interlocks (the tags are watched by the service)."""
        self.interlocks.start()
        self.open_now = True
        await self.interlocks.check_now()

    async def confirm(self, within: float) -> dict[str, str]:
        """What of a safe state written here is not confirmed within `within` s."""
        return await self.safe.confirm(within, asyncio.Event(), waiting=lambda tags: None)

    async def close(self) -> None:
        """Stop watching; a safe-state write under way ends first (bounded)."""
        if not self.open_now:
            return
        self.open_now = False
        self.interlocks.stop()
        self.safe.stop()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30)
