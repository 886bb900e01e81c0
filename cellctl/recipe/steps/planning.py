"""What a step kind plans, and the planner as a kind sees it (`cellctl plan`: a dry run)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from cellctl import expr
from cellctl.cell import Cell
from drivers.base import Value

if TYPE_CHECKING:  # the steps' base class names this protocol in its signatures
    from cellctl.recipe.steps.base import StepBase

__all__ = ["PlanContext", "PlanPart", "PlanStep", "total_worst"]


@dataclass(frozen=True)
class PlanStep:
    """One step of the plan: what it does in words, what it touches, how long it may take."""

    path: str
    id: str | None
    kind: str
    action: str
    #: The step's `if` (as written when parameters decide it, else with their values in
    #: place), or None when it has none.
    condition: str | None
    #: False: skipped with these parameters; None: its `if` is decided at run time.
    runs: bool | None
    timeout: float | None
    on_error: str | None
    writes: tuple[str, ...]
    reads: tuple[str, ...]
    devices: tuple[str, ...]
    #: Worst-case seconds, nested steps included; None when not known before the run.
    worst_case: float | None
    #: A repeat's body (one branch) or a parallel step's branches.
    branches: tuple[tuple[PlanStep, ...], ...] = ()
    #: A repeat's count when parameters decide it, else None.
    count: int | None = None
    #: How many times on_error re-runs the step (0: it does not retry). Left out of the
    #: plan's JSON, whose `on_error` says it in words.
    retries: int = 0


@dataclass
class PlanPart:
    """What a step kind plans; the planner adds what every kind shares."""

    action: str
    timeout: float | None = None
    worst_case: float | None = 0.0
    branches: tuple[tuple[PlanStep, ...], ...] = ()
    count: int | None = None
    writes: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)


def total_worst(parts: Iterable[float | None]) -> float | None:
    """The sum of worst cases; None when any is not known."""
    total = 0.0
    for part in parts:
        if part is None:
            return None
        total += part
    return total


class PlanContext(Protocol):
    """The planner as a step kind sees it: the cell, the parameters' values, nested blocks."""

    @property
    def cell(self) -> Cell:
        """The cell the recipe runs on."""
        ...

    @property
    def default_timeout(self) -> float | None:
        """The recipe's default timeout for waits and calls."""
        ...

    def resolve(self, expression: expr.Expression) -> tuple[str, Value | None]:
        """The expression shown with parameter values, and its value when they decide it."""
        ...

    def tags(self, expression: expr.Expression) -> list[str]:
        """The cell's tags an expression reads, in name order."""
        ...

    def block(self, steps: Sequence[StepBase], prefix: str) -> tuple[PlanStep, ...]:
        """Plan a nested list of steps (paths after `prefix`)."""
        ...

    def note_unbounded(self, reason: str) -> None:
        """Why the worst case is not known before the run (unless the step is skipped)."""
        ...

    def note_prompt(self, step_id: str) -> None:
        """A prompt that waits for the operator as long as it takes (unless skipped)."""
        ...
