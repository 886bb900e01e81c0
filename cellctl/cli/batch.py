"""`cellctl run` and `cellctl demo`: check everything (cellctl.cli.prepare), connect, run one
batch in a live view (or one line per event), take the operator's keys and signals
(cellctl.cli.hands), print the summary, exit code.

Nothing touches a device before every input is valid; nothing is written when a device cannot
be reached before the start.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from rich.console import Console
from rich.live import Live

from cellctl import exitcodes, heap
from cellctl.cell.tags import tag_units
from cellctl.cli.batch_record import (
    close_record,
    count_start,
    end_record,
    hold_on_failure,
    open_record,
    parts_count,
)
from cellctl.cli.consoles import FramedLines
from cellctl.cli.demo_fault import DemoFault
from cellctl.cli.hands import OperatorHands
from cellctl.cli.keys import TerminalKeys, TerminalOperator
from cellctl.cli.prepare import (
    NeedsTerminal,
    Prepared,
    RunOptions,
    all_answer,
    fault_of,
    prepare,
    served,
)
from cellctl.cli.views.run import FittedView, RunModel, event_line, summary_lines
from cellctl.cli.views.summary import COMMAND_LINES, BatchIdentity, record_lines
from cellctl.control.commands import Commands
from cellctl.control.controller import Controller
from cellctl.control.events import BatchEnded, Event, Notice, StateChanged
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.journal.rows import JournalRow
from cellctl.control.journal.store import JournalStore, JournalUnavailable, SqliteStore
from cellctl.control.ledger import NO_LEDGER
from cellctl.control.machine import Mode, State
from cellctl.control.operator import Operator
from cellctl.control.parts import PartsCount, read_count
from cellctl.durations import format_duration
from cellctl.errors import CellctlError
from cellctl.io.celllock import CellLock
from cellctl.io.drivers import ConnectReport, build_drivers
from cellctl.io.heartbeat import Heartbeat
from cellctl.io.session import TagIO
from drivers.tasks import cancel_and_wait

if TYPE_CHECKING:  # imported when --sim is given: it loads every simulator
    from cellctl.cell import Cell
    from cellctl.io.sim import CellSimulator
    from drivers.base import Driver

__all__ = [
    "BatchRun",
    "Interrupted",
    "NeedsTerminal",
    "Prepared",
    "RunOptions",
    "SafeStateUnconfirmed",
    "prepare",
    "run_command",
]

#: How many times a second the live view is drawn.
REDRAWS = 8

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


class BatchRun:
    """One `cellctl run`: the controller, its view, the operator's keys and signals."""

    def __init__(self, options: RunOptions, prepared: Prepared, out: Console) -> None:
        self.options = options
        self.prepared = prepared
        self.out = out
        self.model: RunModel | None = None
        self.controller: Controller | None = None
        #: The keys and signals, as commands (once the controller is made).
        self.hands: OperatorHands | None = None
        #: The demo's fault script, when --fault was given with --sim.
        self.demo: DemoFault | None = None
        #: The terminal's input ended: nobody can Unhold any more.
        self.keys_gone = False
        #: The event lines for a pipe or a file (None on a terminal: rich prints them).
        self.lines: FramedLines | None = None
        #: The batch's record (once its first row is on disk), and what the summary names.
        self.recorder: BatchRecorder | None = None
        self.identity: BatchIdentity | None = None
        #: Why the journal could not be written mid-batch (exit 6), or None.
        self.journal_failure: str | None = None
        #: The parts made, when the recipe names a counter (read before Start and at the end).
        self.parts: PartsCount | None = parts_count(prepared)
        if not options.interactive and not out.is_terminal:
            self.lines = FramedLines(out)
            self.lines.failed = self._lines_failed

    def _print_event(self, event: Event) -> None:
        if self.options.interactive:
            return  # the live view shows the events
        line = event_line(event)
        if line is None:
            return
        if self.lines is None:
            self.out.print(line, markup=False)
            return
        # Many lines a second are written without a flush each; a state change is seen at once.
        self.lines.write(line)
        if isinstance(event, StateChanged):
            self.lines.flush()

    def _lines_failed(self, error: Exception) -> None:
        log.error("writing the batch's event lines failed", exc_info=error)

    def _end_lines(self) -> None:
        """Flush the event lines: the run ends (on any path) with every line written."""
        if self.lines is not None:
            try:
                self.lines.flush()
            except Exception as error:  # said in the log; the run's own outcome stands
                self._lines_failed(error)

    async def run(self) -> int:
        """Open the batch's record (its first row on disk before any device is touched: else
        JournalUnavailable, exit 6), connect, run the batch, print the summary, close the
        record; the exit code."""
        recorder = self._open_record()
        try:
            # Every log line of the batch names it (the controller's tasks inherit it).
            with structlog.contextvars.bound_contextvars(batch=recorder.batch):
                code = await self._run_devices()
        except CellctlError as error:
            await self._close_record(recorder, error.exit_code)  # its own code stands
            raise
        except BaseException:
            await self._close_record(recorder, exitcodes.INTERNAL_ERROR)
            raise
        problem = await self._close_record(recorder, code)
        if problem is not None and code != exitcodes.JOURNAL:
            raise problem
        if problem is not None:  # the summary said the journal failed; this is what it lost
            self.out.print(f"journal: {problem.reason}", markup=False, soft_wrap=True)
        return code

    def _open_record(self) -> BatchRecorder:
        """The journal opened and the batch_started row on disk; JournalUnavailable naming
        the path and why when it cannot be (nothing else has happened yet)."""
        self.recorder, self.identity = open_record(
            self.options, self.prepared, self._mode(), self._open_store, self._journal_failed
        )
        return self.recorder

    def _open_store(self, path: Path) -> JournalStore:
        """The journal at `path` (created when missing); JournalUnavailable when it cannot be."""
        return SqliteStore(path)

    def _journal_failed(self, reason: str) -> None:
        """The writer's on_failure: the batch fails closed (Held with the safe state)."""
        if self.journal_failure is None:
            self.journal_failure = reason
        hold_on_failure(self.controller, self.recorder, reason)

    async def _close_record(self, recorder: BatchRecorder, code: int) -> JournalUnavailable | None:
        """Write batch_ended when the summary did not (the batch never ran), then write what
        is queued and close the journal; what could not be written, or None."""
        return await close_record(recorder, self.controller, code, self.parts)

    def _mode(self) -> Mode:
        """Maintenance when stepping or at breakpoints, else Production."""
        stepping = self.options.step or bool(self.options.breaks)
        return Mode.MAINTENANCE if stepping else Mode.PRODUCTION

    async def _run_devices(self) -> int:
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
        identity = self.identity
        assert identity is not None  # run() opened the record before any device
        try:
            # One batch per cell: the locks of the devices it serves (--sim: the simulators'),
            # held to the end of the run, taken before any is connected; CellBusy (exit 7)
            # names the batch that holds them, whoever runs it (cellctl.io.celllock).
            async with (
                served(loaded.cell, self.options) as (cell, simulator),
                CellLock(
                    cell, batch=identity.batch, operator=identity.operator, journal=identity.journal
                ),
            ):
                drivers = self._drivers(cell)
                io = TagIO(cell, drivers, prepared.tags)
                with ConnectReport() as report:  # a slow connect says whom it tries to reach
                    await io.connect(report=report)  # DevicesUnreachable: nothing was written
                try:
                    await all_answer(io, [*prepared.tags, *cell.reset_values, *cell.heartbeat_tags])
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
            self._end_lines()
            for signum, handler in before.items():
                loop.remove_signal_handler(signum)
                if handler is not None:
                    signal.signal(signum, handler)

    def _drivers(self, cell: Cell) -> dict[str, Driver]:
        """The drivers of the devices the batch uses (a test's rig gives its own)."""
        return build_drivers(cell, self.prepared.devices)

    def _make_controller(self, io: TagIO, simulator: CellSimulator | None) -> Controller:
        """The controller of the batch, with the view's model, the operator's hands and the
        demo's fault script listening to it."""
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
        terminal = None
        if prepared.operator is not None:
            operator = prepared.operator
        else:
            operator = terminal = TerminalOperator(model, options.operator)
        recorder = self.recorder
        controller = Controller(
            loaded,
            prepared.parameters,
            io,
            operator,
            mode=self._mode(),
            step_mode=options.step,
            breakpoints=options.breaks,
            comm_devices=prepared.devices,
            ledger=NO_LEDGER if recorder is None else recorder,
        )
        self.controller = controller
        commands = Commands(controller)  # the keys', the signals' and the demo's one way in
        if recorder is not None:  # first: the record queues each event before it is shown
            controller.listeners.append(recorder.event)
            commands.heard.append(recorder.command)
        if self.journal_failure is not None:  # failed before the controller was made
            controller.journal_failed(self.journal_failure)
        hands = OperatorHands(
            commands, model, terminal, options.operator, interactive=options.interactive
        )
        self.hands = hands
        controller.listeners.append(model.apply)
        controller.listeners.append(self._print_event)
        controller.listeners.append(hands.state_changed)
        if simulator is not None and options.fault is not None:
            self.demo = DemoFault(commands, simulator, *fault_of(simulator, options.fault))
        return controller

    def _announce(self) -> None:
        """Say what runs how: Maintenance mode's stepping, and (off a terminal) the recipe."""
        options, loaded = self.options, self.prepared.loaded
        if options.step or options.breaks:
            self.out.print(
                "Maintenance mode: "
                + ("stepping through every step" if options.step else "")
                + (" and " if options.step and options.breaks else "")
                + (f"breakpoints at {', '.join(options.breaks)}" if options.breaks else ""),
                markup=False,
            )
        if not options.interactive:
            self.out.print(f"run {loaded.identity} on cell {loaded.cell.cell}", markup=False)

    async def _run_connected(self, io: TagIO, simulator: CellSimulator | None) -> int:
        controller = self._make_controller(io, simulator)
        hands = self.hands
        assert hands is not None
        self._announce()
        # Signals from now on go to the controller (hold, abort, stop).
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, hands.on_sigint)
        loop.add_signal_handler(signal.SIGTERM, hands.on_sigterm)
        extras: list[asyncio.Task[None]] = []
        keys: TerminalKeys | None = None
        try:
            await controller.open()
            heap.settle()  # connected and subscribed: what lives through the batch is made
            if self.options.interactive:
                keys = TerminalKeys(sys.stdin.fileno())
                keys.open()
                extras.append(
                    self._supervised(self._read_keys(keys), "the key reader", self._no_keys)
                )
            if self.demo is not None:
                extras.append(self._supervised(self.demo.run(), "the demo's fault", self._no_demo))
            ended = await self._batch_shown(io, extras)
            # The batch has ended: no key may command it while its safe state is confirmed.
            await cancel_and_wait(extras)
            unconfirmed, why = await self._confirm_safe_state(controller)
            ended = self._asked_later(controller, ended)
        finally:
            # The batch is over: a signal now must not cut the cleanup (bounded) short.
            loop.add_signal_handler(signal.SIGINT, lambda: None)
            loop.add_signal_handler(signal.SIGTERM, lambda: None)
            await cancel_and_wait(extras)
            if keys is not None:
                keys.close()
            await controller.close()
        return await self._summary(controller, ended, unconfirmed, why)

    async def _batch(self, io: TagIO) -> BatchEnded:
        """Run the batch to its end, then read once more, so that the final view shows the
        values the batch left behind."""
        controller = self.controller
        assert controller is not None
        if self.options.interactive:
            ended = await self._drive(controller, lambda: self.keys_gone)
        else:
            # Nobody can Unhold without a terminal, except the demo's own fault script.
            ended = await self._drive(controller, lambda: not self._demo_busy())
        for value in (await io.read(self.prepared.tags)).values():
            io.board.update(value)
        if self.parts is not None:  # the count after the end, read fresh from the device
            self.parts.end, self.parts.end_error = await read_count(io, self.parts.counter)
        return ended

    async def _drive(
        self, controller: Controller, stop_when_held: Callable[[], bool]
    ) -> BatchEnded:
        """The batch from Reset to its end (`cellctl resume` takes a crashed one up instead)."""
        return await controller.run_batch(
            stop_when_held=stop_when_held, before_start=self._count_start
        )

    async def _count_start(self) -> None:
        """Read the parts counter fresh from its device (Idle, after Resetting, before Start)
        and record it, on disk before Start (`resume` counts from it)."""
        await count_start(self.parts, self.controller, self.recorder)

    async def _batch_shown(self, io: TagIO, extras: list[asyncio.Task[None]]) -> BatchEnded:
        """The batch, in the live view on a terminal (drawn by a task of this loop, which
        joins `extras`), else with one line per event."""
        model = self.model
        if not self.options.interactive or model is None:
            return await self._batch(io)
        # The view fits the terminal by itself (FittedView); "crop" only guards a terminal
        # resized between a render and its drawing. Drawn by a task on this loop, not rich's
        # refresh thread: see _redraw.
        model.hint = self.keys_now()  # the first frame's, drawn as the view starts
        with Live(
            FittedView(model),
            console=self.out,
            auto_refresh=False,
            transient=False,
            vertical_overflow="crop",
        ) as live:
            extras.append(self._supervised(self._redraw(live), "the live view", self._no_keys))
            ended = await self._batch(io)
            model.hint = ""  # the last frame, drawn as the view stops: no keys act now
        return ended

    def _asked_later(self, controller: Controller, ended: BatchEnded) -> BatchEnded:
        """The batch's end, with the question Unhold asks when it was asked once the safe state
        was confirmed (a device lost while holding)."""
        asked = controller.unanswered() if ended.state is State.HELD else None
        if asked is not None and ended.cause is not None and asked not in ended.cause:
            # The batch waits for that answer now, as well as for the hold's own cause. Both
            # go on record, so that the log says what the summary says.
            ended = replace(ended, cause=f"{ended.cause}; then {asked}")
            controller.emit(Notice(text=f"the batch ended Held: {ended.cause}"))
        return ended

    async def _summary(
        self, controller: Controller, ended: BatchEnded, unconfirmed: dict[str, str], why: str
    ) -> int:
        """Record the batch's end, print the summary; the exit code (SafeStateUnconfirmed
        raised for exit 5)."""
        assert self.model is not None
        code = self._exit_code(controller, ended, unconfirmed)
        lines = summary_lines(self.model, ended)
        if self.recorder is not None and self.identity is not None:
            last = await self._end_record(self.recorder, ended, code)
            if last is None and code in (exitcodes.OK, exitcodes.BATCH_NOT_COMPLETE):
                code = exitcodes.JOURNAL  # its end is not on disk: the record is not whole
            failure = self.journal_failure or self.recorder.unavailable()
            lines += record_lines(
                self.identity,
                time.time(),
                None if last is None else last.hash,
                failure,
                parts=self.parts,
            )
        # On a terminal the summary wraps at words (a person reads it), but for the commands to
        # copy; off one, a line stays one line (a script reads it).
        for line in lines:
            whole = not self.out.is_terminal or line.startswith(COMMAND_LINES)
            self.out.print(line, markup=False, soft_wrap=whole)
        if unconfirmed:
            raise SafeStateUnconfirmed(unconfirmed, why)
        return code

    async def _end_record(
        self, recorder: BatchRecorder, ended: BatchEnded, code: int
    ) -> JournalRow | None:
        """Write the batch_ended row (on disk when this returns): the row, or None."""
        return await end_record(recorder, ended, code, self.parts)

    def _exit_code(
        self, controller: Controller, ended: BatchEnded, unconfirmed: dict[str, str]
    ) -> int:
        """The run's exit code: 5 before 6 (a journal that failed) before the outcome's."""
        if unconfirmed:
            return exitcodes.SAFE_STATE_UNCONFIRMED
        if self.journal_failure is not None:
            return exitcodes.JOURNAL
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
        if self.demo is not None:
            self.demo.busy = False

    def _demo_busy(self) -> bool:
        """True while the demo's fault script will Unhold by itself."""
        return self.demo is not None and self.demo.busy

    def keys_now(self) -> str:
        """The live view's hint: the keys that act now (none before the controller is made)."""
        return self.hands.keys_now() if self.hands is not None else ""

    async def _read_keys(self, keys: TerminalKeys) -> None:
        """The key loop; when the terminal's input ends, nobody can Unhold any more."""
        assert self.hands is not None and self.controller is not None
        await self.hands.read_keys(keys)
        self.keys_gone = True
        self.controller.wake_waiters()

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


def run_command(options: RunOptions, out: Console) -> Callable[[], Coroutine[Any, Any, int]]:
    """The coroutine factory of `cellctl run` (the CLI runs it with its error handling)."""
    prepared = prepare(options)
    return lambda: BatchRun(options, prepared, out).run()
