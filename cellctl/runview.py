"""The live view of a batch: a model kept from the controller's events, its rich rendering,
one plain line per event for non-terminals, and the summary at the end (no I/O here)."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rich.console import Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from cellctl.connect import TagValue
from cellctl.errors import CellctlError
from cellctl.events import (
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
from cellctl.expr import evaluate, show_values
from cellctl.liveview import tag_table
from cellctl.machine import Mode, State
from cellctl.operator import PromptRequest
from cellctl.recipe import (
    AnyStep,
    ParallelStep,
    PromptStep,
    Recipe,
    RecipeIdentity,
    RepeatStep,
    iter_steps,
)
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
    ) -> None:
        self.recipe = recipe
        self.identity = identity
        self.cell_name = cell_name
        self.tag_values = tag_values
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


def _header(model: RunModel) -> Text:
    text = Text()
    text.append(f"{model.cell_name}", style="bold")
    text.append(f" · {model.identity}\n")
    text.append("state ")
    if model.state is None:
        text.append("—")
    else:
        text.append(model.state.value, style=_STATE_STYLE.get(model.state, "bold"))
    text.append(" · mode ")
    mode = model.mode.value if model.mode is not None else "—"
    text.append(mode, style="bold magenta" if model.mode is Mode.MAINTENANCE else "")
    text.append(f" · elapsed {model.elapsed():.1f} s")
    if model.parameters:
        text.append("\nparameters ")
        text.append(", ".join(f"{name}={format_value(v)}" for name, v in model.parameters.items()))
    return text


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


def _step_tree(model: RunModel) -> Tree:
    tree = Tree(Text("steps", style="bold"))
    nodes: dict[str, Tree] = {}
    for path, step in model.steps.items():
        parent_path, _, _ = path.rpartition(".")
        if not parent_path:
            parent = tree
        elif parent_path in nodes:
            parent = nodes[parent_path]
        else:
            # '4.1.2': '4.1' is branch 1 of the parallel step 4, a node of its own.
            owner, _, branch = parent_path.rpartition(".")
            parent = nodes[owner].add(Text(f"branch {branch}", style="dim"))
            nodes[parent_path] = parent
        nodes[path] = parent.add(_step_label(model, path, step))
    return tree


def _waits(model: RunModel, now: float) -> Text:
    text = Text()
    for path, wait in model.waits.items():
        text.append(f"wait {path} {_name(wait)}: ", style="bold")
        text.append(wait.condition)
        text.append("  met" if wait.met else "", style="green")
        if wait.deadline is not None:
            text.append(f"  ({max(0.0, wait.deadline - now):.1f} s left)")
        for tag, value in wait.values.items():
            text.append(f"\n  {tag} = ")
            text.append(format_value(value), style="bold")
        text.append("\n")
    text.rstrip()
    return text


def _trips(model: RunModel) -> Text:
    text = Text()
    for trip in model.trips.values():
        text.append("TRIP ", style="bold red")
        text.append(trip.interlock, style="bold red")
        text.append(f": {trip.condition} -> {trip.action}\n")
        for tag, value in trip.values.items():
            text.append(f"  {tag} = {format_value(value)}\n")
        if trip.message:
            text.append(f"  {trip.message}\n")
    if model.safe_state is not None and not model.safe_state.ok:
        text.append(f"safe state ({model.safe_state.reason}) FAILED:\n", style="bold red")
        for result in model.safe_state.results:
            outcome = "ok" if result.error is None else f"FAILED: {result.error}"
            text.append(f"  {result.tag} = {format_value(result.value)} {outcome}\n")
    text.rstrip()
    return text


def _pending(model: RunModel) -> Text:
    text = Text()
    if model.pause is not None:
        pause = model.pause
        why = "breakpoint" if pause.breakpoint else "stepping"
        text.append(f"paused before step {pause.path} {_name(pause)} ({why})\n", style="bold")
        for line in pause.preview:
            text.append(f"  {line}\n")
        text.append("Enter run · s skip · c continue · a abort", style="bold magenta")
    elif model.prompt is not None:
        prompt = model.prompt
        text.append(f"prompt {prompt.step_id}: ", style="bold")
        text.append(prompt.text)
        if prompt.answer is not None:
            text.append(f"\n  answer {prompt.answer.name}: {prompt.answer.describe_range()}")
        if model.prompt_error:
            text.append(f"\n  {model.prompt_error}", style="red")
        text.append("\n> ")
        text.append(model.typed, style="bold")
        text.append("▌  (Enter to answer)" if prompt.answer else "▌  (Enter to acknowledge)")
    return text


def render(model: RunModel) -> RenderableType:
    """The whole live view: header, steps, waits, tags, trips, pause or prompt, events, hint."""
    now = model.clock()
    waits = _waits(model, now)
    parts: list[RenderableType] = [_header(model), _step_tree(model)]
    if waits.plain:
        parts.append(waits)
    values = model.tag_values()
    if values:
        parts.append(tag_table(values, title="tags"))
    parts += [section for section in (_trips(model), _pending(model)) if section.plain]
    if model.events:
        parts.append(Text("\n".join(model.events), style="dim"))
    if model.hint:
        parts.append(Text(model.hint, style="bold"))
    return Group(*parts)
