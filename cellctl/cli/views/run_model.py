"""What the live run view shows, kept up to date from the controller's events (no I/O here)."""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cellctl.cli.views.summary import clock, event_line, stays_held_text
from cellctl.control.events import (
    BatchEnded,
    Event,
    ModeChanged,
    PromptAnswered,
    PromptShown,
    SafeStateWritten,
    StateChanged,
    StepEnded,
    StepOutcome,
    StepPaused,
    StepStarted,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.machine import Command, Mode, State
from cellctl.control.operator import PromptRequest
from cellctl.control.resume import ResumePoint
from cellctl.errors import CellctlError
from cellctl.expr import evaluate
from cellctl.recipe import (
    AnyStep,
    PromptStep,
    Recipe,
    RecipeIdentity,
    RepeatStep,
    iter_steps,
)
from cellctl.values import TagValue
from drivers.base import Value

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


_OUTCOME_STATUS = {
    StepOutcome.DONE: StepStatus.DONE,
    StepOutcome.SKIPPED: StepStatus.SKIPPED,
    StepOutcome.FAILED: StepStatus.FAILED,
    StepOutcome.INTERRUPTED: StepStatus.INTERRUPTED,
}


#: The commands whose cause the view keeps on screen, and what the view calls them.
CAUSE_OF = {
    Command.HOLD: "hold",
    Command.STOP: "stop",
    Command.ABORT: "abort",
    Command.SUSPEND: "suspend",
}


def _before(path: str, target: str) -> bool:
    """True when the step at `path` comes before the one at `target` in the recipe (and is not
    a block around it): '1', '2.1' and '2.1.3' come before '2.2'; '2' does not."""
    for mine, theirs in zip(path.split("."), target.split("."), strict=False):
        if mine != theirs:
            return int(mine) < int(theirs)
    return False  # the same step, a block around it, or a step inside it


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
        #: The interlock whose trip took that command, if one did.
        self.cause_interlock: str | None = None
        self.events: deque[str] = deque(maxlen=LAST_EVENTS)
        self.counts = _Counts()
        self._failed: set[str] = set()  # steps whose last end was a failure
        self.hint = ""
        #: The clock the view measures elapsed and remaining time with.
        self.clock: Callable[[], float] = time.time
        self.typed = ""
        #: Where a resumed batch was taken up (resume_from), or None for a new batch.
        self.resumed: ResumePoint | None = None

    def resume_from(self, point: ResumePoint) -> None:
        """Take a crashed batch up at `point`: the steps it passes over (no events tell of
        them) are marked done, the rounds of the repeats around it set, its done steps counted."""
        self.resumed = point
        self.counts.done = point.steps_done
        target = point.path
        if target is None:  # no step had started: nothing passed over
            return
        self.rounds.update(point.rounds)
        for path in self.steps:
            ended = point.after and (path == target or path.startswith(f"{target}."))
            if ended or _before(path, target):
                # The point knows no outcome per step: one skipped before shows done too.
                self.status[path] = StepStatus.DONE

    # -- events ------------------------------------------------------------------------------

    def apply(self, event: Event) -> None:
        """Take one controller event into the model."""
        line = event_line(event)
        if isinstance(event, BatchEnded) and event.state is State.HELD and self.resumed:
            line = f"{clock(event.at)} {stays_held_text(event)}"  # a resume: it has not ended
        if line is not None:
            self.events.append(line)
        if isinstance(event, StateChanged):
            self.state = event.target
            if event.target is State.EXECUTE and self.started is None:
                self.started = event.at
            if event.command in CAUSE_OF:
                self.cause = (event.command, event.cause)
                self.cause_interlock = event.interlock
            elif event.target is State.EXECUTE:
                self.cause = self.cause_interlock = None  # running again
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
        step = self.steps.get(path)
        return step is not None and step.is_block

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
