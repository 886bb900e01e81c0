"""What `cellctl resume` does: find the unfinished batch in the journal, check that its recipe
file is the one it ran (same SHA-256), load it with the recorded parameters, say what the record
shows, then run the batch as `run` does (cellctl.cli.batch) but taken up where it was: Held
from the first instant, the safe state written, its rows appended to the same batch id after a
`resumed` notice row. Off a terminal, `--choice` decides on Unhold (or aborts); without one the
batch stays Held and unfinished (exit 3), for a later `resume` to decide.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cellctl import exitcodes
from cellctl.cli.batch import BatchRun
from cellctl.cli.prepare import Prepared, RunOptions, prepare
from cellctl.cli.views.summary import BatchIdentity, stays_held_text
from cellctl.control.batch_record import reopen_record
from cellctl.control.commands import OperatorCommand, Refused
from cellctl.control.controller import Controller
from cellctl.control.events import BatchEnded, Event, Notice
from cellctl.control.journal.location import default_journal_path, journal_option
from cellctl.control.journal.record import find_batch, parse_at
from cellctl.control.journal.recorder import BatchRecorder, os_user
from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import JournalUnavailable, SqliteStore
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice
from cellctl.control.parts import recorded_start
from cellctl.control.resume import (
    NoUnfinishedBatch,
    RecipeChanged,
    ResumePoint,
    ResumeRefused,
    UnfinishedBatch,
    batch_alive,
    recorded_recipe,
    resume_point,
    unfinished_batches,
)
from cellctl.errors import BadValue, CellctlError
from cellctl.io.session import TagIO
from drivers.base import Value

if TYPE_CHECKING:
    from cellctl.io.sim import CellSimulator


class BatchStillRunning(CellctlError):
    """The batch's process still runs: it did not crash (refused, exit 7)."""

    exit_code = exitcodes.REFUSED


@dataclass
class ResumeOptions:
    """Everything `cellctl resume` was asked to do."""

    batch: str | None = None
    cell: Path | None = None
    sim: bool = False
    speed: float = 1.0
    answers: list[str] = field(default_factory=list)
    operator: str | None = None
    choice: str | None = None
    interactive: bool = False
    safe_wait: float = 300.0
    journal: Path | None = None


