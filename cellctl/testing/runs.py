"""Running cellctl in a test: any command in-process as the console script runs it, a recipe to
its end, or a Controller built as `cellctl run` builds it, with every event it emits."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from cellctl import exitcodes
from cellctl.cli import run
from cellctl.cli.batch import RunOptions, prepare
from cellctl.control.batch_record import close_record, hold_on_failure, start_record
from cellctl.control.commands import Commands
from cellctl.control.controller import Controller
from cellctl.control.events import BatchEnded, Event, StateChanged
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.journal.store import SqliteStore
from cellctl.control.ledger import NO_LEDGER
from cellctl.control.machine import Mode, State
from cellctl.control.operator import Operator, ScriptedOperator
from cellctl.io.drivers import build_drivers
from cellctl.io.heartbeat import Heartbeat
from cellctl.io.session import TagIO

if TYPE_CHECKING:  # the kit runs under pytest; importing it here would slow every import
    import pytest

T = TypeVar("T")

#: The summary line of `cellctl run` that names the state the batch ended in.
_OUTCOME = re.compile(r"^outcome: (\S+)$", re.MULTILINE)


class CliResult(NamedTuple):
    """What one in-process cellctl command did: (exit code, stdout, stderr)."""

    exit_code: int
    out: str
    err: str

    @property
    def outcome(self) -> str | None:
        """The state a `run` batch ended in (its summary's `outcome:` line); None if none ran."""
        found = _OUTCOME.search(self.out)
        return found.group(1) if found else None


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> CliResult:
    """Run cellctl in-process, as the `cellctl` command would, on `args`; what it did."""
    capsys.readouterr()
    code = run([str(arg) for arg in args])
    captured = capsys.readouterr()
    return CliResult(code, captured.out, captured.err)


@dataclass
class Harness:
    """A Controller connected to the devices, every event it emitted kept in order."""

    controller: Controller
    io: TagIO
    events: list[Event] = field(default_factory=list)
    #: The batch's record, when controller_for was given a journal.
    recorder: BatchRecorder | None = None
    #: The command layer, as an operator's keys reach the controller (and the record hears).
    commands: Commands = field(init=False)

    def __post_init__(self) -> None:
        self.commands = Commands(self.controller)
        if self.recorder is not None:
            self.commands.heard.append(self.recorder.command)

    def of(self, kind: type[T]) -> list[T]:
        """The events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    async def run_batch(self) -> BatchEnded:
        """Reset, Start and wait for Complete, Stopped or Aborted (Held waits for the test)."""
        return await self.controller.run_batch(stop_when_held=lambda: False)


@contextlib.asynccontextmanager
async def controller_for(
    cell_file: Path,
    recipe: Path,
    params: list[str] | None = None,
    answers: list[str] | None = None,
    operator: Callable[[ScriptedOperator], Operator] | None = None,
    journal: Path | None = None,
) -> AsyncIterator[Harness]:
    """A Controller built as `cellctl run` builds it (non-interactive, prompts answered by
    `answers`, "id=value" as --answer takes them; `operator` may wrap that scripted one;
    with `journal`, the batch recorded there as `cellctl run --journal` records it), opened;
    closed after (the record ended with the exit code of the state the batch is in)."""
    options = RunOptions(
        recipe=recipe, cell=cell_file, params=params or [], answers=answers or [], interactive=False
    )
    prepared = prepare(options)
    cell = prepared.loaded.cell
    io = TagIO(cell, build_drivers(cell, prepared.devices), prepared.tags)
    await io.connect()
    recorder: BatchRecorder | None = None
    made: list[Controller] = []

    def journal_failed(reason: str) -> None:
        # As `cellctl run`: the batch fails closed (Held with the safe state).
        hold_on_failure(made[0] if made else None, recorder, reason)

    try:
        assert isinstance(prepared.operator, ScriptedOperator)  # non-interactive
        if journal is not None:
            recorder = start_record(
                journal,
                prepared.loaded,
                prepared.parameters,
                operator=None,
                mode=Mode.PRODUCTION,
                sim=False,
                open_store=SqliteStore,
                on_failure=journal_failed,
            )
        controller = Controller(
            prepared.loaded,
            prepared.parameters,
            io,
            operator(prepared.operator) if operator else prepared.operator,
            comm_devices=prepared.devices,
            ledger=NO_LEDGER if recorder is None else recorder,
        )
        made.append(controller)
        harness = Harness(controller, io, recorder=recorder)
        if recorder is not None:  # first: the record queues each event before it is shown
            controller.listeners.append(recorder.event)
        controller.listeners.append(harness.events.append)
        # As `cellctl run` does: the devices' watchdogs see a live controller all along.
        async with Heartbeat(io, cell.heartbeat):
            await controller.open()
            try:
                yield harness
            finally:
                await controller.close()
                if recorder is not None:
                    await close_record(recorder, controller, _exit_code(controller.state), None)
    finally:
        await io.close()


def _exit_code(state: State) -> int:
    """The exit code `cellctl run` gives a batch that is in `state` (safe state confirmed)."""
    return exitcodes.OK if state is State.COMPLETE else exitcodes.BATCH_NOT_COMPLETE


def entered(events: list[Event], state: State) -> StateChanged:
    """The first change into `state`."""
    return next(e for e in events if isinstance(e, StateChanged) and e.target is state)


async def wait_event(
    harness: Harness, predicate: Callable[[Event], bool], within: float, what: str
) -> Event:
    """The first event (already emitted or still to come) that satisfies `predicate`."""
    found: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

    def listen(event: Event) -> None:
        if predicate(event) and not found.done():
            found.set_result(event)

    for event in harness.events:
        listen(event)
    harness.controller.listeners.append(listen)
    try:
        async with asyncio.timeout(within):
            return await found
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
    finally:
        harness.controller.listeners.remove(listen)


async def held_or_ended(harness: Harness, within: float) -> State:
    """Wait until the running batch reaches Held or ends; the state it is in then."""
    await wait_event(
        harness,
        lambda e: (
            isinstance(e, BatchEnded) or (isinstance(e, StateChanged) and e.target is State.HELD)
        ),
        within,
        "Held or the end of the batch",
    )
    return harness.controller.state
