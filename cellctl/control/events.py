"""What the controller tells its views, its log and (later) its journal: one frozen dataclass
per kind of event, each stamped with time.time()."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from cellctl.control.packml import Command, Mode, State
from drivers.base import Value


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of every controller event."""

    at: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class StateChanged(Event):
    """The machine went from `source` to `target`; `command` is None for a state complete."""

    source: State
    target: State
    command: Command | None
    cause: str = ""
    #: The interlock whose trip took the command (None: the operator, the recipe or the cell).
    interlock: str | None = None


@dataclass(frozen=True, kw_only=True)
class ModeChanged(Event):
    """The unit mode changed."""

    mode: Mode


@dataclass(frozen=True, kw_only=True)
class CommandRefused(Event):
    """An operator command that was refused, and why (illegal here, or blocked by a trip)."""

    command: Command
    reason: str
    #: An interlock or a lost device refused it (a fault), not a key pressed in the wrong state.
    blocked: bool = False
    #: Who gave it, when a person did (the command layer says); None for the controller's own.
    user: str | None = None


class StepOutcome(enum.StrEnum):
    """How a step ended."""

    DONE = "done"
    SKIPPED = "skipped"  # its `if` was false, on_error skip, or the operator skipped it
    FAILED = "failed"
    INTERRUPTED = "interrupted"  # a wait/delay/prompt cut by hold, suspend, stop; re-entered


@dataclass(frozen=True, kw_only=True)
class StepEvent(Event):
    """An event of one step: `path` is its place ('2.3'), `step_id` its id when it has one."""

    path: str
    step_id: str | None


@dataclass(frozen=True, kw_only=True)
class StepStarted(StepEvent):
    """A step began (or was re-entered); `label` is how to name it."""

    kind: str
    label: str
    detail: str = ""  # what it does, values resolved: "conveyor.run := true"
    round: int | None = None  # the repeat round (1..N) of the innermost repeat, if any


@dataclass(frozen=True, kw_only=True)
class StepEnded(StepEvent):
    """A step ended: done, skipped, failed (with the error) or interrupted."""

    label: str
    outcome: StepOutcome
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class WaitProgress(StepEvent):
    """A wait's condition was evaluated on fresh values of its tags."""

    condition: str
    values: dict[str, Value | None]
    met: bool
    deadline: float | None = None  # time.time() at which it times out


@dataclass(frozen=True, kw_only=True)
class TagWritten(Event):
    """A write the device confirmed (`path` None for the safe state or a restore)."""

    tag: str
    value: Value
    path: str | None = None


@dataclass(frozen=True, kw_only=True)
class MethodCalled(Event):
    """A device method call that returned."""

    method: str
    args: dict[str, Value]
    result: Value | None
    path: str


#: The name prefix of a lost device's trip: 'comm-loss:<device>'.
COMM_LOSS = "comm-loss:"
#: The name prefix of the trip of a device that answers with a BAD value: 'bad-value:<device>'.
BAD_VALUE = "bad-value:"


@dataclass(frozen=True, kw_only=True)
class Tripped(Event):
    """An interlock tripped: one of the cell file's, a lost device ('comm-loss:<device>') or
    a device that answers with a value that cannot be trusted ('bad-value:<device>')."""

    interlock: str
    action: str  # hold, stop or abort
    condition: str
    values: dict[str, Value | None]
    message: str
    #: The device whose own trip this is (comm-loss or bad-value); None for a cell-file interlock.
    device: str | None = None

    @property
    def of_device(self) -> bool:
        """True for a device's own trip (comm-loss or bad-value), not a cell-file interlock."""
        return self.device is not None


@dataclass(frozen=True, kw_only=True)
class TripCleared(Event):
    """A tripped interlock's condition is false again (Start, Unhold and Reset are free again)."""

    interlock: str


@dataclass(frozen=True)
class SafeWrite:
    """One tag of the safe state: the value written and, when it failed, why."""

    tag: str
    value: Value
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class SafeStateWritten(Event):
    """The safe state was applied: every tag attempted, each result recorded."""

    reason: str
    results: tuple[SafeWrite, ...]

    @property
    def ok(self) -> bool:
        """True when every tag of the safe state was written."""
        return all(r.error is None for r in self.results)


@dataclass(frozen=True, kw_only=True)
class PromptShown(Event):
    """A prompt waits for the operator."""

    path: str
    step_id: str
    text: str


@dataclass(frozen=True, kw_only=True)
class PromptAnswered(Event):
    """The operator answered (value None for a plain acknowledgement)."""

    path: str
    step_id: str
    value: Value | None
    operator: str | None = None


@dataclass(frozen=True, kw_only=True)
class StepPaused(StepEvent):
    """Stepping or a breakpoint: the executor waits before the step; `preview` shows what it
    will do, values resolved."""

    label: str
    preview: tuple[str, ...]
    breakpoint: bool


@dataclass(frozen=True, kw_only=True)
class Notice(Event):
    """Anything else worth a line: a restore write, a decision, a device's health."""

    text: str
    level: str = "info"  # info, warning, error


@dataclass(frozen=True, kw_only=True)
class UnholdAsks(Notice):
    """Held: the safe state undid a step's own writes, so Unhold asks the operator to re-run
    it, skip it or abort; queued at any time while held (a lost device's safe state may be
    confirmed long after Held). A notice too: its text is the line a log or a script reads."""

    path: str
    step_id: str | None
    question: str  # names the step and each undone tag


@dataclass(frozen=True, kw_only=True)
class BatchEnded(Event):
    """The batch ended in `state` (Complete, Stopped, Aborted or Held)."""

    state: State
    duration: float
    steps_done: int
    faults: tuple[str, ...]
    cause: str | None = None
