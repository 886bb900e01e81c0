"""The work of each acting state of the controller: entering a state starts its work (the work
of the state it left is cancelled), and the state completes on its own once the work is done.
An interlock's trip acts on the executor at once, then takes its command or writes the safe
state.

What Holding does: the executor stops taking steps at once (no new write or call starts), the
safe state is written, and Held is reached once the write or call in flight has ended.

Unholding writes back the cell's `restore_on_unhold` tags to the value the recipe last wrote,
then the executor re-enters the interrupted wait. A step whose own writes the safe state undid
meanwhile (tags Unholding does not restore: a trigger such as a cycle start) is not re-entered:
Unhold needs the operator's choice, to re-run it from its start or skip it (or Abort).
Suspend pauses the executor the same way but writes nothing (an external cause: starved or
blocked).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from cellctl.cell import Cell
from cellctl.control.events import Event, Notice, TagWritten, TripCleared, Tripped
from cellctl.control.executor import Executor, PauseReason
from cellctl.control.machine import Command, PackMLMachine, State
from cellctl.control.operator import FailureChoice
from cellctl.control.resetting import Resetting
from cellctl.control.safestate import SafeState
from cellctl.errors import CellctlError
from cellctl.io.session import TagIO

#: Seconds Stopping waits for a write or call in flight before it cancels it.
STOP_WAIT = 30.0
#: Seconds the executor's end is awaited after its cancel (the write or call in flight ends
#: within its device's bound); the safe state then goes on regardless: the executor is frozen.
END_RUN_WAIT = 10.0


class ActingStates:
    """The Controller's acting states: the work each one does, and its completion."""

    # What the work uses of the controller (set by Controller.__init__).
    cell: Cell
    io: TagIO
    executor: Executor
    safe: SafeState
    machine: PackMLMachine
    resetting: Resetting
    log: Any  # a structlog logger bound to the batch
    cause: str | None
    _run: asyncio.Task[None] | None
    _work: asyncio.Task[None] | None
    _choice: FailureChoice | None

    if TYPE_CHECKING:

        @property
        def state(self) -> State: ...

        def emit(self, event: Event) -> None: ...

        def fault(self, text: str) -> None: ...

        def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...

        async def _apply(
            self, command: Command, cause: str, interlock: str | None = None
        ) -> None: ...

    def _enter(self, state: State) -> None:
        """Start the work of the state just entered; the work of the previous one is cancelled."""
        previous, self._work = self._work, None
        if previous is not None and previous is not asyncio.current_task():
            previous.cancel()
        work = {
            State.RESETTING: self._resetting,
            State.STARTING: self._starting,
            State.EXECUTE: self._executing,
            State.COMPLETING: self._completing,
            State.HOLDING: self._holding,
            State.UNHOLDING: self._unholding,
            State.SUSPENDING: self._suspending,
            State.UNSUSPENDING: self._unsuspending,
            State.STOPPING: self._stopping,
            State.ABORTING: self._aborting,
            State.CLEARING: self._clearing,
        }.get(state)
        if work is not None:
            self._work = asyncio.ensure_future(self._complete_after(state, work))

    async def _complete_after(self, state: State, work: Callable[[], Awaitable[None]]) -> None:
        try:
            await work()
        except asyncio.CancelledError:
            raise
        except Exception as error:  # a bug of ours: record it, and make the cell safe
            self.log.error("the work of a state failed", state=str(state), exc_info=error)
            self.fault(f"{state}: internal error: {error}")
            if self.state is not state:
                return
            if state is not State.ABORTING:
                await self._apply(Command.ABORT, f"internal error in {state}: {error}")
                return
            # Aborting goes on to Aborted all the same: never stuck in an acting state.
        if self.state is not state:
            return  # a command moved the machine on while the work ran
        if state is State.EXECUTE:
            return  # Execute ends when the recipe is done (see _executing)
        target = self.machine.state_complete(f"{state} done")
        self._enter(target)

    # -- a trip: its action -------------------------------------------------------------------

    def _tripped(self, trip: Tripped) -> None:
        # Called inside a driver's callback: act synchronously on the executor, then schedule.
        self.fault(trip.message)
        self.emit(trip)
        if trip.action == "abort":
            self.executor.abort()  # no write or call after this, whatever the cancel does
        if self._run is not None and not self._run.done():
            if trip.action == "abort":
                self._run.cancel()
            else:
                self.executor.freeze()  # the safe state comes next: nothing may follow it
        command = {"hold": Command.HOLD, "stop": Command.STOP, "abort": Command.ABORT}[trip.action]
        self._spawn(self._act_on_trip(trip, command))

    def _trip_cleared(self, name: str) -> None:
        self.emit(TripCleared(interlock=name))
        self.safe.trip_cleared(name)

    async def _act_on_trip(self, trip: Tripped, command: Command) -> None:
        if self.machine.is_legal(command):
            await self._apply(command, trip.message, trip.interlock)
            return
        # Holding or Stopping may still wait for a step boundary or a call in flight before
        # they write: a trip does not wait (the executor is frozen already). Aborting has its
        # own write under way, the executor ended first.
        if self.state is not State.ABORTING:
            self._safe_state_later(f"interlock {trip.interlock} in {self.state}")

    # -- the work of each state --------------------------------------------------------------

    async def _resetting(self) -> None:
        self.cause = None
        await self.safe.end_writers()
        problem = await self.resetting.problem()
        if problem is not None:
            self.fault(problem)
            self.emit(Notice(text=problem, level="error"))
            await self._apply(Command.STOP, problem)

    async def _starting(self) -> None:
        await self.safe.end_writers()  # a trip's safe state before Start: the recipe decides

    async def _executing(self) -> None:
        choice = self._take_choice()
        if self._run is None:
            if self.executor.paused:  # held or suspended before its first step: nothing failed
                self.executor.resume()
            self._run = asyncio.ensure_future(self.executor.run())
        elif self.executor.failure is not None and choice is None:
            # Back in Execute (an Unsuspend) with a failed step nobody chose for: hold again.
            await self._apply(Command.HOLD, self.executor.failure.message)
            return
        else:
            self.executor.resume(choice)
        try:
            # Shielded: leaving Execute cancels this work, never the executor itself.
            await asyncio.shield(self._run)
        except Exception as error:
            self.log.error("the executor failed", exc_info=error)
            self.fault(f"executor: internal error: {error}")
            if self.state is State.EXECUTE:
                await self._apply(Command.ABORT, f"internal error: {error}")
            return
        if self.state is State.EXECUTE:
            self._enter(self.machine.state_complete("recipe done"))

    def _take_choice(self) -> FailureChoice | None:
        choice, self._choice = self._choice, None
        return choice

    async def _completing(self) -> None:
        return None

    async def _holding(self) -> None:
        running = self._run is not None and not self._run.done()
        if running:
            self.executor.pause(PauseReason.HOLD)
            if not self.executor.frozen:
                # Hold takes effect at the step boundary: the running step's writes end
                # first, so the safe state is the last word.
                await self.executor.wait_paused()
        await self.safe.write("Holding")
        if running:
            await self.executor.wait_paused()

    async def _unholding(self) -> None:
        await self.safe.end_writers()
        commanded = self.executor.commanded()
        restore = set(self.cell.restore_on_unhold)
        for tag in [t for t in commanded if t in restore]:  # in the order the recipe wrote them
            token: object = None
            recorded = False  # the intent is on disk (a write not recorded is not sent)
            try:
                token = await self.executor.ledger.intent(tag, commanded[tag], None, None)
                recorded = True
                await self.io.write(tag, commanded[tag])
            except CellctlError as error:
                if recorded:  # an intent not recorded sent nothing: no confirmation
                    self.executor.ledger.confirmed(token, str(error), unknown=True)
                message = f"Unholding: cannot restore {tag} = {commanded[tag]!r}: {error}"
                self.fault(message)
                self.emit(Notice(text=message, level="error"))
                await self._apply(Command.STOP, message)
                return
            except BaseException as error:  # cancelled in flight (Abort)
                if recorded:
                    self.executor.ledger.confirmed(
                        token, f"{type(error).__name__} in flight", unknown=True
                    )
                raise
            self.executor.ledger.confirmed(token, None)
            self.emit(TagWritten(tag=tag, value=commanded[tag]))
        # The executor resumes when Execute is entered (see _executing).

    async def _suspending(self) -> None:
        self.executor.pause(PauseReason.SUSPEND)
        await self.executor.wait_paused()

    async def _unsuspending(self) -> None:
        return None

    async def _stopping(self) -> None:
        running = self._run is not None and not self._run.done()
        if running and self.executor.frozen:
            # A trip: the safe state at once; the write or call in flight ends before it on
            # its device's connection.
            await self.safe.write("Stopping")
            await self._end_run()
            return
        if running:
            # Stop lets the running step finish (its wait too, within STOP_WAIT).
            self.executor.pause(PauseReason.STOP)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(STOP_WAIT):
                    await self.executor.wait_paused()
            await self._end_run()
        await self.safe.write("Stopping")

    async def _aborting(self) -> None:
        # The executor is aborted (no write or call starts any more): the safe state first;
        # a write in flight ends before it on its device's connection.
        await self.safe.write("Aborting")
        await self._end_run()

    async def _clearing(self) -> None:
        return None

    def _safe_state_later(self, reason: str) -> None:
        self.safe.track(self._spawn(self.safe.write(reason)))

    async def _end_run(self) -> None:
        run = self._run
        if run is None:
            return
        self.executor.freeze()  # whatever the cancel does, no write or call starts now
        run.cancel()
        # asyncio.wait, not await: a cancel aimed at this task must still reach it. Bounded:
        # the executor is frozen, so nothing it does later reaches a device.
        await asyncio.wait({run}, timeout=END_RUN_WAIT)
        if not run.done():
            self.fault(f"the executor did not end within {END_RUN_WAIT:g} s of its cancel")
            self.log.error("the executor did not end after its cancel", wait=END_RUN_WAIT)
        elif not run.cancelled() and run.exception() is not None:
            self.log.error("the executor failed", exc_info=run.exception())
