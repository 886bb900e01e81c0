"""Crash recovery: where an unfinished batch was when its controller died, read from its
journal rows, and what the executor needs to take it up there again, Held.

A batch with no batch_ended row never ended. `resume_point` reads its rows in order: the leaf
step in progress (started, and not ended done or skipped: a wait, a set step between its
writes, a call not returned), else the last step that ended (the batch goes on after it), the
round of every repeat around it, the names bound by earlier steps (a call's `result`, a prompt's
`answer`: the executor has no other names; a repeat's `index` is its round), the last value the
recipe wrote to each tag (Unholding restores them as after any hold), and the writes of the step
in progress:

- a write with an intent and no confirmation (or one confirmed as unknown) has an *unknown
  outcome*: the device may have taken it. It is never sent again unless the operator chooses
  retry (the step runs again from its start); skip goes on after the step; Abort ends the batch.
- a call started and not returned is unknown the same way.
- writes confirmed before the crash that the safe state set otherwise since (and Unholding does
  not restore) were undone: re-run the step from its start, skip it, or abort.
- else the step is re-entered on Unhold where it was (its confirmed writes are not sent again).

A step in progress inside a parallel step is refused (one resume point per batch): the batch can
still be ended with Abort.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cellctl import exitcodes, expr
from cellctl.control.events import StepOutcome
from cellctl.control.journal.location import journal_option
from cellctl.control.journal.record import parse_at
from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import JournalStore, SqliteStore
from cellctl.errors import BadValue, CellctlError
from cellctl.recipe import (
    CallStep,
    ParallelStep,
    PromptStep,
    Recipe,
    RepeatStep,
    StepBase,
    iter_steps,
)
from drivers.base import Value

__all__ = [
    "NoUnfinishedBatch",
    "ResumePoint",
    "ResumeRefused",
    "Resuming",
    "UnfinishedBatch",
    "UnfinishedBatchFirst",
    "Where",
    "batch_alive",
    "refuse_unfinished",
    "resume_point",
    "unfinished_batches",
]


#: The key of the `resumed` notice row's body that marks it (its value: True).
RESUMED = "resumed"


class ResumeRefused(CellctlError):
    """The batch cannot be taken up where it was (a parallel step in progress, a recipe that
    no longer has the step): bad input, nothing was touched."""


class NoUnfinishedBatch(CellctlError):
    """`resume` found no unfinished batch (or not the one named): bad input."""


@dataclass(frozen=True)
class UnfinishedBatch:
    """A batch with a batch_started row and no batch_ended row: its id and its first row's body
    (cell, recipe, recipe_sha256, parameters, operator, recipe_file, cell_file, pid, host)."""

    batch: str
    started: Mapping[str, Any]
    last_seq: int
    #: The pid and host of the process that last ran it (its start, or its latest resume).
    process: Mapping[str, Any] = field(default_factory=dict)
    #: It recorded an intent: something may have been written to a device for it.
    wrote: bool = True

    @property
    def cell(self) -> str | None:
        """The cell the batch ran on."""
        cell = self.started.get("cell")
        return cell if isinstance(cell, str) else None


def unfinished_batches(store: JournalStore) -> list[UnfinishedBatch]:
    """Every batch of the journal that has no batch_ended row, oldest first. Read by kind and
    batch (the store's indexes): `run` asks at every start, so its cost follows the number of
    batches, never the number of rows of a busy line's journal."""
    found: dict[str, UnfinishedBatch] = {}
    for row in store.select([Kind.BATCH_STARTED], unended=True):
        batch = row.batch
        if batch is None or batch in found:
            continue  # the identity is the first batch_started row's
        body = _body(row)
        process: Mapping[str, Any] = body
        for notice in store.select([Kind.NOTICE], batch):
            if RESUMED in notice.body and _body(notice).get(RESUMED):
                process = _body(notice)  # the latest resume ran it last
        last = store.select((), batch, newest_first=True, limit=1)
        wrote = bool(store.select([Kind.INTENT], batch, limit=1))
        found[batch] = UnfinishedBatch(batch, body, last[0].seq, process, wrote)
    return list(found.values())


class UnfinishedBatchFirst(CellctlError):
    """`cellctl run` on a journal that holds an unfinished batch of the same cell: refused
    (exit 7), naming the batch and the command that takes it up."""

    exit_code = exitcodes.REFUSED


def refuse_unfinished(path: Path, cell: str) -> None:
    """Raise UnfinishedBatchFirst when the journal at `path` holds a batch of `cell` that never
    ended and whose process is gone (a crash); a journal that does not exist yet holds none.
    A batch whose process still runs is left to the cell lock, which names it."""
    if not path.exists():
        return
    store = SqliteStore(path, readonly=True)
    try:
        found = [
            b for b in unfinished_batches(store) if b.cell == cell and not batch_alive(b.process)
        ]
    finally:
        store.close()
    abandoned = [b for b in found if not b.wrote]
    if abandoned:
        close_abandoned(path, abandoned)
    found = [b for b in found if b.wrote]
    if not found:
        return
    latest = found[-1]
    who = latest.started.get("operator")
    by = f" by {who}" if who else ""
    journal = journal_option(path)
    raise UnfinishedBatchFirst(
        # Short lines, the command on one of its own: a technician copies it whole.
        f"batch {latest.batch} of cell {cell} ({latest.started.get('recipe')}{by}) never "
        f"ended:\nits controller stopped mid-batch. A new batch is refused until it is taken up\n"
        f"(then Unhold, or --choice abort to end it):\n"
        f"  cellctl resume {latest.batch}{journal}"
    )


#: The end state recorded for a batch whose controller stopped before it wrote anything.
ABANDONED = "abandoned"


def close_abandoned(
    path: Path, batches: Sequence[UnfinishedBatch], cause: str | None = None
) -> None:
    """End, on record, each unfinished batch that never recorded an intent: its controller
    stopped (killed while connecting, its terminal closed) before the recipe or Resetting wrote
    to any device, so there is nothing to take up and nothing of unknown outcome; it must not
    refuse the cell's next batch. A notice row says why (`cause`, else that), then a
    batch_ended row (`abandoned`)."""
    from cellctl.control.journal.rows import canonical_json, format_at
    from cellctl.control.journal.store import NewRow

    now = format_at(time.time())
    rows: list[NewRow] = []
    cause = cause or (
        "its controller stopped before it wrote to any device (no intent on record): "
        "closed when the cell's next batch was asked for"
    )
    for batch in batches:
        notice = {"text": f"batch {batch.batch} abandoned: {cause}", "level": "warning"}
        ended = {
            "state": ABANDONED,
            "duration": 0.0,
            "steps_done": 0,
            "faults": [],
            "cause": cause,
            "parts": None,
            "exit_code": None,
        }
        rows.append(NewRow(batch.batch, now, Kind.NOTICE, canonical_json(notice)))
        rows.append(NewRow(batch.batch, now, Kind.BATCH_ENDED, canonical_json(ended)))
    store = SqliteStore(path)
    try:
        store.append(rows)
    finally:
        store.close()


def batch_alive(process: Mapping[str, Any]) -> bool:
    """True when the process that last ran the batch (`pid`, `host`) still runs on this host
    (it is running, not crashed). A pid of another host cannot be checked: False."""
    pid, host = process.get("pid"), process.get("host")
    if not isinstance(pid, int) or host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


def _body(row: JournalRow) -> dict[str, Any]:
    try:
        data = row.data()
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


@dataclass(frozen=True)
class Unknown:
    """A write of the step in progress whose outcome nobody knows."""

    intent: str
    tag: str
    value: Value

    def text(self) -> str:
        """'plc.start := true was sent or not: unknown'."""
        return f"{self.tag} := {expr.show(self.value)} was sent or not: unknown"


@dataclass
class ResumePoint:
    """Where a batch takes up again (see the module docstring)."""

    batch: str
    #: The step in progress (after False) or the last step that ended (after True); None:
    #: no step had started, the recipe starts from its first step.
    path: str | None
    step_id: str | None = None
    after: bool = False
    #: Each repeat around `path`: its path -> the round in progress (1..N).
    rounds: dict[str, int] = field(default_factory=dict)
    #: Names bound by steps before the point: the binding step's path -> (name, value).
    bound: dict[str, tuple[str, Value]] = field(default_factory=dict)
    #: The last value each recipe write set, confirmed, in the order the recipe wrote them.
    commanded: dict[str, Value] = field(default_factory=dict)
    #: Leaf steps that ended done before the crash.
    steps_done: int = 0
    #: The step in progress: its writes of unknown outcome, a call not returned.
    unknown: tuple[Unknown, ...] = ()
    call_unknown: str | None = None
    #: Its writes confirmed in its current attempt, in order: tag -> value.
    confirmed: dict[str, Value] = field(default_factory=dict)
    #: It had failed (holding for retry or skip) when the controller died: the error.
    failed: str | None = None
    #: When the batch first started (time.time(), from its batch_started row), or None.
    started_at: float | None = None

    def describe(self, recipe: Recipe) -> str:
        """Where the batch takes up again, for people: 'at step 2.7 press (round 2 of cycle)'."""
        if self.path is None:
            return "at its first step (no step had started)"
        steps = _steps_by_path(recipe)
        named = _named(self.path, self.step_id)
        rounds = [
            f"round {self.rounds[repeat]} of {_named(repeat, steps[repeat].id)}"
            for repeat in sorted(self.rounds, key=len)
            if repeat in steps
        ]
        where = f"after {named} (it had ended)" if self.after else f"at {named}"
        return where + (f" ({', '.join(rounds)})" if rounds else "")

    def to_json(self) -> dict[str, Any]:
        """The point as JSON-ready data, for the `resumed` row."""
        return {
            "path": self.path,
            "step_id": self.step_id,
            "after": self.after,
            "rounds": dict(self.rounds),
            "steps_done": self.steps_done,
            "unknown": [{"intent": u.intent, "tag": u.tag, "value": u.value} for u in self.unknown],
            "call_unknown": self.call_unknown,
            "failed": self.failed,
        }


def _named(path: str, step_id: str | None) -> str:
    return f"step {path} {step_id}" if step_id else f"step #{path}"


def _steps_by_path(recipe: Recipe) -> dict[str, StepBase]:
    return {path: step for step, path in iter_steps(recipe.steps)}


def _ancestors(path: str) -> list[str]:
    """The paths of the steps around `path`, outermost first ('2.3.1' -> ['2', '2.3'])."""
    parts = path.split(".")
    return [".".join(parts[:end]) for end in range(1, len(parts))]


_FINISHED = frozenset({StepOutcome.DONE.value, StepOutcome.SKIPPED.value})


@dataclass
class _Write:
    """A recipe write of the step in progress: its outcome confirmed, failed or unknown."""

    intent: str
    tag: str
    value: Value
    outcome: str = "unknown"


@dataclass
class _Leaf:
    """What the rows say of one leaf step's latest attempt."""

    status: str = "running"  # running, interrupted, failed, finished
    writes: list[_Write] = field(default_factory=list)
    called: bool = False
    error: str | None = None


def resume_point(recipe: Recipe, batch: str, rows: Iterable[JournalRow]) -> ResumePoint:
    """Where `batch` takes up again, from its rows in seq order; ResumeRefused when a parallel
    step was in progress or the recipe has no step at a recorded path."""
    steps = _steps_by_path(recipe)
    leaves: dict[str, _Leaf] = {}
    intents: dict[str, _Write] = {}
    latest_round: dict[str, int] = {}  # a repeat's path -> the round its body last started
    last_end: str | None = None
    bound: dict[str, tuple[str, Value]] = {}
    commanded: dict[str, Value] = {}
    done = 0
    started_at: float | None = None
    for row in rows:
        body = _body(row)
        if row.kind == Kind.BATCH_STARTED and started_at is None:
            started_at = parse_at(row.at)
        path = body.get("path")
        step = steps.get(path) if isinstance(path, str) else None
        if row.kind == Kind.STEP_STARTED and isinstance(path, str):
            if step is None:
                raise ResumeRefused(
                    f"batch {batch}: its record has a step {path} that recipe "
                    f"{recipe.recipe} does not have"
                )
            parent = path.rpartition(".")[0]
            if isinstance(body.get("round"), int) and isinstance(steps.get(parent), RepeatStep):
                latest_round[parent] = body["round"]
            if not step.is_block:
                leaf = leaves.get(path)
                if leaf is None or leaf.status != "interrupted":
                    leaf = leaves[path] = _Leaf()  # a new attempt: its writes start afresh
                leaf.status = "running"
        elif row.kind == Kind.STEP_ENDED and isinstance(path, str):
            outcome = body.get("outcome")
            if outcome in _FINISHED:
                last_end = path
                if step is not None and not step.is_block:
                    leaves.setdefault(path, _Leaf()).status = "finished"
                    done += outcome == StepOutcome.DONE.value
            elif step is not None and not step.is_block and path in leaves:
                leaves[path].status = str(outcome)
                if outcome == StepOutcome.FAILED.value:
                    leaves[path].error = body.get("error")
        elif row.kind == Kind.INTENT and isinstance(path, str) and path in leaves:
            write = _Write(str(body.get("intent")), str(body.get("tag")), body.get("value", ""))
            leaves[path].writes.append(write)
            intents[write.intent] = write
        elif row.kind == Kind.CONFIRMED:
            confirmed = intents.pop(str(body.get("intent")), None)
            if confirmed is not None:
                ok, unknown = bool(body.get("ok")), bool(body.get("unknown"))
                confirmed.outcome = "confirmed" if ok else ("unknown" if unknown else "failed")
                if ok:
                    commanded.pop(confirmed.tag, None)  # in the order last written
                    commanded[confirmed.tag] = confirmed.value
        elif row.kind == Kind.CALL and isinstance(path, str):
            if path in leaves:
                leaves[path].called = True
            result = body.get("result")
            if isinstance(step, CallStep) and step.result is not None and result is not None:
                bound[path] = (step.result, result)
        elif row.kind == Kind.ANSWER and isinstance(step, PromptStep) and step.answer:
            answer = body.get("value")  # a typed answer is never None
            if answer is not None:
                bound[str(path)] = (step.answer.name, answer)
    running = [p for p, leaf in leaves.items() if leaf.status != "finished"]
    if len(running) > 1:
        raise ResumeRefused(
            f"batch {batch} had steps in progress in parallel branches ({', '.join(running)}): "
            "resuming inside a parallel step is not supported; end the batch with "
            f"`cellctl resume {batch} --choice abort`"
        )
    target = running[0] if running else last_end
    point = ResumePoint(batch, target, after=not running and target is not None)
    point.bound, point.commanded, point.steps_done = bound, commanded, done
    point.started_at = started_at
    if target is None:
        return point
    point.step_id = steps[target].id
    for outer in _ancestors(target):
        if isinstance(steps.get(outer), ParallelStep):
            raise ResumeRefused(
                f"batch {batch} was in parallel step {outer} ({_named(target, point.step_id)}):"
                " resuming inside a parallel step is not supported; end the batch with "
                f"`cellctl resume {batch} --choice abort`"
            )
        if isinstance(steps.get(outer), RepeatStep):
            point.rounds[outer] = latest_round.get(outer, 1)
    if running:
        leaf = leaves[target]
        point.unknown = tuple(
            Unknown(w.intent, w.tag, w.value) for w in leaf.writes if w.outcome == "unknown"
        )
        point.confirmed = {w.tag: w.value for w in leaf.writes if w.outcome == "confirmed"}
        step = steps[target]
        if isinstance(step, CallStep) and not leaf.called:
            point.call_unknown = step.call
        if leaf.status == StepOutcome.FAILED.value:
            point.failed = leaf.error or "failed"
    return point


class Where(enum.Enum):
    """Where a step stands from a resume point."""

    BEFORE = "before"  # done before the crash: not run again
    INSIDE = "inside"  # a block around the point: entered again (no `if`, no pause)
    AT = "at"  # the step in progress (or the last one that ended, with after)


class Resuming:
    """The executor's side of a resume point: which steps it passes over, the names it binds
    back, and the question the step in progress asks on Unhold."""

    def __init__(self, point: ResumePoint, recipe: Recipe) -> None:
        self.point = point
        self.steps = _steps_by_path(recipe)
        #: Set once the executor stands at the point (parked, or asking), or has ended.
        self.reached = asyncio.Event()

    def where(self, path: str, round_: int | None) -> Where:
        """Where the step at `path` (run in `round_` of the repeat around it) stands."""
        target = self.point.path
        assert target is not None
        parent = path.rpartition(".")[0]
        wanted = self.point.rounds.get(parent)
        if wanted is not None and round_ is not None and round_ < wanted:
            return Where.BEFORE  # an earlier round: all of it ran
        if path == target:
            return Where.AT
        if target.startswith(path + "."):
            return Where.INSIDE
        return Where.BEFORE

    def bind_back(self, path: str, scope: MutableMapping[str, Value]) -> None:
        """Bind again, in `scope`, the names the step at `path` (and the steps in its blocks,
        but a repeat body's, whose names end with its rounds) bound before the crash."""
        for bound_at, (name, value) in self.point.bound.items():
            if bound_at != path and not bound_at.startswith(path + "."):
                continue
            between = [p for p in _ancestors(bound_at) if len(p) >= len(path)]
            if any(isinstance(self.steps.get(p), RepeatStep) for p in between):
                continue
            scope[name] = value

    def question(
        self, safe_state: Mapping[str, Value], restored: Sequence[str]
    ) -> tuple[str, bool, tuple[str, ...]] | None:
        """What Unhold must ask of the step in progress before it goes on: (message, outcome
        unknown, tags undone), or None when it is simply re-entered."""
        point = self.point
        named = _named(point.path or "", point.step_id)
        if point.unknown or point.call_unknown:
            what = [u.text() for u in point.unknown]
            if point.call_unknown:
                what.append(f"{point.call_unknown} was called or not: unknown")
            return f"{named}: {'; '.join(what)}", True, ()
        if point.failed:
            return f"{named} had failed before the controller stopped: {point.failed}", False, ()
        undone = tuple(
            tag
            for tag, value in point.confirmed.items()
            if tag in safe_state and tag not in restored and safe_state[tag] != value
        )
        if undone:
            said = "; ".join(
                f"{tag} was set {expr.show(safe_state[tag])} by the safe state" for tag in undone
            )
            return f"{named}: its writes were undone: {said}", False, undone
        return None

    def writes_done(self) -> int:
        """The step in progress's writes confirmed before the crash (re-entered after them)."""
        return len(self.point.confirmed)


class RecipeChanged(CellctlError):
    """The recipe file no longer hashes to what the batch ran: resume refused (bad input)."""


def recorded_recipe(found: UnfinishedBatch) -> Path:
    """The recipe file an unfinished batch ran, still as it was; BadValue when its record names
    none or it cannot be read, RecipeChanged when its bytes changed since."""
    # Here, not at the top: the recorder imports the executor, which imports this module.
    from cellctl.control.journal.recorder import file_sha256

    batch, started = found.batch, found.started
    recipe_text = started.get("recipe_file")
    if not isinstance(recipe_text, str):
        raise BadValue(f"batch {batch}: its record names no recipe file: it cannot be resumed")
    recipe_file = Path(recipe_text)
    try:
        now = file_sha256(recipe_file)
    except OSError as error:
        raise BadValue(
            f"batch {batch} ran {recipe_file}, which cannot be read: {error.strerror or error}"
        ) from None
    recorded = started.get("recipe_sha256")
    if now != recorded:
        raise RecipeChanged(
            f"recipe {recipe_file} has changed since batch {batch} started: its SHA-256 is now "
            f"{now}, the batch ran {recorded}; a batch is taken up only with the recipe it ran"
        )
    return recipe_file


def ever_started(rows: Iterable[JournalRow]) -> bool:
    """True when a batch's record shows it was started (a state row into Starting): a batch a
    service loaded and never started has nothing of its recipe to take up."""
    for row in rows:
        if row.kind == Kind.STATE and '"Starting"' in row.body:
            body = _body(row)
            if body.get("target") == "Starting":
                return True
    return False
