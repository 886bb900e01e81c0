"""The controller of one batch: the PackML machine, the executor task, the interlocks and the
safe state, and the operator's commands.

The machine only records state changes (cellctl.control.machine); the work of each acting state
(cellctl.control.acting, Resetting's in cellctl.control.resetting) runs in a task the
controller owns, one at a time: a new state cancels the work of the one it left (Abort during
Holding: Aborting writes the whole safe state again). The executor is its own task, started on
the first Execute, paused by Hold/Suspend/Stop and cancelled by Abort and after Stop. Operator
commands come through one layer (cellctl.control.commands), which also says why one is refused.
The safe state is attempted on every device every time, and kept until the devices confirm it
(cellctl.control.safestate); a run confirms it, read back, before it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import structlog

from cellctl.cell import Cell
from cellctl.control.acting import ActingStates
from cellctl.control.commands import CommandBlocked, vet
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
    WaitProgress,
)
from cellctl.control.executor import Executor, PauseReason, StepFailure
from cellctl.control.interlocks import InterlockMonitor
from cellctl.control.ledger import NO_LEDGER, WriteLedger
from cellctl.control.machine import (
    Command,
    IllegalCommand,
    MachineError,
    Mode,
    PackMLMachine,
    State,
)
from cellctl.control.operator import FailureChoice, Operator
from cellctl.control.resetting import Resetting
from cellctl.control.resume import ResumePoint
from cellctl.control.safestate import SafeState
from cellctl.io.session import TagIO
from cellctl.logsetup import log_info
from cellctl.recipe import LoadedRecipe, iter_steps
from drivers.base import Unsubscribe, Value

__all__ = ["CLOSE_WAIT", "END_STATES", "CommandBlocked", "Controller"]

log = structlog.get_logger("cellctl.control.controller")

#: States in which a batch has ended for good.
END_STATES = frozenset({State.COMPLETE, State.STOPPED, State.ABORTED})
#: Seconds closing waits for the safe state and queued commands before it cancels them.
CLOSE_WAIT = 30.0


# Each event class's logged fields (all but its time), in declared order: found once per
# class, where dataclasses.fields() rebuilt them for every event on the control loop.
_LOGGED_NAMES: dict[type[Event], tuple[str, ...]] = {}


def _logged_names(kind: type[Event]) -> tuple[str, ...]:
    """The names of an event class's logged fields, in declared order."""
    names = _LOGGED_NAMES.get(kind)
    if names is None:
        names = _LOGGED_NAMES[kind] = tuple(f.name for f in fields(kind) if f.name != "at")
    return names


def _log_fields(event: Event, where: _Where) -> dict[str, Any]:
    """An event's fields for its log record, but its time: the file's thread renders them
    (nested dataclasses too) later, so each dict is copied now; the rest is immutable. A
    write's or call's line names its device, and a line with a step's path its step id."""
    logged = {
        name: dict(value) if isinstance(value := getattr(event, name), dict) else value
        for name in _logged_names(type(event))
    }
    named = logged.get("tag") or logged.get("method")
    if "device" not in logged and isinstance(named, str) and named in where.devices:
        logged["device"] = where.devices[named]
    path = logged.get("path")
    if "step_id" not in logged and isinstance(path, str) and path in where.step_ids:
        logged["step_id"] = where.step_ids[path]
    return logged


@dataclass(frozen=True)
class _Where:
    """What a log line names besides the event: each tag's and method's device, each step
    path's id."""

    devices: Mapping[str, str]
    step_ids: Mapping[str, str]

    @classmethod
    def of(cls, loaded: LoadedRecipe) -> _Where:
        """From the recipe and its cell."""
        cell = loaded.cell
        devices = {name: tag.device for name, tag in cell.tags.items()}
        devices.update({name: method.device for name, method in cell.methods.items()})
        steps = {path: step.id for step, path in iter_steps(loaded.recipe.steps) if step.id}
        return cls(devices, steps)


def _batch_log(loaded: LoadedRecipe, operator: Operator) -> Any:
    """The controller's logger, bound to the batch's recipe and operator."""
    identity = loaded.identity
    return log.bind(
        recipe=identity.name,
        version=identity.version,
        sha256=identity.sha256,
        operator=operator.name,
    )


