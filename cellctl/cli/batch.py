"""`cellctl run` and `cellctl demo`: check everything, connect, run one batch in a live view (or
one line per event), take the operator's keys and signals, print the summary, exit code.

Nothing touches a device before every input is valid; nothing is written when a device cannot
be reached before the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.live import Live

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.cell.tags import tag_units
from cellctl.cli.keys import TerminalKeys, TerminalOperator
from cellctl.cli.validate import open_recipe
from cellctl.cli.views.run import FittedView, RunModel, event_line, summary_lines
from cellctl.control.controller import CommandBlocked, Controller
from cellctl.control.events import (
    BatchEnded,
    Event,
    Notice,
    StateChanged,
    StepStarted,
    TagWritten,
    TripCleared,
    UnholdAsks,
)
from cellctl.control.executor import StepFailure
from cellctl.control.interlocks import interlock_tags
from cellctl.control.machine import Command, IllegalCommand, Mode, State
from cellctl.control.operator import (
    FailureChoice,
    Operator,
    ScriptedOperator,
    check_answered,
    parse_answers,
)
from cellctl.durations import format_duration
from cellctl.errors import BadValue, CellctlError, did_you_mean
from cellctl.io.drivers import ConnectReport, DevicesUnreachable, build_drivers, devices_for_tags
from cellctl.io.heartbeat import Heartbeat
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe, step_ids
from cellctl.recipe.plan import make_plan
from drivers.base import Value
from drivers.tasks import cancel_and_wait

if TYPE_CHECKING:  # imported when --sim is given: it loads every simulator
    from cellctl.io.sim import CellSimulator

#: The key hint of the live view after `u` in Held with a failed step (BatchRun.keys_now
#: builds the others from what the key loop and the machine accept now).
HINT_CHOICE = "the step failed: r retry it · s skip it · any other key: back"
#: How the hint names each command a key asks for.
_DOES = {
    Command.HOLD: "hold",
    Command.UNHOLD: "unhold",
    Command.SUSPEND: "suspend",
    Command.UNSUSPEND: "unsuspend",
    Command.STOP: "stop",
    Command.ABORT: "abort",
}
#: How many times a second the live view is drawn.
REDRAWS = 8


@dataclass
class RunOptions:
    """Everything `cellctl run` was asked to do."""

    recipe: Path
    cell: Path | None = None
    params: list[str] = field(default_factory=list)
    sim: bool = False
    speed: float = 1.0
    step: bool = False
    breaks: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    operator: str | None = None
    interactive: bool = False
    #: The demo's plant fault (e.g. "light-curtain"), raised mid-batch and cleared again.
    fault: str | None = None
    #: Seconds the run stays, once the batch ended, for the safe state to be confirmed.
    safe_wait: float = 300.0


@dataclass
class Prepared:
    """A run whose inputs were all checked: nothing has touched a device yet."""

    loaded: LoadedRecipe
    parameters: dict[str, Value]
    operator: Operator | None
    devices: list[str]
    tags: list[str]


log = logging.getLogger("cellctl.cli.batch")


class SafeStateUnconfirmed(CellctlError):
    """The batch ended, but its safe state is not confirmed on every device (exit 5)."""

    exit_code = exitcodes.SAFE_STATE_UNCONFIRMED

    def __init__(self, unconfirmed: dict[str, str], why: str) -> None:
        lines = [f"safe state not confirmed ({why}); the cell may not be safe:"]
        lines += [f"  {tag}: {reason}" for tag, reason in unconfirmed.items()]
        super().__init__("\n".join(lines))
        self.unconfirmed = unconfirmed


class Interrupted(CellctlError):
    """Ctrl-C or SIGTERM before the batch started."""

    exit_code = exitcodes.INTERRUPTED


class NeedsTerminal(CellctlError):
    """Stepping and breakpoints need somebody at a terminal."""


def prepare(options: RunOptions) -> Prepared:
    """Load and check the recipe, cell, parameters, answers and breakpoints; raises CellctlError."""
    loaded = open_recipe(options.recipe, options.cell)
    recipe, cell = loaded.recipe, loaded.cell
    plan = make_plan(loaded, options.params)  # checks every -p
    parameters = {p.name: p.value for p in plan.parameters}
    answers = parse_answers(recipe, options.answers)
    ids = step_ids(recipe)
    for wanted in options.breaks:
        if wanted not in ids:
            raise BadValue(
                f"--break {wanted}: recipe {recipe.recipe} has no step {wanted!r}"
                f"{did_you_mean(wanted, ids)}"
            )
    if not options.interactive:
        if options.step or options.breaks:
            raise NeedsTerminal(
                "--step and --break wait for keys at a terminal; stdin/stdout is not one"
            )
        check_answered(recipe, answers)
    tags = list(
        dict.fromkeys(
            [
                *plan.reads,
                *plan.writes,
                *interlock_tags(cell),
                *cell.safe_state,
                *cell.ready_tags,
            ]
        )
    )
    # The devices of those tags (`ready`'s included: every batch prepares the cell), of
    # Resetting's values and of the heartbeat (their tags are written, never polled), and those
    # the recipe only calls methods on.
    written = [*cell.reset_values, *cell.heartbeat_tags]
    used = set(devices_for_tags(cell, [*tags, *written])) | set(plan.devices)
    devices = [name for name in cell.devices if name in used]
    operator = None if options.interactive else ScriptedOperator(answers, options.operator)
    return Prepared(loaded, parameters, operator, devices, tags)


@contextlib.asynccontextmanager
async def _served(
    cell: Cell, options: RunOptions
) -> AsyncIterator[tuple[Cell, CellSimulator | None]]:
    """The cell to connect to: served by in-process simulators with --sim, else as written."""
    if not options.sim:
        yield cell, None
        return
    from cellctl.io.sim import CellSimulator

    simulator = CellSimulator(cell, speed=options.speed)
    if options.fault is not None:
        _fault_of(simulator, options.fault)  # a fault no model has: refused before a port opens
    async with simulator:
        yield simulator.served_cell, simulator


async def _all_answer(io: TagIO, tags: list[str]) -> None:
    """Read every tag once before anything is written: a device that accepted the connection
    but does not answer (or refuses a tag) ends the run with exit 2, nothing written."""
    failed: dict[str, str] = {}
    for value in (await io.read(tags)).values():
        if value.error is not None or value.value is None:
            failed.setdefault(value.device, value.error or f"{value.tag}: no value")
    if failed:
        raise DevicesUnreachable("\n".join(failed.values()))


class BatchRun:
    """One `cellctl run`: the controller, its view, the operator's keys and signals."""

    def __init__(self, options: RunOptions, prepared: Prepared, out: Console) -> None:
        self.options = options
        self.prepared = prepared
        self.out = out
        self.model: RunModel | None = None
        self.controller: Controller | None = None
        #: The operator at the terminal, when there is one (it takes every key while it waits).
        self.terminal: TerminalOperator | None = None
        self.interrupts = 0
        self.choosing = False
        #: The terminal's input ended: nobody can Unhold any more.
        self.keys_gone = False
        #: True while the demo's fault script will Unhold by itself.
        self.demo_busy = False

    def _print_event(self, event: Event) -> None:
        line = event_line(event)
        if line is not None and not self.options.interactive:
            self.out.print(line, markup=False)

    async def run(self) -> int:
        """Connect, run the batch, print the summary; the exit code."""
        prepared = self.prepared
        loaded = prepared.loaded
        # Until the controller takes the signals over, Ctrl-C or SIGTERM ends the run at once:
        # nothing has been written yet.
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        assert me is not None
        interrupted: list[bool] = []

        def interrupt() -> None:
            if not interrupted:  # once: a second Ctrl-C must not cancel the cleanup too
                interrupted.append(True)
                me.cancel()

        # The handlers from before (the console script's: SIGTERM as Ctrl-C) come back after the
        # run: the loop's removal would leave SIGTERM killing the process during the cleanup.
        before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
        for signum in before:
            loop.add_signal_handler(signum, interrupt)
        try:
            async with _served(loaded.cell, self.options) as (cell, simulator):
                drivers = build_drivers(cell, prepared.devices)
                io = TagIO(cell, drivers, prepared.tags)
                with ConnectReport() as report:  # a slow connect says whom it tries to reach
                    await io.connect(report=report)  # DevicesUnreachable: nothing was written
                try:
                    await _all_answer(
                        io, [*prepared.tags, *cell.reset_values, *cell.heartbeat_tags]
                    )
                    # The heartbeat is the only thing written before Start; it lasts the run.
                    async with Heartbeat(io, cell.heartbeat):
                        return await self._run_connected(io, simulator)
                finally:
                    await io.close()
        except asyncio.CancelledError:
            # Our own signal before the controller took them over (not a cancel from outside).
            if interrupted and self.controller is None and me.uncancel() == 0:
                raise Interrupted(
                    "interrupted before the batch started: nothing was written"
                ) from None
            raise
        finally:
            for signum, handler in before.items():
                loop.remove_signal_handler(signum)
                if handler is not None:
                    signal.signal(signum, handler)

    async def _run_connected(self, io: TagIO, simulator: CellSimulator | None) -> int:
        prepared, options = self.prepared, self.options
        loaded = prepared.loaded
        self.model = model = RunModel(
            loaded.recipe,
            loaded.identity,
            loaded.cell.cell,
            lambda: [v for t in prepared.tags if (v := io.board.latest(t)) is not None],
            parameters=prepared.parameters,
            units=tag_units(loaded.cell),
        )
        operator: Operator
        if prepared.operator is not None:
            operator = prepared.operator
        else:
            operator = self.terminal = TerminalOperator(model, options.operator)
        stepping = options.step or bool(options.breaks)
        controller = Controller(
            loaded,
            prepared.parameters,
            io,
            operator,
            mode=Mode.MAINTENANCE if stepping else Mode.PRODUCTION,
            step_mode=options.step,
            breakpoints=options.breaks,
            comm_devices=prepared.devices,
        )
        self.controller = controller
        controller.listeners.append(model.apply)
        controller.listeners.append(self._print_event)
        controller.listeners.append(self._state_changed)
        if stepping:
            self.out.print(
                "Maintenance mode: "
                + ("stepping through every step" if options.step else "")
                + (" and " if options.step and options.breaks else "")
                + (f"breakpoints at {', '.join(options.breaks)}" if options.breaks else ""),
                markup=False,
            )
        if not options.interactive:
            self.out.print(f"run {loaded.identity} on cell {loaded.cell.cell}", markup=False)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self._on_sigint)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        extras: list[asyncio.Task[None]] = []
        keys: TerminalKeys | None = None
        fault = _fault_of(simulator, options.fault) if simulator and options.fault else None
        # Signals from now on go to the controller (hold, abort, stop).

        async def batch() -> BatchEnded:
            if options.interactive:
                ended = await controller.run_batch(stop_when_held=lambda: self.keys_gone)
            else:
                # Nobody can Unhold without a terminal, except the demo's own fault script.
                ended = await controller.run_batch(stop_when_held=lambda: not self.demo_busy)
            # One last fresh read, so the final view shows the values the batch left behind.
            for value in (await io.read(prepared.tags)).values():
                io.board.update(value)
            return ended

        try:
            await controller.open()
            if options.interactive:
                keys = TerminalKeys(sys.stdin.fileno())
                keys.open()
                extras.append(
                    self._supervised(self._keys(keys, operator), "the key reader", self._no_keys)
                )
            if fault is not None and simulator is not None:
                extras.append(
                    self._supervised(
                        self._demo_fault(simulator, *fault), "the demo's fault", self._no_demo
                    )
                )
            if options.interactive:
                # The view fits the terminal by itself (FittedView); "crop" only guards a
                # terminal resized between a render and its drawing. Drawn by a task on this
                # loop, not rich's refresh thread: see _redraw.
                model.hint = self.keys_now()  # the first frame's, drawn as the view starts
                with Live(
                    FittedView(model),
                    console=self.out,
                    auto_refresh=False,
                    transient=False,
                    vertical_overflow="crop",
                ) as live:
                    extras.append(
                        self._supervised(self._redraw(live), "the live view", self._no_keys)
                    )
                    ended = await batch()
                    model.hint = ""  # the last frame, drawn as the view stops: no keys act now
            else:
                ended = await batch()
            # The batch has ended: no key may command it while its safe state is confirmed.
            await _cancelled(extras)
            unconfirmed, why = await self._confirm_safe_state(controller)
            asked = controller.unanswered() if ended.state is State.HELD else None
            if asked is not None and ended.cause is not None and asked not in ended.cause:
                # Asked once the safe state was confirmed (a device lost while holding): the
                # batch waits for that answer now, as well as for the hold's own cause. Both
                # go on record, so that the log says what the summary says.
                ended = replace(ended, cause=f"{ended.cause}; then {asked}")
                controller.emit(Notice(text=f"the batch ended Held: {ended.cause}"))
        finally:
            # The batch is over: a signal now must not cut the cleanup (bounded) short.
            loop.add_signal_handler(signal.SIGINT, lambda: None)
            loop.add_signal_handler(signal.SIGTERM, lambda: None)
            await _cancelled(extras)
            if keys is not None:
                keys.close()
            await controller.close()
        # On a terminal the summary wraps at words (a person reads it); off one, a line stays
        # one line (a script reads it).
        for line in summary_lines(model, ended):
            self.out.print(line, markup=False, soft_wrap=not self.out.is_terminal)
        if unconfirmed:
            raise SafeStateUnconfirmed(unconfirmed, why)
        if ended.state is State.COMPLETE:
            return exitcodes.OK
        if controller.start_refused is not None:
            return exitcodes.INTERRUPTED  # a signal before the start: nothing was written
        return exitcodes.BATCH_NOT_COMPLETE

    async def _confirm_safe_state(self, controller: Controller) -> tuple[dict[str, str], str]:
        """Stay until every device confirmed the safe state (read back), at most --safe-wait;
        SIGTERM or Ctrl-C gives up. Returns what is unconfirmed and why the wait ended."""
        loop = asyncio.get_running_loop()
        give_up = asyncio.Event()
        signals: list[str] = []

        def stop_waiting(name: str) -> None:
            signals.append(name)
            give_up.set()

        loop.add_signal_handler(signal.SIGINT, stop_waiting, "SIGINT")
        loop.add_signal_handler(signal.SIGTERM, stop_waiting, "SIGTERM")
        limit = self.options.safe_wait

        def waiting(tags: list[str]) -> None:
            self.out.print(
                f"waiting up to {format_duration(limit)} for the safe state of "
                f"{', '.join(tags)} to be confirmed; SIGTERM or Ctrl-C gives up",
                markup=False,
            )

        unconfirmed = await controller.safe.confirm(limit, give_up, waiting=waiting)
        why = f"given up on {signals[0]}" if signals else f"not within {format_duration(limit)}"
        return unconfirmed, why

    def _supervised(
        self, work: Coroutine[Any, Any, None], what: str, gone: Callable[[], None]
    ) -> asyncio.Task[None]:
        """A task of the run whose failure is logged and recorded, never unseen; `gone()` then
        says whose hands are gone (a batch that waits for them in Held ends, not hangs)."""
        task = asyncio.ensure_future(work)

        def ended(task: asyncio.Task[None]) -> None:
            if task.cancelled() or task.exception() is None:
                return
            error = task.exception()
            log.error("%s failed", what, exc_info=error)
            gone()
            if self.controller is not None:
                self.controller.fault(f"{what} failed: {type(error).__name__}: {error}")
                self.controller.wake_waiters()

        task.add_done_callback(ended)
        return task

    def _no_keys(self) -> None:
        self.keys_gone = True

    def _no_demo(self) -> None:
        self.demo_busy = False

    async def _redraw(self, live: Live) -> None:
        """Draw the live view REDRAWS times a second, with the keys that act now.

        On this loop, where the controller changes the model: a frame never sees the model
        half-changed, and a frame that fails ends this task, which is supervised (reported),
        where rich's own refresh thread would die unseen and leave the view frozen.
        """
        assert self.model is not None
        while True:
            self.model.hint = self.keys_now()
            live.refresh()
            await asyncio.sleep(1 / REDRAWS)

    # -- the operator's hands ---------------------------------------------------------------

    def _state_changed(self, event: Event) -> None:
        if self.model is None:
            return
        if isinstance(event, UnholdAsks) and self.controller is not None:
            # Asked while held, after Held was entered (a lost device's safe state confirmed
            # later undid the step): the question and its keys show now.
            self._show_question(self.controller.state)
            return
        if not isinstance(event, StateChanged):
            return
        self.choosing = False
        self._show_question(event.target)
        if event.target is State.EXECUTE:
            self.interrupts = 0  # running again: the next Ctrl-C holds again

    def _show_question(self, state: State) -> None:
        """Held with a step whose writes the safe state undid: the question the executor asks
        first (the one an answer goes to) shows, with its keys; otherwise none."""
        assert self.model is not None
        question = self._undone() if state is State.HELD else None
        self.model.question = question.message if question is not None else None

    def keys_now(self) -> str:
        """The live view's hint: the keys that act now, as the key loop (_keys) and Ctrl-C
        (_on_sigint) take them, each only where the machine allows its command now."""
        controller, model = self.controller, self.model
        if controller is None or model is None or model.ended is not None:
            return ""
        if controller.before_start:
            return "Ctrl-C cancel the batch"  # _on_sigint: the batch is not started
        legal = controller.machine.is_legal
        acts: dict[str, list[str]] = {}

        def add(key: str, command: Command) -> None:
            if legal(command):
                acts.setdefault(_DOES[command], []).append(key)

        # A prompt or a step pause takes every key typed (their own rows name them).
        typed = self.terminal is None or not self.terminal.waiting
        if typed and controller.state is State.HELD:
            if self._undone() is not None:
                return ""  # the question's own row names its keys
            if self.choosing:
                return HINT_CHOICE
            add("u", Command.UNHOLD)
            add("a", Command.ABORT)  # as Ctrl-C does in Held
        else:
            on_sigint = self._sigint_command(controller)
            add("Ctrl-C", on_sigint)
            if typed:
                add("h", Command.HOLD)
                add("p", Command.SUSPEND)
                add("p", Command.UNSUSPEND)
            if on_sigint is not Command.ABORT:
                add("Ctrl-C twice", Command.ABORT)
        return " · ".join(f"{' or '.join(keys)} {does}" for does, keys in acts.items())

    def _sigint_command(self, controller: Controller) -> Command:
        """What the next Ctrl-C asks for: Abort after an earlier one or in Held, else Hold
        where it is legal, else Stop."""
        if self.interrupts >= 1 or controller.state is State.HELD:
            return Command.ABORT
        return Command.HOLD if controller.machine.is_legal(Command.HOLD) else Command.STOP

    def _undone(self) -> StepFailure | None:
        """The question Unhold asks now: a held step whose writes the safe state undid."""
        failure = self.controller.executor.failure if self.controller is not None else None
        return failure if failure is not None and failure.undone else None

    def _command(self, command: Command, how: str, choice: FailureChoice | None = None) -> None:
        controller = self.controller
        if controller is None:
            return
        who = self.options.operator or "the operator"
        # A refusal is an event (CommandRefused) that the view shows.
        controller.request(command, cause=f"{who} ({how})", choice=choice)

    def _on_sigint(self) -> None:
        controller = self.controller
        if controller is None:
            return
        if controller.before_start:
            controller.refuse_start("SIGINT before the batch started")  # nothing written
            return
        command = self._sigint_command(controller)
        self.interrupts += 1
        self._command(command, "Ctrl-C" if self.options.interactive else "SIGINT")

    def _on_sigterm(self) -> None:
        controller = self.controller
        if controller is not None and controller.before_start:
            controller.refuse_start("SIGTERM before the batch started")  # nothing written
            return
        self._command(Command.STOP, "SIGTERM")

    async def _keys(self, keys: TerminalKeys, operator: Operator) -> None:
        controller = self.controller
        assert controller is not None and self.model is not None
        while True:
            key = await keys.get()
            if key == "":  # the terminal is gone: nobody can Unhold any more
                self.keys_gone = True
                controller.wake_waiters()
                return
            if isinstance(operator, TerminalOperator) and operator.waiting:
                operator.feed(key)
                continue
            state = controller.state
            if state is State.HELD and self._undone() is not None and key in ("r", "s", "u"):
                # Asked at once: r re-runs the step from its start, s skips it (a aborts).
                if key != "u":
                    choice = FailureChoice.RETRY if key == "r" else FailureChoice.SKIP
                    self._command(Command.UNHOLD, f"key {key}", choice)
            elif self.choosing:
                self.choosing = False
                if key in ("r", "s"):
                    choice = FailureChoice.RETRY if key == "r" else FailureChoice.SKIP
                    self._command(Command.UNHOLD, f"key u, then {key}", choice)
            elif key == "h":
                self._command(Command.HOLD, "key h")
            elif key == "p":  # an external cause (starved, blocked): pause, write nothing
                suspended = state is State.SUSPENDED
                self._command(Command.UNSUSPEND if suspended else Command.SUSPEND, "key p")
            elif key == "u" and state is State.HELD:
                if controller.executor.failure is not None:
                    self.choosing = True
                else:
                    self._command(Command.UNHOLD, "key u")
            elif key == "a" and state is State.HELD:
                self._command(Command.ABORT, "key a")

    async def _demo_fault(self, simulator: CellSimulator, device: str, name: str) -> None:
        """The demo's fault: raise it as the second round begins, clear it once Held, then
        Unhold (re-running the held step when the safe state undid its writes: the demo's
        choice). A round that begins with a set step has it raised once that step's first
        write is confirmed: the hold lands after that write, never just before it."""
        controller = self.controller
        assert controller is not None
        second_round = asyncio.Event()
        cleared = asyncio.Event()
        first: list[StepStarted] = []  # the second round's first step

        def watch(event: Event) -> None:
            if isinstance(event, StepStarted) and event.round == 2:
                if first or event.kind != "set":
                    second_round.set()  # a step that does not write, or the next one
                else:
                    first.append(event)
            elif isinstance(event, TagWritten) and first and event.path == first[0].path:
                second_round.set()
            if isinstance(event, TripCleared) and not controller.interlocks.active:
                cleared.set()  # every trip is gone, not only one of them

        controller.listeners.append(watch)
        try:
            await second_round.wait()
            self.demo_busy = True  # this hold is the demo's own: it unholds by itself
            simulator.fault(device, name, True)
            await controller.wait_for({State.HELD, State.STOPPED, State.ABORTED})
            if controller.state is not State.HELD:
                return
            # Let the people watching see the hold and the safe state before it is cleared.
            await asyncio.sleep(1.5)
            simulator.fault(device, name, False)
            await cleared.wait()
            cause = f"demo: {device} {name} restored"
            choice = None
            if (question := controller.executor.failure) is not None and question.undone:
                # The demo plays the operator: the safe state undid the step, so it runs again.
                choice = FailureChoice.RETRY
                cause += f"; the demo's choice: re-run ({question.message})"
            with contextlib.suppress(IllegalCommand, CommandBlocked):
                await controller.command(Command.UNHOLD, cause=cause, choice=choice)
        finally:
            self.demo_busy = False
            controller.wake_waiters()  # a run_batch waiting in Held looks again


async def _cancelled(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel the tasks and wait until they have ended."""
    await cancel_and_wait(tasks)


def _fault_of(simulator: CellSimulator, fault: str) -> tuple[str, str]:
    """(device, fault) for 'device:fault' or a fault name that one plant model has."""
    known = {(d, f) for d, m in simulator.models.items() for f in m.faults()}
    device, _, name = fault.rpartition(":")
    matches = [(d, f) for d, f in known if f == name and device in ("", d)]
    if len(matches) != 1:
        names = ", ".join(sorted(f"{d}:{f}" for d, f in known))
        raise BadValue(f"--fault {fault}: no single plant model has it; known: {names}")
    return matches[0]


def run_command(options: RunOptions, out: Console) -> Callable[[], Coroutine[Any, Any, int]]:
    """The coroutine factory of `cellctl run` (the CLI runs it with its error handling)."""
    prepared = prepare(options)
    return lambda: BatchRun(options, prepared, out).run()