def _text(value: Any) -> str:
    """A recorded parameter as `-p` takes it again."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def find_unfinished(path: Path, wanted: str | None) -> tuple[UnfinishedBatch, list[JournalRow]]:
    """The unfinished batch `wanted` names (the latest when None) and its rows; NoUnfinishedBatch
    or UnknownBatch when there is none, BatchStillRunning when its process still runs."""
    store = SqliteStore(path, readonly=True)
    try:
        unfinished = {b.batch: b for b in unfinished_batches(store)}
        if wanted is not None:
            batch = find_batch(store, wanted)
            if batch not in unfinished:
                raise NoUnfinishedBatch(
                    f"batch {batch} ended (it has a batch_ended row): nothing to resume; "
                    f"its record: cellctl report {batch}{journal_option(path)}"
                )
        elif unfinished:
            batch = list(unfinished)[-1]
        else:
            raise NoUnfinishedBatch(f"no unfinished batch in journal {path}: nothing to resume")
        found = unfinished[batch]
        rows = list(store.rows(batch))
    finally:
        store.close()
    if batch_alive(found.process):
        raise BatchStillRunning(
            f"batch {batch} is running: process {found.process.get('pid')} on this host still "
            "runs it (it did not crash); a batch is taken up only once its process is gone"
        )
    return found, rows


def recorded_answers(rows: Sequence[JournalRow], given: Sequence[str]) -> list[str]:
    """`--answer` texts for the prompts answered before the crash (not given again): a run
    without a terminal needs every prompt it may reach answered."""
    named = {text.partition("=")[0].strip() for text in given}
    answers: dict[str, str] = {}
    for row in rows:
        if row.kind != Kind.ANSWER:
            continue
        body = row.data()
        step_id = body.get("step_id") if isinstance(body, dict) else None
        if isinstance(step_id, str) and step_id and step_id not in named:
            value = body.get("value")
            answers[step_id] = "" if value is None else _text(value)
    return [*given, *(f"{k}={v}" for k, v in answers.items())]


def resume_command(options: ResumeOptions, out: Console) -> Callable[[], Coroutine[Any, Any, int]]:
    """The coroutine factory of `cellctl resume` (every input checked before it returns)."""
    path = options.journal if options.journal is not None else default_journal_path()
    found, rows = find_unfinished(path, options.batch)
    started, batch = found.started, found.batch
    recipe_file = recorded_recipe(found)
    cell_text = started.get("cell_file")
    cell = options.cell or (Path(cell_text) if isinstance(cell_text, str) else None)
    parameters: Mapping[str, Value] = started.get("parameters") or {}
    run_options = RunOptions(
        recipe=recipe_file,
        cell=cell,
        params=[f"{name}={_text(value)}" for name, value in parameters.items()],
        # A batch run on in-process simulators (--sim) is taken up on fresh ones.
        sim=options.sim or started.get("sim") is True,
        speed=options.speed,
        answers=recorded_answers(rows, options.answers),
        operator=options.operator,
        interactive=options.interactive,
        safe_wait=options.safe_wait,
        journal=path,
    )
    prepared = prepare(run_options)
    if prepared.parameters != dict(parameters):
        raise BadValue(
            f"batch {batch}: its recorded parameters {dict(parameters)} do not load again "
            f"(got {prepared.parameters})"
        )
    refused: str | None = None
    try:
        point = resume_point(prepared.loaded.recipe, batch, rows)
    except ResumeRefused as error:
        if options.choice != "abort":
            raise
        refused = str(error)  # Abort needs no point: nothing of the recipe runs again
        point = ResumePoint(batch, None)
    run = ResumeRun(run_options, prepared, out, found, point, options.choice, rows)
    run.say_found(refused)
    return run.run


class ResumeRun(BatchRun):
    """One `cellctl resume`: a BatchRun that appends to the crashed batch and takes it up."""

    def __init__(
        self,
        options: RunOptions,
        prepared: Prepared,
        out: Console,
        found: UnfinishedBatch,
        point: ResumePoint,
        choice: str | None,
        rows: Sequence[JournalRow],
    ) -> None:
        super().__init__(options, prepared, out)
        self.found = found
        self.point = point
        self.choice = choice
        self._rows = rows
        #: When the batch started (its first row), not when it was taken up: the summary's start.
        self._batch_start = parse_at(rows[0].at) if rows else time.time()
        #: The choice was submitted (accepted or refused): Held from then on ends the run.
        self.decided = False
        if self.parts is not None:
            # Parts made count from the batch's own start, recorded before its Start.
            if options.sim:
                self.parts.start_error = (
                    "its count was on the simulators that died with the crashed process "
                    "(resume --sim runs on fresh ones)"
                )
            else:
                self.parts.start, self.parts.start_error = recorded_start(rows, self.parts.counter)

    @property
    def journal(self) -> Path:
        """The journal the batch is in."""
        assert self.options.journal is not None  # resume_command names it
        return self.options.journal

    def _resume_hint(self) -> str:
        return f"cellctl resume {self.found.batch}{journal_option(self.journal)}"

    def say_found(self, refused: str | None) -> None:
        """What the record shows: the batch, where it was, what Unhold will ask."""
        started, point = self.found.started, self.point
        recipe = self.prepared.loaded.recipe
        who = f" by {started.get('operator')}" if started.get("operator") else ""
        lines = [
            f"batch {point.batch}: {started.get('recipe')} v{started.get('version')} on cell "
            f"{started.get('cell')}{who} never ended: its controller stopped mid-batch",
        ]
        if refused is not None:
            lines.append(f"it cannot be taken up where it was ({refused}): --choice abort ends it")
        else:
            lines.append(f"it is taken up Held {point.describe(recipe)}")
        lines += [f"unknown outcome: {u.text()}" for u in point.unknown]
        if point.call_unknown:
            lines.append(f"unknown outcome: {point.call_unknown} was called or not: unknown")
        if point.unknown or point.call_unknown:
            lines.append(
                "choices: retry (the step again from its start: the write is sent again), "
                "skip (on after the step, nothing sent again), abort"
            )
        elif point.failed:
            lines.append(f"it had failed: {point.failed}; choices: retry, skip, abort")
        if self.options.sim:
            # The crashed process took its in-process simulators with it: say what that means.
            lines.append(
                "on fresh simulators: the state of the ones the batch ran on died with its "
                "process (counts, positions, whether a write of unknown outcome landed)"
            )
        self.out.print("\n".join(lines), markup=False, soft_wrap=not self.out.is_terminal)

    def _open_record(self) -> BatchRecorder:
        """The journal opened and the `resumed` notice row on disk (nothing else has happened
        yet); the same batch id, intent ids numbered on after the ones before the crash."""
        path, point = self.journal, self.point
        operator = self.options.operator or os_user()
        self.recorder = reopen_record(
            path,
            point,
            self.prepared.loaded.recipe,
            self._rows,
            operator=operator,
            choice=self.choice,
            on_failure=self._journal_failed,
        )
        parameters = dict(self.prepared.parameters)
        self.identity = BatchIdentity(point.batch, path, parameters, operator, self._batch_start)
        return self.recorder

    def _make_controller(self, io: TagIO, simulator: CellSimulator | None) -> Controller:
        """The controller as `run` makes it, its view's model taken up at the resume point
        (the steps passed over show done: no event tells of them)."""
        controller = super()._make_controller(io, simulator)
        assert self.model is not None
        self.model.resume_from(self.point)
        return controller

    def _print_event(self, event: Event) -> None:
        """As `run` prints them, but for an end Held: the batch has not ended, it stays Held."""
        if isinstance(event, BatchEnded) and event.state is State.HELD:
            event = Notice(at=event.at, text=stays_held_text(event))
        super()._print_event(event)

    async def _drive(
        self, controller: Controller, stop_when_held: Callable[[], bool]
    ) -> BatchEnded:
        """Take the batch up Held; off a terminal, carry out --choice once Held."""

        def held() -> bool:
            if self.options.interactive or self.choice is None or self.decided:
                return stop_when_held()
            self.decided = True
            self._supervised(self._decide(controller), "the --choice", lambda: None)
            return False

        return await controller.resume_batch(self.point, stop_when_held=held)

    async def _decide(self, controller: Controller) -> None:
        """Submit --choice as the operator's command; a refusal is said, and ends the run."""
        assert self.hands is not None and self.choice is not None
        if self.choice == "abort":
            command, choice = Command.ABORT, None
        elif self.choice == "continue":
            command, choice = Command.UNHOLD, None
        else:
            command, choice = Command.UNHOLD, FailureChoice(self.choice)
        user = self.options.operator or os_user()
        order = OperatorCommand(user, command, f"resume --choice {self.choice}", choice)
        result = await self.hands.commands.submit(order)
        if isinstance(result, Refused):
            self.out.print(
                f"--choice {self.choice}: {command} refused: {result.reason}", markup=False
            )
        controller.wake_waiters()

    async def _end_record(
        self, recorder: BatchRecorder, ended: BatchEnded, code: int
    ) -> JournalRow | None:
        """Ended Held: the batch stays unfinished (a notice, no batch_ended row) for a later
        resume to decide; any other end is recorded as `run` records it."""
        if ended.state is not State.HELD:
            return await super()._end_record(recorder, ended, code)
        hint = self._resume_hint()
        text = (
            f"left Held, unfinished: {ended.cause or 'nobody unheld it'}; take it up again: "
            f"{hint} --choice retry|skip|continue|abort"
        )
        recorder.ended = True  # no batch_ended row
        if self.identity is not None:  # the summary says so, and the command, not an end
            resume = f"{hint} --choice retry|skip|continue|abort"
            self.identity = replace(self.identity, resume=resume)
        try:
            return await recorder.writer.durable(
                recorder.batch, Kind.NOTICE, {"text": text, "level": "warning"}
            )
        except JournalUnavailable:
            return None

    async def _close_record(self, recorder: BatchRecorder, code: int) -> JournalUnavailable | None:
        """A resume that never reached an end (a device unreachable, say) leaves the batch
        unfinished: a notice says so instead of a batch_ended row."""
        if not recorder.ended:
            recorder.ended = True
            text = f"resume ended before the batch did (exit {code}): it stays unfinished"
            with contextlib.suppress(JournalUnavailable):
                await recorder.writer.durable(
                    recorder.batch, Kind.NOTICE, {"text": text, "level": "error"}
                )
        return await super()._close_record(recorder, code)


__all__ = [
    "BatchStillRunning",
    "RecipeChanged",
    "ResumeOptions",
    "ResumeRun",
    "find_unfinished",
    "recorded_answers",
    "resume_command",
]