class Controller(ActingStates):
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
        ledger: WriteLedger = NO_LEDGER,
        state: State = State.STOPPED,
    ) -> None:
        self.loaded = loaded
        #: Records each write (not the safe state's) before it is sent: the batch's journal.
        self.ledger = ledger
        self.cell: Cell = io.cell
        self.io = io
        self.operator = operator
        self.listeners: list[Callable[[Event], None]] = [listener] if listener else []
        # A service's next batch starts where the cell is (Idle after the last one's Reset).
        self.machine = PackMLMachine(self._state_changed, state=state, mode=mode)
        if (step_mode or breakpoints) and not self.machine.may_step():
            raise MachineError(f"stepping and breakpoints need Maintenance mode, not {mode}")
        self.log = _batch_log(loaded, operator)
        self._where = _Where.of(loaded)
        self.executor = Executor(
            loaded.recipe,
            parameters,
            io,
            self,
            operator,
            step_mode=step_mode,
            breakpoints=breakpoints,
        )
        self.executor.ledger = ledger
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
        #: What Resetting writes and waits for; refuse_start ends its wait for `ready`.
        self.resetting = Resetting(
            io, self.safe, self.interlocks, self.emit, lambda: self._no_start is not None, ledger
        )

    # -- events ------------------------------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Tell every listener and the log (executor events come through here too)."""
        if isinstance(event, StepEnded) and event.outcome is StepOutcome.FAILED:
            self.fault(event.error or f"{event.label} failed")
        if not isinstance(event, WaitProgress) or event.met:  # unmet waits: too many to log
            log_info(self.log, type(event).__name__, partial(_log_fields, event, self._where))
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
        if failure.action == "abort":
            self.request(Command.ABORT, cause=failure.message)
        else:
            # Unless the cell is on its way to Held already: a journal failure holds it too,
            # and the step whose intent it could not record fails at once (one Hold is enough;
            # a refused second one would only be noise on the console).
            self._spawn(self._hold_unless_held(failure.message))

    def operator_abort(self, reason: str) -> None:
        """The operator chose abort while stepping."""
        self.request(Command.ABORT, cause=reason)

    def journal_failed(self, reason: str) -> None:
        """The journal cannot be written: fail closed. Before the start the batch does not
        start; running, the cell goes Held with the safe state (and stays: see command())."""
        cause = f"journal cannot be written: {reason}"
        self.fault(cause)
        self.log.error("the journal cannot be written", reason=reason)
        self.emit(Notice(text=cause, level="error"))
        if self.before_start:
            self.refuse_start(cause)
        elif self.machine.is_legal(Command.HOLD):
            self._spawn(self._hold_unless_held(cause))
        elif self.state not in END_STATES:
            self._safe_state_later(cause)  # on its way to Held or an end already: safe now

    async def _hold_unless_held(self, cause: str) -> None:
        """Hold, unless the cell is no longer where Hold is legal by now: the step whose intent
        could not be recorded asks for the same Hold, and one of them is enough."""
        if self.machine.is_legal(Command.HOLD):
            with contextlib.suppress(MachineError, CommandBlocked):
                await self.command(Command.HOLD, cause=cause)

    # -- commands -----------------------------------------------------------------------------

    def request(
        self,
        command: Command,
        *,
        cause: str,
        choice: FailureChoice | None = None,
        user: str | None = None,
    ) -> None:
        """A command from a synchronous context (a key, a signal, a failed step): carried out
        in a task of the controller's; a refusal is an event (CommandRefused), never raised."""

        async def issue() -> None:
            with contextlib.suppress(MachineError, CommandBlocked):
                await self.command(command, cause=cause, choice=choice, user=user)

        self._spawn(issue())

    def refuse_start(self, cause: str) -> None:
        """Before the batch started: Reset and Start will not be issued (the run ends)."""
        self._no_start = cause
        self.resetting.wake.set()
        self.wake_waiters()

    @property
    def start_refused(self) -> str | None:
        """Why the batch was never started (refuse_start), or None."""
        return self._no_start if self.started_at is None else None

    @property
    def ran(self) -> bool:
        """True once the executor was started: a controller runs one batch."""
        return self._run is not None

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
        user: str | None = None,
    ) -> State:
        """An operator command (`user` gave it, when a person did); raises IllegalCommand or
        CommandBlocked, nothing changed then."""
        try:
            await vet(self, command, choice)
        except (IllegalCommand, CommandBlocked) as refused:
            blocked = isinstance(refused, CommandBlocked)
            if blocked:  # an interlock or a pending choice refused it, not a key pressed early
                self.fault(f"{command} refused: {refused}")
            self.emit(
                CommandRefused(command=command, reason=str(refused), blocked=blocked, user=user)
            )
            raise
        if command in (Command.START, Command.UNHOLD, Command.RESET) and (
            unrecorded := self.ledger.unavailable()
        ):
            # Fail closed: a batch whose writes cannot be recorded does not go on (Stop and
            # Abort, which only write the safe state, still do).
            reason = f"{command}: the journal cannot be written: {unrecorded}"
            self.fault(reason)
            self.emit(CommandRefused(command=command, reason=reason, blocked=True, user=user))
            raise CommandBlocked(reason)
        if command is Command.START and self._no_start is not None:
            # A stop request came while the interlocks were read (a signal): no Start. Not a
            # fault: the run ends as when it came before Reset.
            self.emit(CommandRefused(command=command, reason=self._no_start, user=user))
            raise CommandBlocked(self._no_start)
        # No await between the checks above and the change: nothing can move the state.
        if command is Command.UNHOLD:
            self._choice = choice
        await self._apply(command, cause)
        return self.state

    async def _apply(self, command: Command, cause: str, interlock: str | None = None) -> None:
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
        target = self.machine.command(command, cause, interlock)
        self._enter(target)

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

    async def run_batch(
        self,
        *,
        stop_when_held: Callable[[], bool],
        before_start: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> BatchEnded:
        """Reset, Start, and wait for Complete, Stopped or Aborted, or for Held when
        `stop_when_held()` says nobody will Unhold; returns the BatchEnded event it emitted.
        `before_start()` is awaited once Idle after Resetting, just before Start (the run reads
        its parts counter there)."""
        begun = time.monotonic()
        try:
            if self._no_start is None:
                await self.command(Command.RESET, cause="run")
                await self.wait_for({State.IDLE, State.STOPPED, State.ABORTED, State.HELD})
            if before_start is not None and self._no_start is None and self.state is State.IDLE:
                await before_start()
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

    async def resume_batch(
        self, point: ResumePoint, *, stop_when_held: Callable[[], bool]
    ) -> BatchEnded:
        """Take a crashed batch up again (cellctl.control.resume): Held from the first instant
        (never running), the safe state written, the executor standing at `point` with Unhold's
        question asked when the step in progress needs one; then as run_batch: wait for an end,
        or for Held when `stop_when_held()`. Returns the BatchEnded event it emitted."""
        if self.ran or self.state is not State.STOPPED:
            raise MachineError(f"resume: this controller ran already ({self.state})")
        begun = time.monotonic()
        cause = f"resumed after the controller stopped mid-batch ({point.batch})"
        self.machine = PackMLMachine(self._state_changed, state=State.HELD, mode=self.mode_now)
        self.emit(StateChanged(source=State.STOPPED, target=State.HELD, command=None, cause=cause))
        self.started_at, self._started_clock = time.time(), begun
        self._stop_cause = cause
        resuming = self.executor.resume_at(point)
        await self.safe.write("Resuming")  # before anything of the recipe
        self.executor.pause(PauseReason.HOLD)
        self._run = asyncio.ensure_future(self.executor.run())
        reached = asyncio.ensure_future(resuming.reached.wait())
        try:
            await asyncio.wait({self._run, reached}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            reached.cancel()
        if self._run.done() and not self._run.cancelled() and self._run.exception() is not None:
            error = self._run.exception()
            self.log.error("the executor failed while resuming", exc_info=error)
            self.fault(f"executor: internal error: {error}")
        self.emit(Notice(text=f"resumed {point.batch} Held {point.describe(self.loaded.recipe)}"))
        await self._until_ended(stop_when_held)
        failed = self.machine.state is not State.COMPLETE  # (not narrowed by the check above)
        self.cause = self.cause or self.unanswered() or self._resume_question()
        # The batch's whole duration, from its first start (another process's: wall clock).
        first = point.started_at
        ended = BatchEnded(
            state=self.state,
            duration=time.monotonic() - begun if first is None else time.time() - first,
            steps_done=self.executor.steps_done,
            faults=tuple(self.faults),
            cause=self.cause or (self._stop_cause if failed else None),
        )
        self.emit(ended)
        return ended

    @property
    def mode_now(self) -> Mode:
        """The unit mode now."""
        return self.machine.mode

    def _resume_question(self) -> str | None:
        """Held on the question a resumed step asks: why a batch that ends so ends."""
        question = self.executor.failure
        if self.state is not State.HELD or question is None:
            return None
        return f"Held: {question.message}; {question.choices} needs an operator"
