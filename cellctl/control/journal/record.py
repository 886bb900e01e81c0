"""The read model of the journal: one batch's record (`BatchRecord`, built from its rows) and
the summaries of the last batches (`history`), as `cellctl history` and `cellctl report` show
them. Nothing here writes to the journal. The handler of each row kind is in record_rows.py.

A batch with no batch_ended row never ended (the process was killed, the host lost power): its
outcome is "unfinished". A write with an intent row and no confirmation row has an unknown
outcome: the device may or may not have taken it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import JournalStore
from cellctl.errors import CellctlError

#: The outcome of a batch that has no batch_ended row.
UNFINISHED = "unfinished"
#: Write outcomes: the device confirmed it, it answered with an error, or nobody knows.
CONFIRMED, FAILED, UNKNOWN = "confirmed", "failed", "unknown"
#: `history` shows this many batches when not told.
DEFAULT_LAST = 20


class UnknownBatch(CellctlError):
    """`report BATCH` names a batch the journal does not hold (bad input: exit 1)."""


class AmbiguousBatch(UnknownBatch):
    """A batch id prefix that begins several batch ids (bad input: exit 1)."""


def parse_at(at: str) -> float:
    """A row time stamp ('2026-12-06T13:45:01.123456Z') as seconds since the epoch."""
    return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp()


@dataclass
class Step:
    """One run of a step (a step re-entered after a hold is a second run): end and outcome
    None while it had not ended when the record stops."""

    path: str
    step_id: str | None
    label: str
    kind: str
    detail: str
    round: int | None
    start: str
    end: str | None = None
    outcome: str | None = None
    error: str | None = None


@dataclass
class Hold:
    """A time the cell spent in Holding or Held: `end` None when the record stops held."""

    start: str
    end: str | None
    cause: str
    interlock: str | None


@dataclass
class StateChange:
    """A state change: `command` None for a state complete; `interlock` the trip that took it."""

    at: str
    source: str
    target: str
    command: str | None
    cause: str
    interlock: str | None


@dataclass
class Trip:
    """An interlock trip, and when it cleared (None: not within the record)."""

    at: str
    interlock: str
    action: str
    condition: str
    values: dict[str, Any]
    message: str
    device: str | None
    cleared: str | None = None


@dataclass
class OperatorCommand:
    """An operator command, who gave it and from where."""

    at: str
    command: str
    operator: str | None
    source: str | None
    choice: str | None = None  # the operator's choice after a failure: retry, skip, abort


@dataclass
class Refusal:
    """A command refused: illegal in the state, or blocked by a fault."""

    at: str
    command: str
    reason: str
    blocked: bool


@dataclass
class Write:
    """A device write: a recipe's (an intent, then its confirmation) or one with no intent of
    its own (Resetting's values, a restore after the safe state). `outcome` is confirmed,
    failed (the device answered with an error) or unknown (an intent with no confirmation)."""

    tag: str
    value: Any
    path: str | None
    step_id: str | None
    intent: str | None
    intent_at: str | None
    confirmed_at: str | None
    outcome: str
    error: str | None = None


@dataclass
class Call:
    """A device method call that returned."""

    at: str
    method: str
    args: dict[str, Any]
    result: Any
    path: str | None


@dataclass
class SafeState:
    """The safe state written: why, and each tag's result (error None: written)."""

    at: str
    reason: str
    ok: bool
    results: list[dict[str, Any]]


@dataclass
class Prompt:
    """A prompt shown to the operator, and the answer (None: not answered within the record)."""

    at: str
    path: str
    step_id: str | None
    text: str
    answered_at: str | None = None
    answer: Any = None
    operator: str | None = None


@dataclass
class Notice:
    """A notice: a decision, a device's health, a question asked on Unhold."""

    at: str
    level: str
    text: str


@dataclass
class Entry:
    """One line of the timeline: `flag` is "fault", "operator" or None, so that a view can
    highlight faults and operator actions with more than a colour."""

    at: str
    offset: float  # seconds since the batch started
    kind: str
    text: str
    flag: str | None = None


@dataclass
class BatchRecord:
    """Everything the journal holds of one batch (see the module docstring)."""

    batch: str
    cell: str | None = None
    cell_sha256: str | None = None
    recipe: str | None = None
    version: str | int | None = None
    recipe_sha256: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    operator: str | None = None
    mode: str | None = None
    pid: int | None = None
    host: str | None = None
    os_user: str | None = None
    cellctl_version: str | None = None
    cell_file: str | None = None
    recipe_file: str | None = None
    sim: bool | None = None
    start: str | None = None
    end: str | None = None
    last_row_at: str | None = None
    outcome: str = UNFINISHED
    unfinished: bool = True
    duration: float | None = None
    parts_made: int | None = None
    steps_done: int | None = None
    exit_code: int | None = None
    faults: list[str] = field(default_factory=list)
    cause: str | None = None
    resumed: list[dict[str, Any]] = field(default_factory=list)
    states: list[StateChange] = field(default_factory=list)
    modes: list[dict[str, str]] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    holds: list[Hold] = field(default_factory=list)
    trips: list[Trip] = field(default_factory=list)
    commands: list[OperatorCommand] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    writes: list[Write] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    safe_states: list[SafeState] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    timeline: list[Entry] = field(default_factory=list)
    rows: int = 0
    head: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The record as JSON-ready data (its shape: schemas/report.schema.json)."""
        return asdict(self)

    @property
    def unknown_writes(self) -> list[Write]:
        """The writes whose outcome nobody knows (an intent and no confirmation)."""
        return [w for w in self.writes if w.outcome == UNKNOWN]


@dataclass
class BatchSummary:
    """One line of `cellctl history`."""

    batch: str
    recipe: str | None
    version: str | int | None
    outcome: str
    start: str | None
    end: str | None
    duration: float | None
    operator: str | None
    parts_made: int | None
    cell: str | None

    def to_json(self) -> dict[str, Any]:
        """The summary as JSON-ready data (its shape: schemas/history.schema.json)."""
        return asdict(self)


def build_record(batch: str, rows: Iterable[JournalRow]) -> BatchRecord:
    """The record of `batch` from its rows, in seq order."""
    # Here, not at the top: the row handlers build this module's dataclasses.
    from cellctl.control.journal.record_rows import RecordBuilder

    builder = RecordBuilder(batch)
    for row in rows:
        builder.add(row)
    return builder.finish()


def value_text(value: Any) -> str:
    """A body value (a tag value, an argument, a result) as it reads in a timeline or report."""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def find_batch(store: JournalStore, wanted: str) -> str:
    """The batch id `wanted` names: itself, or the one id it begins; UnknownBatch naming the
    journal when none matches or several do."""
    # A whole id is looked up by index (one row); only a prefix lists every batch id.
    if wanted and store.select((), wanted, limit=1):
        return wanted
    matches = [b for b in store.batches() if b.startswith(wanted)] if wanted else []
    if len(matches) == 1:
        return matches[0]
    if matches:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise AmbiguousBatch(f"batch {wanted!r} is ambiguous in journal {store.where}: {shown}")
    raise UnknownBatch(f"no batch {wanted!r} in journal {store.where}")


def batch_record(store: JournalStore, batch: str) -> BatchRecord:
    """The record of the batch `batch` names (see find_batch)."""
    found = find_batch(store, batch)
    return build_record(found, store.rows(found))


def summary(record: BatchRecord) -> BatchSummary:
    """The history line of a record."""
    return BatchSummary(
        record.batch,
        record.recipe,
        record.version,
        record.outcome,
        record.start,
        record.end,
        record.duration,
        record.operator,
        record.parts_made,
        record.cell,
    )


def _started_batches(store: JournalStore, last: int | None = None) -> list[str]:
    """The ids of the batches that have a batch_started row, newest first (the last `last`)."""
    rows = store.select([Kind.BATCH_STARTED], newest_first=True, limit=last)
    ids = list(dict.fromkeys(row.batch for row in rows if row.batch is not None))
    if last is not None and len(ids) < last and len(rows) == last:  # a batch started twice
        return _started_batches(store)[:last]
    return ids


def history(store: JournalStore, last: int = DEFAULT_LAST) -> list[BatchSummary]:
    """The summaries of the last `last` batches, newest first (by their batch_started row).
    Each from its batch_started and batch_ended rows only, read by index: the cost follows
    `last`, not the journal's size."""
    chosen = _started_batches(store, max(last, 0))
    ends = (Kind.BATCH_STARTED, Kind.BATCH_ENDED)
    return [summary(build_record(b, store.select(ends, b))) for b in chosen]


def load_schema(name: str) -> dict[str, Any]:
    """A JSON Schema shipped in the package: "history" (`cellctl history --json`) or "report"
    (`cellctl report --format json`)."""
    from importlib import resources

    text = resources.files("cellctl.control.journal").joinpath(f"schemas/{name}.schema.json")
    loaded: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return loaded
