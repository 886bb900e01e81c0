"""The controller of one batch: the PackML machine, the executor task, the interlocks and the
safe state, and the operator's commands.

The machine only records state changes (cellctl.control.machine); the work of each acting state runs
here in a task the controller owns, one at a time: a new state cancels the work of the one it
left (Abort during Holding: Aborting writes the whole safe state again). The executor is its
own task, started on the first Execute, paused by Hold/Suspend/Stop and cancelled by Abort and
after Stop.

What Resetting does: it prepares the cell for the batch, writing the cell's `reset` values
(else its safe state), each confirmed and on record, then waits for the cell's `ready`
condition on values read after those writes; a `ready` still false at its timeout, or a write
that fails, stops the cell (Stopping writes the safe state).

What Holding does: the executor stops taking steps at once (no new
write or call starts), the safe state is written, and Held is reached once the write or call in
flight has ended.

The safe state is attempted on every device every time. A device that is lost (its health
says so) is not waited for; its whole safe state is written again by the keeper, every
SAFE_RETRY s and at once when it answers again, until it is confirmed; so is a device whose
write failed (cellctl.control.safestate). A run confirms it, read back, before it ends.

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
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import asdict
from typing import Any

import structlog

from cellctl import expr
from cellctl.cell import Cell
from cellctl.control.events import (
    BatchEnded,
    CommandRefused,
    Event,
    ModeChanged,
    Notice,
    SafeStateWritten,
    StateChanged,
    StepEnded,
    StepOutcome,
    TagWritten,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.executor import Executor, PauseReason, StepFailure, judge, until_met
from cellctl.control.interlocks import (
    BLOCKED_COMMANDS,
    InterlockMonitor,
)
from cellctl.control.machine import (
    Command,
    IllegalCommand,
    MachineError,
    Mode,
    PackMLMachine,
    State,
)
from cellctl.control.operator import FailureChoice, Operator
from cellctl.control.safestate import SafeState
from cellctl.errors import CellctlError
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe
from cellctl.values import TagValue
from drivers.base import Quality, Unsubscribe, Value

log = structlog.get_logger("cellctl.control.controller")

#: States in which a batch has ended for good.
END_STATES = frozenset({State.COMPLETE, State.STOPPED, State.ABORTED})
#: Seconds closing waits for the safe state and queued commands before it cancels them.
CLOSE_WAIT = 30.0
#: Seconds Stopping waits for a write or call in flight before it cancels it.
STOP_WAIT = 30.0
#: Seconds the executor's end is awaited after its cancel (the write or call in flight ends
#: within its device's bound); the safe state then goes on regardless: the executor is frozen.
END_RUN_WAIT = 10.0


class CommandBlocked(CellctlError):
    """A command an active interlock (or a pending choice) refuses; nothing changed."""


class Controller:
    """One batch of one recipe on one cell: commands in, events out."""

    def __init__(
        self,
        loaded: LoadedRecipe,
        parameters: Mapping[str, Value],
        io: TagIO,
        operator: Operator,
        *,
        listener: Callable[[Event], None] | None = None,
        mode: Mode = Mode.PRODUCTION,
        step_mode: bool = False,
        breakpoints: Collection[str] = (),
        comm_devices: Collection[str] = (),
    ) -> None:
        self.loaded = loaded
        self.cell: Cell = io.cell
        self.io = io
        self.operator = operator
        self.listeners: list[Callable[[Event], None]] = [listener] if listener else []
        self.machine = PackMLMachine(self._state_changed, mode=mode)
        if (step_mode or breakpoints) and not self.machine.may_step():
            raise MachineError(f"stepping and breakpoints need Maintenance mode, not {mode}")
        identity = loaded.identity
        self.log = log.bind(
            recipe=identity.name,
            version=identity.version,
            sha256=identity.sha256,
            operator=operator.name,
        )
        self.executor = Executor(
            loaded.recipe,
            parameters,
            io,
            self,
            operator,
            step_mode=step_mode,
            breakpoints=breakpoints,
        )
        self.interlocks = InterlockMonitor(
            self.cell,
            io,
            on_trip=self._tripped,
            on_clear=self._trip_cleared,
            comm_devices=comm_devices,
        )
        self.faults: list[str] = []
        self.cause: str | None = None
        self.started_at: float | None = None  # time.time(), for people and records
        self._started_clock: float | None = None  # time.monotonic(), for the duration
        self._changed = asyncio.Event()
        self._work: asyncio.Task[None] | None = None
        self._run: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._choice: FailureChoice | None = None
        #: Why the last Hold, Stop or Abort was taken (the batch's cause when it ends so).
        self._stop_cause: str | None = None
        #: The safe state: written on demand, kept until the devices confirm it.
        self.safe = SafeState(
            self.cell, io, emit=self.emit, fault=self.fault, task_done=self._task_done
        )
        self._unhealth: Unsubscribe | None = None
        #: Set by a stop request before the batch started: Reset and Start are not issued.
        self._no_start: str | None = None
        #: The cell's `ready` condition, which Resetting waits for; refuse_start wakes it.
        self._ready = expr.parse(self.cell.ready.when) if self.cell.ready is not None else None
        self._ready_wake = asyncio.Event()
        unwatched = [t for t in self.cell.ready_tags if t not in io.tags]
        if unwatched:  # the wait would never hear them change
            raise ValueError(f"the tags of ready must be watched: {', '.join(unwatched)}")

    # -- events ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Tell every listener and the log (executor events come through here too)."""
        if isinstance(event, StepEnded) and event.outcome is StepOutcome.FAILED:
            self.fault(event.error or f"{event.label} failed")
        if not isinstance(event, WaitProgress) or event.met:  # unmet waits: too many to log
            fields = {k: v for k, v in asdict(event).items() if k != "at"}
            self.log.info(type(event).__name__, **fields)
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:
                self.log.error("an event listener failed", exc_info=True)
        if isinstance(event, SafeStateWritten):
            # While held: a step whose own writes this undid is asked about on Unhold.
            self.executor.overwritten({r.tag: r.value for r in event.results if r.error is None})

    def _state_changed(self, change: StateChanged) -> None:
        # The machine's callback: record and signal only (DESIGN §7).
        self.emit(change)
        self._changed.set()

    @property
    def state(self) -> State:
        """The machine's state now."""
        return self.machine.state

    # -- the executor's host ---------------------------------------------------------------

    def fault(self, text: str) -> None:
        """Record a fault for the batch's summary, once."""
        if text not in self.faults:
            self.faults.append(text)

    def step_failed(self, failure: StepFailure) -> None:
        """A step failed: hold (the operator chooses retry or skip) or abort, as on_error says;
        or a step's writes were undone (hold: re-run, skip or abort)."""
        if not failure.undone:  # a question, not a fault
            self.fault(failure.message)
        command = Command.ABORT if failure.action == "abort" else Command.HOLD
        self.request(command, cause=failure.message)

    def operator_abort(self, reason: str) -> None:
        """The operator chose abort while stepping."""
        self.request(Command.ABORT, cause=reason)

    # -- interlocks ---------------------------------------------------------------------------

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
            await self._apply(command, trip.message)
            return
        # Holding or Stopping may still wait for a step boundary or a call in flight before
        # they write: a trip does not wait (the executor is frozen already). Aborting has its
        # own write under way, the executor ended first.
        if self.state is not State.ABORTING:
            self._safe_state_later(f"interlock {trip.interlock} in {self.state}")

    # -- commands -----------------------------------------------------------------------------

    def request(self, command: Command, *, cause: str, choice: FailureChoice | None = None) -> None:
        """A command from a synchronous context (a key, a signal, a failed step): carried out
        in a task of the controller's; a refusal is an event (CommandRefused), never raised."""

        async def issue() -> None:
            with contextlib.suppress(MachineError, CommandBlocked):
                await self.command(command, cause=cause, choice=choice)

        self._spawn(issue())

    def refuse_start(self, cause: str) -> None:
        """Before the batch started: Reset and Start will not be issued (the run ends)."""
        self._no_start = cause
        self._ready_wake.set()
        self.wake_waiters()

    @property
    def start_refused(self) -> str | None:
        """Why the batch was never started (refuse_start), or None."""
        return self._no_start if self.started_at is None else None

    @property
    def before_start(self) -> bool:
        """True until Start is carried out: nothing of the recipe has been written."""
        return self.started_at is None and self.state in (
            State.STOPPED,
            State.RESETTING,
            State.IDLE,
        )

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            self.log.error("a controller task failed", exc_info=error)
            self.fault(f"internal error: {type(error).__name__}: {error}")

    async def command(
        self,
        command: Command,
        *,
        cause: str = "operator",
        choice: FailureChoice | None = None,
    ) -> State:
        """An operator command; raises IllegalCommand or CommandBlocked, nothing changed then."""
        try:
            self.machine.check(command)
            if command is Command.START and self._run is not None:
                raise CommandBlocked(
                    f"Start: this controller ran its batch already ({self.state}); "
                    "a new batch is a new run"
                )
            if command in BLOCKED_COMMANDS:
                await self.interlocks.check_now()
                message = self.interlocks.blocking_message(command)
                if message:
                    raise CommandBlocked(message)
                self.machine.check(command)  # the state may have moved on meanwhile
            failure = self.executor.failure
            if command is Command.UNHOLD and failure is not None and choice is None:
                if failure.undone:
                    how = "every write again, the wait afresh"
                else:
                    unknown = "its outcome is unknown: " if failure.outcome_unknown else ""
                    how = f"{unknown}a retry runs the whole step again"
                raise CommandBlocked(f"Unhold: {failure.message}; choose {failure.choices} ({how})")
        except (IllegalCommand, CommandBlocked) as refused:
            blocked = isinstance(refused, CommandBlocked)
            if blocked:  # an interlock or a pending choice refused it, not a key pressed early
                self.fault(f"{command} refused: {refused}")
            self.emit(CommandRefused(command=command, reason=str(refused), blocked=blocked))
            raise
        if command is Command.START and self._no_start is not None:
            # A stop request came while the interlocks were read (a signal): no Start. Not a
            # fault: the run ends as when it came before Reset.
            self.emit(CommandRefused(command=command, reason=self._no_start))
            raise CommandBlocked(self._no_start)
        # No await between the checks above and the change: nothing can move the state.
        if command is Command.UNHOLD:
            self._choice = choice
        await self._apply(command, cause)
        return self.state

    async def _apply(self, command: Command, cause: str) -> None:
        if command in (Command.HOLD, Command.STOP, Command.ABORT):
            self._stop_cause = cause
        if command is Command.START and self.started_at is None:
            # Now, not in Starting's work: a trip may cut that short, the batch is started.
            self.started_at, self._started_clock = time.time(), time.monotonic()
        if command is Command.ABORT:
            self.executor.abort()  # no write or call after this, whatever the cancel does
            if self._run is not None:
                self._run.cancel()  # at once, before anything else
        if command in (Command.HOLD, Command.STOP) and self._run is not None:
            self.executor.pause(PauseReason.HOLD if command is Command.HOLD else PauseReason.STOP)
        if command is Command.SUSPEND:
            self.executor.pause(PauseReason.SUSPEND)
        target = self.machine.command(command, cause)
        self._enter(target)

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

    # -- the work of each state --------------------------------------------------------------

    async def _resetting(self) -> None:
        self.cause = None
        await self.safe.end_writers()
        problem = await self._reset_outputs()
        if problem is None and self._ready is not None and self._no_start is None:
            problem = await self._until_ready(self._ready)
        if problem is None and self._no_start is None:
            problem = self._tripped_while_resetting()
        if problem is not None:
            self.fault(problem)
            self.emit(Notice(text=problem, level="error"))
            await self._apply(Command.STOP, problem)

    async def _reset_outputs(self) -> str | None:
        """Write what Resetting writes (the cell's `reset`, else its safe state) in cell-file
        order, each confirmed and on record; why it could not, or None.

        A stop request before the start ends it (nothing more is written), and so does a
        trip's safe state: that is the last word until the next Reset.
        """
        for tag, value in self.cell.reset_values.items():
            if self._no_start is not None:
                break
            if (problem := self._tripped_while_resetting()) is not None:
                return problem
            device = self.cell.tags[tag].device
            try:
                checked = self.io.check(tag, value)
                await self.io.write(tag, checked)
            except CellctlError as error:
                problem = (
                    f"Resetting: cannot write {tag} = {expr.show(value)} on device {device}: "
                    f"{error}"
                )
                return problem
            self.emit(TagWritten(tag=tag, value=checked))
        return None

    def _tripped_while_resetting(self) -> str | None:
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
                self._ready_wake,  # refuse_start sets it too: a stop request ends the wait
                judged,
                lambda: time.monotonic() + timeout,  # from the read after the writes
                lambda: self._no_start is None,
            )
        except expr.EvaluationError as error:
            return f"Resetting: ready {ready.text}: {error}"
        if last is None:
            return None  # a stop request before the start
        if last.met:  # on record with the values it was judged on
            values = expr.show_values(last.shown)
            self.emit(Notice(text=f"Resetting: the cell is ready: {ready.text} ({values})"))
            return None
        unread = {
            t: v.error or "no value"
            for t, v in last.current.items()
            if v.quality is Quality.BAD or v.value is None
        }
        # A part that reads an unreadable tag is named once, by the device's error.
        false = [
            said
            for part in expr.conjuncts(ready)
            if not part.names & unread.keys()
            for said in expr.false_parts(part, last.shown)
        ]
        errors = [f"{t} unreadable: {error}" for t, error in unread.items()]
        parts = "; ".join([*false, *errors])
        return f"Resetting: the cell is not ready after {timeout:g} s: {parts}"

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
            try:
                await self.io.write(tag, commanded[tag])
            except CellctlError as error:
                message = f"Unholding: cannot restore {tag} = {commanded[tag]!r}: {error}"
                self.fault(message)
                self.emit(Notice(text=message, level="error"))
                await self._apply(Command.STOP, message)
                return
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

    # -- a whole batch ----------------------------------------------------------------------

    async def open(self) -> None:
        """Watch the tags and start the interlocks (devices already connected)."""
        self.emit(ModeChanged(mode=self.machine.mode))
        self.io.watch()
        self._unhealth = self.io.on_health(self.safe.health_changed)
        self.interlocks.start()
        await self.interlocks.check_now()

    async def close(self) -> None:
        """Stop the interlocks, let queued commands and the safe state finish (at most
        CLOSE_WAIT s), then cancel what is left; the devices stay as they are."""
        self.interlocks.stop()
        if self._unhealth is not None:
            self._unhealth()
            self._unhealth = None
        self.safe.stop()  # the run has stopped waiting for the safe state
        await self._drain()
        # A writer drained above may have started the keeper again: it goes too.
        tasks = [t for t in (self._work, self._run, self.safe.stop(), *self._tasks) if t]
        for task in tasks:
            if not task.done():
                task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT)

    async def _drain(self) -> None:
        """Wait (at most CLOSE_WAIT s) for queued commands, safe-state writes and the work of
        an acting state; Execute's work and the executor are left alone."""
        busy = [t for t in self._tasks if not t.done()]
        if self._work is not None and not self._work.done() and self.state is not State.EXECUTE:
            busy.append(self._work)
        if busy:
            await asyncio.wait(busy, timeout=CLOSE_WAIT)

    async def wait_for(self, states: Iterable[State]) -> State:
        """Wait until the machine is in one of `states` (with nothing left to do there)."""
        wanted = frozenset(states)
        while True:
            self._changed.clear()
            if self.state in wanted and self._settled():
                return self.state
            await self._changed.wait()

    def wake_waiters(self) -> None:
        """Wake whatever waits for a state, to look again (a condition of its own changed)."""
        self._changed.set()

    def _settled(self) -> bool:
        return self._work is None or self._work.done() or self.state is State.EXECUTE

    async def _until_ended(self, stop_when_held: Callable[[], bool]) -> None:
        """Wait for Complete, Stopped or Aborted (or Held, when `stop_when_held()`), with the
        queued commands and safe-state writes done and the state still the same."""
        while True:
            state = await self.wait_for(END_STATES | {State.HELD} | {State.IDLE})
            if state is State.HELD and not stop_when_held():
                self._changed.clear()  # then the next change or wake_waiters() looks again
                await self._changed.wait()
                continue
            await self._drain()  # a queued Abort after Held, say, is carried out first
            if self.state is state:
                return

    def unanswered(self) -> str | None:
        """Held on a question Unhold asks (a step whose writes the safe state undid): why a
        batch that ends so ends, naming it; else None. It may come after the batch ended Held:
        the safe state of a device lost meanwhile is confirmed later (by the keeper)."""
        question = self.executor.failure
        if self.state is not State.HELD or question is None or not question.undone:
            return None
        return f"Held: {question.message}; {question.choices} needs an operator"

    async def run_batch(self, *, stop_when_held: Callable[[], bool]) -> BatchEnded:
        """Reset, Start, and wait for Complete, Stopped or Aborted, or for Held when
        `stop_when_held()` says nobody will Unhold; returns the BatchEnded event it emitted."""
        begun = time.monotonic()
        try:
            if self._no_start is None:
                await self.command(Command.RESET, cause="run")
                await self.wait_for({State.IDLE, State.STOPPED, State.ABORTED, State.HELD})
            if self._no_start is None and self.state is State.IDLE:
                await self.command(Command.START, cause="run")
                await self._until_ended(stop_when_held)
        except (CommandBlocked, MachineError) as refused:
            # Refused by an interlock, or the state moved on (a signal's Stop or Abort).
            self.cause = str(refused)
            await self._until_ended(stop_when_held)
        self.cause = self.cause or self._no_start
        failed = self.state is not State.COMPLETE
        # Ended Held because nobody is there to answer: the question is the cause.
        self.cause = self.cause or self.unanswered()
        ended = BatchEnded(
            state=self.state,
            duration=time.monotonic() - (self._started_clock or begun),
            steps_done=self.executor.steps_done,
            faults=tuple(self.faults),
            cause=self.cause or (self._stop_cause if failed else None),
        )
        self.emit(ended)
        return ended
