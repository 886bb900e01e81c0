"""The live view of a batch: a model kept from the controller's events, its rich rendering,
one plain line per event for non-terminals, and the summary at the end (no I/O here)."""

from __future__ import annotations

import enum
import functools
import io
import textwrap
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from cellctl.cli.views.tags import tag_table
from cellctl.control.events import (
    BatchEnded,
    CommandRefused,
    Event,
    MethodCalled,
    ModeChanged,
    Notice,
    PromptAnswered,
    PromptShown,
    SafeStateWritten,
    StateChanged,
    StepEnded,
    StepOutcome,
    StepPaused,
    StepStarted,
    TagWritten,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.machine import Command, Mode, State
from cellctl.control.operator import PromptRequest
from cellctl.errors import CellctlError
from cellctl.expr import BLANKS, evaluate, show_values
from cellctl.recipe import (
    AnyStep,
    ParallelStep,
    PromptStep,
    Recipe,
    RecipeIdentity,
    RepeatStep,
    iter_steps,
)
from cellctl.values import TagValue
from drivers.base import Value
from drivers.codecs import format_value

#: How many event lines the live view keeps.
LAST_EVENTS = 8


class StepStatus(enum.StrEnum):
    """Where a step stands in the current round."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    PAUSED = "paused"


_MARK = {
    StepStatus.PENDING: ("·", "dim"),
    StepStatus.RUNNING: ("▶", "bold cyan"),
    StepStatus.DONE: ("✓", "green"),
    StepStatus.SKIPPED: ("↷", "yellow"),
    StepStatus.FAILED: ("✗", "bold red"),
    StepStatus.INTERRUPTED: ("‖", "yellow"),
    StepStatus.PAUSED: ("⏸", "bold magenta"),
}

_STATE_STYLE = {
    State.EXECUTE: "bold green",
    State.COMPLETE: "bold green",
    State.HELD: "bold yellow",
    State.HOLDING: "yellow",
    State.UNHOLDING: "yellow",
    State.SUSPENDED: "bold yellow",
    State.STOPPED: "bold",
    State.ABORTING: "bold red",
    State.ABORTED: "bold red",
}

_OUTCOME_STATUS = {
    StepOutcome.DONE: StepStatus.DONE,
    StepOutcome.SKIPPED: StepStatus.SKIPPED,
    StepOutcome.FAILED: StepStatus.FAILED,
    StepOutcome.INTERRUPTED: StepStatus.INTERRUPTED,
}


#: The commands whose cause the view keeps on screen, and what the view calls them.
_CAUSE_OF = {
    Command.HOLD: "hold",
    Command.STOP: "stop",
    Command.ABORT: "abort",
    Command.SUSPEND: "suspend",
}


@dataclass
class _Counts:
    done: int = 0
    skipped: int = 0
    failed: int = 0


class RunModel:
    """What the live view shows, kept up to date from the controller's events."""

    def __init__(
        self,
        recipe: Recipe,
        identity: RecipeIdentity,
        cell_name: str,
        tag_values: Callable[[], list[TagValue]],
        parameters: Mapping[str, Value] | None = None,
        units: Mapping[str, str] | None = None,
    ) -> None:
        self.recipe = recipe
        self.identity = identity
        self.cell_name = cell_name
        self.tag_values = tag_values
        #: Each tag's unit (cellctl.cell.tags.tag_units), shown in the tag table.
        self.units: dict[str, str] = dict(units or {})
        self.parameters: dict[str, Value] = dict(parameters or {})
        self.steps: dict[str, AnyStep] = {path: step for step, path in iter_steps(recipe.steps)}
        self.state: State | None = None
        self.mode: Mode | None = None
        self.started: float | None = None  # time of the first Execute
        self.ended: BatchEnded | None = None
        self.status: dict[str, StepStatus] = dict.fromkeys(self.steps, StepStatus.PENDING)
        self.current: list[str] = []  # running steps, in start order (several in a parallel)
        self.rounds: dict[str, int] = {}  # repeat step path -> its current round
        self.waits: dict[str, WaitProgress] = {}
        self.trips: dict[str, Tripped] = {}
        self.safe_state: SafeStateWritten | None = None
        self.prompt: PromptRequest | None = None
        self.prompt_error = ""
        self.pause: StepPaused | None = None
        #: The question Unhold asks (a held step whose writes the safe state undid), or None.
        self.question: str | None = None
        #: The last Hold, Stop, Abort or Suspend and its cause, until the batch runs again.
        self.cause: tuple[Command, str] | None = None
        self.events: deque[str] = deque(maxlen=LAST_EVENTS)
        self.counts = _Counts()
        self._failed: set[str] = set()  # steps whose last end was a failure
        self.hint = ""
        #: The clock the view measures elapsed and remaining time with.
        self.clock: Callable[[], float] = time.time
        self.typed = ""

    # -- events ------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Take one controller event into the model."""
        line = event_line(event)
        if line is not None:
            self.events.append(line)
        if isinstance(event, StateChanged):
            self.state = event.target
            if event.target is State.EXECUTE and self.started is None:
                self.started = event.at
            if event.command in _CAUSE_OF:
                self.cause = (event.command, event.cause)
            elif event.target is State.EXECUTE:
                self.cause = None  # running again
        elif isinstance(event, ModeChanged):
            self.mode = event.mode
        elif isinstance(event, StepStarted):
            self._started(event)
        elif isinstance(event, StepEnded):
            self._ended(event)
        elif isinstance(event, WaitProgress):
            self.waits[event.path] = event
        elif isinstance(event, Tripped):
            self.trips[event.interlock] = event
        elif isinstance(event, TripCleared):
            self.trips.pop(event.interlock, None)
        elif isinstance(event, SafeStateWritten):
            self.safe_state = event
        elif isinstance(event, PromptShown):
            self._prompt_shown(event)
        elif isinstance(event, PromptAnswered):
            if self.prompt is not None and self.prompt.path == event.path:
                self.clear_prompt()
        elif isinstance(event, StepPaused):
            self.pause = event
            self.status[event.path] = StepStatus.PAUSED
        elif isinstance(event, BatchEnded):
            self.ended = event
            cut = (StepStatus.RUNNING, StepStatus.PAUSED)  # cut short by an abort or a stop
            for path, status in self.status.items():
                if status in cut and event.state is not State.COMPLETE:
                    self.status[path] = StepStatus.INTERRUPTED
            self.current.clear()
            self.waits.clear()
            self.pause = None
            self.clear_prompt()

    def _started(self, event: StepStarted) -> None:
        repeat = self._repeat_of(event.path)
        if repeat is not None and event.round is not None:
            if self.rounds.get(repeat) != event.round:
                # A new round: the body's marks start over.
                for path in self.steps:
                    if path.startswith(f"{repeat}."):
                        self.status[path] = StepStatus.PENDING
            self.rounds[repeat] = event.round
        self.status[event.path] = StepStatus.RUNNING
        if event.path not in self.current:
            self.current.append(event.path)
        if self.pause is not None and self.pause.path == event.path:
            self.pause = None

    def _ended(self, event: StepEnded) -> None:
        self.status[event.path] = _OUTCOME_STATUS[event.outcome]
        if event.path in self.current:
            self.current.remove(event.path)
        self.waits.pop(event.path, None)
        if self.pause is not None and self.pause.path == event.path:
            self.pause = None
        if self.prompt is not None and self.prompt.path == event.path:
            self.clear_prompt()
        if self._is_container(event.path):
            return
        # "failed" counts steps that ended failed: one retried or skipped after a failure
        # counts as done or skipped (its failure stays among the faults).
        if event.outcome in (StepOutcome.DONE, StepOutcome.SKIPPED) and event.path in self._failed:
            self._failed.discard(event.path)
            self.counts.failed -= 1
        if event.outcome is StepOutcome.DONE:
            self.counts.done += 1
        elif event.outcome is StepOutcome.SKIPPED:
            self.counts.skipped += 1
        elif event.outcome is StepOutcome.FAILED and event.path not in self._failed:
            self._failed.add(event.path)
            self.counts.failed += 1

    def _prompt_shown(self, event: PromptShown) -> None:
        step = self.steps.get(event.path)
        answer = step.answer if isinstance(step, PromptStep) else None
        if self.prompt is None or self.prompt.path != event.path:
            self.prompt = PromptRequest(event.path, event.step_id, event.text, answer)
            self.typed = ""
            self.prompt_error = ""

    def clear_prompt(self) -> None:
        """Forget the prompt on show and what was typed for it."""
        self.prompt = None
        self.typed = ""
        self.prompt_error = ""

    def _is_container(self, path: str) -> bool:
        return isinstance(self.steps.get(path), RepeatStep | ParallelStep)

    def _repeat_of(self, path: str) -> str | None:
        """The innermost repeat step around `path`, if any."""
        parts = path.split(".")
        for end in range(len(parts) - 1, 0, -1):
            prefix = ".".join(parts[:end])
            if isinstance(self.steps.get(prefix), RepeatStep):
                return prefix
        return None

    # -- derived -----------------------------------------------------------------------------

    def elapsed(self, now: float | None = None) -> float:
        """Seconds since the first Execute (to the end of the batch once it ended)."""
        if self.ended is not None:
            return self.ended.duration
        if self.started is None:
            return 0.0
        return max(0.0, (self.clock() if now is None else now) - self.started)

    def rounds_of(self, path: str) -> int | None:
        """How many rounds the repeat step at `path` runs, when its parameters tell."""
        step = self.steps.get(path)
        if not isinstance(step, RepeatStep):
            return None
        try:
            total = evaluate(step.repeat, self.parameters)
        except CellctlError:
            return None
        return total if isinstance(total, int) and not isinstance(total, bool) else None


# ---------------------------------------------------------------------------------------------
# Plain lines


def _trip_text(event: Tripped) -> str:
    values = f" ({show_values(event.values)})" if event.values else ""
    return f"TRIP {event.interlock}: {event.condition}{values} -> {event.action}"


def _safe_text(event: SafeStateWritten) -> str:
    if not event.results:
        return "the cell file has no safe state"
    return ", ".join(
        f"{r.tag} = {format_value(r.value)} " + ("ok" if r.error is None else f"FAILED: {r.error}")
        for r in event.results
    )


def _name(event: StepStarted | StepEnded | StepPaused | WaitProgress) -> str:
    if event.step_id:
        return event.step_id
    return event.kind if isinstance(event, StepStarted) else f"#{event.path}"


def describe(event: Event) -> str | None:
    """What an event says, in one line without a time; None for events too chatty to print."""
    if isinstance(event, StateChanged):
        how = f" ({event.command})" if event.command is not None else ""
        cause = f": {event.cause}" if event.cause else ""
        return f"state {event.source} -> {event.target}{how}{cause}"
    if isinstance(event, ModeChanged):
        return f"mode {event.mode}"
    if isinstance(event, CommandRefused):
        return f"{event.command} refused: {event.reason}"
    if isinstance(event, StepStarted):
        round_ = f" (round {event.round})" if event.round is not None else ""
        detail = f": {event.detail}" if event.detail else ""
        return f"step {event.path} {_name(event)} started{round_}{detail}"
    if isinstance(event, StepEnded):
        error = f": {event.error}" if event.error else ""
        return f"step {event.path} {_name(event)} {event.outcome}{error}"
    if isinstance(event, WaitProgress):
        if not event.met:
            return None
        values = f" ({show_values(event.values)})" if event.values else ""
        return f"step {event.path} {_name(event)} met: {event.condition}{values}"
    if isinstance(event, TagWritten):
        return f"wrote {event.tag} = {format_value(event.value)}"
    if isinstance(event, MethodCalled):
        args = ", ".join(f"{name}={format_value(v)}" for name, v in event.args.items())
        return f"called {event.method}({args}) -> {format_value(event.result)}"
    if isinstance(event, Tripped):
        return _trip_text(event)
    if isinstance(event, TripCleared):
        return f"trip cleared: {event.interlock}"
    if isinstance(event, SafeStateWritten):
        return f"safe state ({event.reason}): {_safe_text(event)}"
    if isinstance(event, PromptShown):
        return f"prompt {event.step_id}: {event.text}"
    if isinstance(event, PromptAnswered):
        by = f" (by {event.operator})" if event.operator else ""
        what = "acknowledged" if event.value is None else f"= {format_value(event.value)}"
        return f"prompt {event.step_id} {what}{by}"
    if isinstance(event, StepPaused):
        why = "breakpoint" if event.breakpoint else "stepping"
        preview = f": {'; '.join(event.preview)}" if event.preview else ""
        return f"paused before step {event.path} {_name(event)} ({why}){preview}"
    if isinstance(event, Notice):
        return event.text if event.level == "info" else f"{event.level}: {event.text}"
    if isinstance(event, BatchEnded):
        cause = f": {event.cause}" if event.cause else ""
        return f"batch ended {event.state} after {event.duration:.1f} s{cause}"
    return None


def clock(at: float) -> str:
    """Wall-clock time of day with milliseconds (HH:MM:SS.mmm), as the log files stamp it."""
    seconds, millis = divmod(round(at * 1000), 1000)
    return time.strftime("%H:%M:%S", time.localtime(seconds)) + f".{millis:03d}"


def event_line(event: Event) -> str | None:
    """One plain line per event, stamped with the wall clock; None for unmet wait progress."""
    text = describe(event)
    return None if text is None else f"{clock(event.at)} {text}"


def summary_lines(model: RunModel, ended: BatchEnded) -> list[str]:
    """The end of a batch: outcome, duration, step counts, faults and the cause."""
    counts = model.counts
    lines = [
        f"outcome: {ended.state}",
        f"duration: {ended.duration:.1f} s",
        f"steps: {counts.done} done, {counts.skipped} skipped, {counts.failed} failed",
    ]
    # The controller's list is the batch record's: the summary says what the record says.
    faults = ended.faults
    if faults:
        lines.append(f"faults: {len(faults)}")
        lines += [f"  {fault}" for fault in faults]
    else:
        lines.append("faults: none")
    if ended.state is not State.COMPLETE:
        lines.append(f"cause: {ended.cause or 'not given'}")
    return lines


# ---------------------------------------------------------------------------------------------
# Rendering (rich Text everywhere: tag values and texts from files are never markup)
#
# The view is a budget of rows. What the operator must see to act is placed first: the state,
# the cause of a hold, stop or abort, the trips, a pause or a prompt with its keys, and the
# keys legal now. What is left goes to the waits, then the step tree (a window around the
# running step), then the last events, then the tag table ("… 12 more"). Every line is one
# row: a line too long for the screen ends in an ellipsis, or, for what the operator must read
# whole (a cause, a trip's message, a prompt, a question), wraps at words into a few rows.

#: The most rows a prompt's or Unhold's question takes (its last row ends in an ellipsis past
#: that).
PROMPT_ROWS = 6
#: The most rows the cause of a hold, stop or abort, or a trip's message, takes.
CAUSE_ROWS = 4


def _line(text: Text | str = "", style: str = "") -> Text:
    """One row of the view: line breaks and tabs as spaces (a condition or a message folded
    over lines in YAML), never wrapped, an ellipsis where it is too long."""
    if isinstance(text, str):
        line = Text(text.translate(BLANKS), style=style)
    else:
        line = text
        line.plain = line.plain.translate(BLANKS)  # same length: the styles stay in place
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def _wrapped(text: str, width: int, max_rows: int, indent: str = "") -> list[str]:
    """`text` wrapped at words into rows of `width` (the rows after the first indented two
    more), at most `max_rows`: past that the last row ends in an ellipsis."""
    return textwrap.wrap(
        text,
        max(width, 10),
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,  # a word too long for a row ends in the row's ellipsis
        break_on_hyphens=False,
        max_lines=max(max_rows, 1),
        placeholder=" …",
    ) or [indent]


def _identity_line(model: RunModel) -> Text:
    text = Text()
    text.append(f"{model.cell_name}", style="bold")
    text.append(f" · {model.identity}")
    return _line(text)


def _state_line(model: RunModel) -> Text:
    text = Text("state ")
    if model.state is None:
        text.append("—")
    else:
        text.append(model.state.value, style=_STATE_STYLE.get(model.state, "bold"))
    text.append(" · mode ")
    mode = model.mode.value if model.mode is not None else "—"
    text.append(mode, style="bold magenta" if model.mode is Mode.MAINTENANCE else "")
    text.append(f" · elapsed {model.elapsed():.1f} s")
    return _line(text)


def _parameters_line(model: RunModel) -> list[Text]:
    if not model.parameters:
        return []
    shown = ", ".join(f"{name}={format_value(v)}" for name, v in model.parameters.items())
    return [_line(f"parameters {shown}")]


def _step_label(model: RunModel, path: str, step: AnyStep) -> Text:
    status = model.status[path]
    mark, style = _MARK[status]
    label = Text()
    label.append(f"{mark} ", style=style)
    name = step.id or step.kind
    current = path in model.current or status is StepStatus.PAUSED
    label.append(f"{path} {name}", style="bold reverse" if current else "")
    if isinstance(step, RepeatStep) and path in model.rounds:
        total = model.rounds_of(path)
        of = f"/{total}" if total is not None else ""
        label.append(f" (round {model.rounds[path]}{of})", style="cyan")
    if status not in (StepStatus.PENDING, StepStatus.RUNNING):
        label.append(f" {status}", style=style)
    return label


@dataclass
class _Node:
    label: Text
    path: str | None = None
    children: list[_Node] = field(default_factory=list)


def _focus(model: RunModel) -> str | None:
    """The step the tree's window is kept around: running, paused, else the next to run."""
    if model.current:
        return model.current[-1]
    if model.pause is not None:
        return model.pause.path
    for status in (StepStatus.FAILED, StepStatus.INTERRUPTED, StepStatus.PENDING):
        for path, now in model.status.items():
            if now is status:
                return path
    return None


def _tree_lines(model: RunModel) -> tuple[list[Text], int]:
    """The step tree drawn as rows (with rich Tree's guides), and the row of the focus step."""
    root = _Node(Text("steps", style="bold"))
    nodes: dict[str, _Node] = {}
    for path, step in model.steps.items():
        parent_path, _, _ = path.rpartition(".")
        if not parent_path:
            parent = root
        elif parent_path in nodes:
            parent = nodes[parent_path]
        else:
            # '4.1.2': '4.1' is branch 1 of the parallel step 4, a node of its own.
            owner, _, branch = parent_path.rpartition(".")
            parent = _Node(Text(f"branch {branch}", style="dim"))
            nodes[owner].children.append(parent)
            nodes[parent_path] = parent
        node = _Node(_step_label(model, path, step), path)
        parent.children.append(node)
        nodes[path] = node
    focus = _focus(model)
    lines = [_line(root.label)]
    at = 0

    def draw(node: _Node, prefix: str) -> None:
        nonlocal at
        for number, child in enumerate(node.children, 1):
            last = number == len(node.children)
            if child.path is not None and child.path == focus:
                at = len(lines)
            lines.append(
                _line(Text(prefix + ("└── " if last else "├── "), style="dim") + child.label)
            )
            draw(child, prefix + ("    " if last else "│   "))

    draw(root, "")
    return lines, at


def _window(lines: list[Text], focus: int, rows: int) -> list[Text]:
    """At most `rows` of `lines` around `focus` (a third above it, the rest below), with the
    rows left out counted where they are."""
    if len(lines) <= rows:
        return lines
    if rows <= 0:
        return []
    start = min(max(0, focus - (rows - 1) // 3), len(lines) - rows)
    shown = lines[start : start + rows]
    if rows >= 3:
        if start > 0:
            shown[0] = _line(f"  ⋮ {start + 1} more above", style="dim")
        below = len(lines) - (start + rows)
        if below > 0:
            shown[-1] = _line(f"  ⋮ {below + 1} more below", style="dim")
    return shown


def _wait_lines(model: RunModel, now: float) -> tuple[list[Text], list[list[Text]]]:
    """Per wait: its head row (condition, time left), and its rows of tag values."""
    heads: list[Text] = []
    values: list[list[Text]] = []
    for path, wait in model.waits.items():
        text = Text()
        text.append(f"wait {path} {_name(wait)}: ", style="bold")
        text.append(wait.condition)
        text.append("  met" if wait.met else "", style="green")
        if wait.deadline is not None:
            text.append(f"  ({max(0.0, wait.deadline - now):.1f} s left)")
        heads.append(_line(text))
        rows = []
        for tag, value in wait.values.items():
            row = Text(f"  {tag} = ")
            row.append(format_value(value), style="bold")
            rows.append(_line(row))
        values.append(rows)
    return heads, values


def _cause_lines(model: RunModel, width: int) -> list[Text]:
    """Why the batch is held, stopped, aborted or suspended (gone once it runs again)."""
    if model.cause is None:
        return []
    command, cause = model.cause
    if any(trip.message == cause for trip in model.trips.values()):
        return []  # the trip's own rows say it
    style = "bold red" if command is Command.ABORT else "bold yellow"
    text = f"cause of the {_CAUSE_OF[command]}: {cause or 'not given'}"
    return [_line(row, style=style) for row in _wrapped(text, width, CAUSE_ROWS)]


#: Rows with a flag: True for a row that must show, False for a detail row room permits.
_Rows = list[tuple[Text, bool]]


def _kept(rows: _Rows, details: int) -> list[Text]:
    """Every row that must show and the first `details` detail rows, in their order."""
    kept: list[Text] = []
    for row, must in rows:
        if must or details > 0:
            kept.append(row)
            details -= 0 if must else 1
    return kept


def _trip_rows(model: RunModel, width: int) -> _Rows:
    """The trips (their values are detail) and a failed safe state (the writes that did not
    fail are detail)."""
    rows: _Rows = []
    for trip in model.trips.values():
        head = Text()
        head.append(f"TRIP {trip.interlock}", style="bold red")
        head.append(f": {trip.condition} -> {trip.action}")
        rows.append((_line(head), True))
        rows += [(_line(f"  {tag} = {format_value(v)}"), False) for tag, v in trip.values.items()]
        if trip.message:
            rows += [(_line(row), True) for row in _wrapped(trip.message, width, CAUSE_ROWS, "  ")]
    safe = model.safe_state
    if safe is not None and not safe.ok:
        rows.append((_line(f"safe state ({safe.reason}) FAILED:", style="bold red"), True))
        for result in safe.results:
            outcome = "ok" if result.error is None else f"FAILED: {result.error}"
            row = _line(f"  {result.tag} = {format_value(result.value)} {outcome}")
            rows.append((row, result.error is not None))
    return rows


def _prompt_rows(model: RunModel, prompt: PromptRequest, width: int) -> _Rows:
    question = _wrapped(f"prompt {prompt.step_id}: {prompt.text}", width, PROMPT_ROWS)
    lines = [_line(row) for row in question]
    lines[0].stylize("bold", 0, len(f"prompt {prompt.step_id}:"))
    if prompt.answer is not None:
        lines.append(_line(f"  answer {prompt.answer.name}: {prompt.answer.describe_range()}"))
    if model.prompt_error:
        lines.append(_line(f"  {model.prompt_error}", style="red"))
    entry = Text("> ")
    entry.append(model.typed, style="bold")
    entry.append("▌  (Enter to answer)" if prompt.answer else "▌  (Enter to acknowledge)")
    lines.append(_line(entry))
    return [(line, True) for line in lines]


def _pending_rows(model: RunModel, width: int) -> _Rows:
    """What the controller waits for from the operator: a pause (its preview past the first
    row is detail) or a prompt, each with its keys."""
    if model.pause is not None:
        pause = model.pause
        why = "breakpoint" if pause.breakpoint else "stepping"
        rows: _Rows = [
            (_line(f"paused before step {pause.path} {_name(pause)} ({why})", style="bold"), True)
        ]
        rows += [(_line(f"  {line}"), n == 0) for n, line in enumerate(pause.preview)]
        keys = _line("Enter run · s skip · c continue · a abort", style="bold magenta")
        return [*rows, (keys, True)]
    if model.prompt is not None:
        return _prompt_rows(model, model.prompt, width)
    if model.question is not None:
        # Wrapped: the step and the undone tags show whatever the width (PROMPT_ROWS at most).
        wrapped = _wrapped(model.question, width, PROMPT_ROWS)
        keys = _line("r re-run the step · s skip it · a abort", style="bold magenta")
        return [*((_line(row, style="bold"), True) for row in wrapped), (keys, True)]
    return []


def _events(model: RunModel, rows: int) -> list[Text]:
    """The last `rows` events."""
    shown = list(model.events)[-rows:] if rows > 0 else []
    return [_line(line, style="dim") for line in shown]


#: Rows a tag table takes besides its tags: title, top border, header, its rule, bottom border.
_TABLE_FRAME = 5


@functools.lru_cache(maxsize=4)
def _measuring(width: int) -> Console:
    """A console that only measures renderables `width` columns wide (it writes nowhere)."""
    return Console(width=width, file=io.StringIO(), color_system=None, legacy_windows=False)


def _tags(model: RunModel, width: int, rows: int) -> list[RenderableType]:
    """The tag table in at most `rows` rows: as many tags as fit, then "… N more"."""
    values = model.tag_values()
    if not values or rows <= 0:
        return []
    measure = _measuring(width)

    def table(count: int) -> Table:
        made = tag_table(values[:count], title="tags", units=model.units)
        for column in made.columns:
            column.no_wrap = True
            column.overflow = "ellipsis"
        if count < len(values):
            more = Text(f"… {len(values) - count} more", style="dim")
            made.add_row(more, *[""] * (len(made.columns) - 1))
        return made

    # Every tag takes a row at least (no_wrap): more than this cannot fit, and each try below
    # renders the table, so the first one is the most that can.
    fits = len(values) <= rows - _TABLE_FRAME
    count = len(values) if fits else max(rows - _TABLE_FRAME - 1, 0)  # a row for "… N more"
    while count > 0:
        made = table(count)
        height = len(measure.render_lines(made, measure.options, pad=False))
        if height <= rows:
            return [made]
        count = max(0, count - (height - rows))
    return [_line(f"tags: … {len(values)} more", style="dim")]


def render(model: RunModel, width: int, height: int) -> RenderableType:
    """The live view on a `width` × `height` screen: what the operator must see to act always,
    the rest as room allows (tags give up room first, then events, then the step tree)."""
    now = model.clock()
    height = max(height, 1)
    trips, pending = _trip_rows(model, width), _pending_rows(model, width)
    hint = [_line(model.hint, style="bold")] if model.hint else []
    state, cause = [_state_line(model)], _cause_lines(model, width)
    must = [*state, *cause, *_kept(trips, 0), *_kept(pending, 0), *hint]
    if len(must) >= height:  # too small a screen even for these: the keys last of all
        return Group(*must[-height:])
    room = height - len(must)

    def take(lines: list[Text]) -> list[Text]:
        nonlocal room
        kept = lines[: max(room, 0)]
        room -= len(kept)
        return kept

    # Filled in order of importance, shown in the order of the screen.
    trip_details = len(take([row for row, needed in trips if not needed]))
    pending_details = len(take([row for row, needed in pending if not needed]))
    heads, values = _wait_lines(model, now)
    waits: list[Text] = []
    for head, rows in zip(take(heads), values, strict=False):
        waits += [head, *take(rows)]
    identity = take([_identity_line(model)])
    parameters = take(_parameters_line(model))
    tree_lines, focus = _tree_lines(model)
    tree = take(_window(tree_lines, focus, room))
    events = take(_events(model, room))
    tags = _tags(model, width, room)
    parts: list[RenderableType] = [
        *identity,
        *state,
        *parameters,
        *tree,
        *waits,
        *tags,
        *events,
        *cause,
        *_kept(trips, trip_details),
        *_kept(pending, pending_details),
        *hint,
    ]
    return Group(*parts)


class FittedView:
    """The live view as a rich renderable: rendered to the size of the console showing it."""

    def __init__(self, model: RunModel) -> None:
        self.model = model

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """Render the model to the console's width and height."""
        height = max(options.height or console.height, 1)
        view = render(self.model, options.max_width, height)
        # render() counts every row as one. Should a row still take more, the rows kept are the
        # bottom ones, where the keys are (a terminal's "crop" would keep the top ones).
        lines = console.render_lines(view, options.update(height=None), pad=False)
        for line in lines[-height:]:
            yield from line
            yield Segment.line()
