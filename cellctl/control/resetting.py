"""What Resetting does: it prepares the cell for the batch, writing the cell's `reset` values
(else its safe state), each confirmed and on record, then waits for the cell's `ready`
condition on values read after those writes; a `ready` still false at its timeout, or a write
that fails, stops the cell (the controller's Stopping writes the safe state).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from cellctl import expr
from cellctl.cell import Cell
from cellctl.control.events import Event, Notice, TagWritten
from cellctl.control.executor import judge, until_met
from cellctl.control.interlocks import InterlockMonitor
from cellctl.control.ledger import NO_LEDGER, WriteLedger
from cellctl.control.safestate import SafeState
from cellctl.errors import CellctlError
from cellctl.io.session import TagIO
from cellctl.values import TagValue
from drivers.base import Quality, Value


class Resetting:
    """Resetting's writes and its wait for `ready`, for one controller's cell."""

    def __init__(
        self,
        io: TagIO,
        safe: SafeState,
        interlocks: InterlockMonitor,
        emit: Callable[[Event], None],
        start_refused: Callable[[], bool],
        ledger: WriteLedger = NO_LEDGER,
    ) -> None:
        self.cell: Cell = io.cell
        #: What records each of Resetting's writes before it is sent.
        self.ledger = ledger
        self.io = io
        self.safe = safe
        self.interlocks = interlocks
        self.emit = emit
        #: True once a stop request came before the start: nothing more is written.
        self.start_refused = start_refused
        #: The cell's `ready` condition, which Resetting waits for.
        self.ready = self.cell.ready.condition if self.cell.ready is not None else None
        #: Set by a stop request before the start: the wait for `ready` looks again, and ends.
        self.wake = asyncio.Event()
        unwatched = [t for t in self.cell.ready_tags if t not in io.tags]
        if unwatched:  # the wait would never hear them change
            raise ValueError(f"the tags of ready must be watched: {', '.join(unwatched)}")

    async def problem(self) -> str | None:
        """Write what Resetting writes and wait for `ready`: why the cell is not reset, or
        None (also when a stop request before the start cut it short)."""
        problem = await self._reset_outputs()
        if problem is None and self.ready is not None and not self.start_refused():
            problem = await self._until_ready(self.ready)
        if problem is None and not self.start_refused():
            problem = self.tripped()
        return problem

    async def _reset_outputs(self) -> str | None:
        """Write what Resetting writes (the cell's `reset`, else its safe state) in cell-file
        order, each confirmed and on record; why it could not, or None.

        A stop request before the start ends it (nothing more is written), and so does a
        trip's safe state: that is the last word until the next Reset.
        """
        for tag, value in self.cell.reset_values.items():
            if self.start_refused():
                break
            if (problem := self.tripped()) is not None:
                return problem
            device = self.cell.tags[tag].device
            try:
                checked = self.io.check(tag, value)
                token = await self.ledger.intent(tag, checked, None, None)  # on disk first
            except CellctlError as error:
                return (
                    f"Resetting: cannot write {tag} = {expr.show(value)} on device {device}: "
                    f"{error}"
                )
            try:
                await self.io.write(tag, checked)
            except CellctlError as error:
                self.ledger.confirmed(token, str(error), unknown=True)
                return (
                    f"Resetting: cannot write {tag} = {expr.show(value)} on device {device}: "
                    f"{error}"
                )
            except BaseException as error:  # cancelled in flight (Abort, a stop before start)
                self.ledger.confirmed(token, f"{type(error).__name__} in flight", unknown=True)
                raise
            self.ledger.confirmed(token, None)
            self.emit(TagWritten(tag=tag, value=checked))
        return None

    def tripped(self) -> str | None:
        """Why the cell is not reset when a trip wrote the safe state meanwhile (it is the last
        word: nothing of Resetting's may follow it), else None."""
        if not self.safe.asked:
            return None
        names = ", ".join(self.interlocks.active)
        trips = f"interlock {names}" if names else "an interlock"
        return f"Resetting: {trips} tripped; its safe state stands, the cell is not reset"

    async def _until_ready(self, ready: expr.Expression) -> str | None:
        """Wait until `ready` holds on a fresh read made after Resetting's writes were
        confirmed, or on samples not older than it, within the cell's timeout; a message naming
        what is not true when it does not. A stop request before the start ends the wait."""
        assert self.cell.ready is not None
        timeout = self.cell.ready.timeout
        told: list[bool] = []

        def judged(current: dict[str, TagValue]) -> tuple[bool, dict[str, Value | None]]:
            met, shown = judge(ready, current, {})
            if not met and not told:
                told.append(True)
                self.emit(
                    Notice(
                        text=f"Resetting: waiting up to {timeout:g} s for the cell to be "
                        f"ready: {ready.text} ({expr.show_values(shown)})"
                    )
                )
            return met, shown

        try:
            last = await until_met(
                self.io,
                self.cell.ready_tags,
                self.wake,  # a stop request before the start sets it: the wait ends
                judged,
                lambda: time.monotonic() + timeout,  # from the read after the writes
                lambda: not self.start_refused(),
            )
        except expr.EvaluationError as error:
            return f"Resetting: ready {ready.text}: {error}"
        if last is None:
            return None  # a stop request before the start
        if last.met:  # on record with the values it was judged on
            values = expr.show_values(last.shown)
            self.emit(Notice(text=f"Resetting: the cell is ready: {ready.text} ({values})"))
            return None
        return self._not_ready(ready, last.current, last.shown, timeout)

    @staticmethod
    def _not_ready(
        ready: expr.Expression,
        current: dict[str, TagValue],
        shown: dict[str, Value | None],
        timeout: float,
    ) -> str:
        """What is not true of `ready` at its timeout: its false parts, and its unreadable tags."""
        unread = {
            t: v.error or "no value"
            for t, v in current.items()
            if v.quality is Quality.BAD or v.value is None
        }
        # A part that reads an unreadable tag is named once, by the device's error.
        false = [
            said
            for part in expr.conjuncts(ready)
            if not part.names & unread.keys()
            for said in expr.false_parts(part, shown)
        ]
        errors = [f"{t} unreadable: {error}" for t, error in unread.items()]
        parts = "; ".join([*false, *errors])
        return f"Resetting: the cell is not ready after {timeout:g} s: {parts}"
