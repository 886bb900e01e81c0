"""What a client shows of the batch loaded beyond its status: the step tree from the recipe's
plan with each step's state, the wait in progress and its tags, the last safe state written;
and the released recipes with their parameters (the web view's load form)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from cellctl.control.events import (
    Event,
    SafeStateWritten,
    StepEnded,
    StepPaused,
    StepStarted,
    WaitProgress,
)
from cellctl.recipe import LoadedRecipe
from cellctl.recipe.plan import Plan
from cellctl.recipe.steps.planning import PlanStep


@dataclass
class StepRow:
    """One step of the tree as a client shows it."""

    path: str
    depth: int
    label: str
    kind: str
    detail: str
    worst_case: float | None
    state: str = "pending"  # pending, running, paused, done, skipped, failed, interrupted


@dataclass
class Wait:
    """The wait in progress: its condition and the tags it reads."""

    condition: str
    tags: list[str]


@dataclass
class SafeStateShown:
    """The last safe state written: why, when, and each tag's result."""

    reason: str
    at: float
    results: list[dict[str, Any]]


@dataclass
class BatchDetail:
    """The step tree of a batch, kept current from its controller's events."""

    steps: list[StepRow]
    worst_case: float | None
    running: str | None = None
    started_at: float | None = None
    wait: Wait | None = None
    safe_state: SafeStateShown | None = None
    _rows: dict[str, StepRow] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, plan: Plan) -> BatchDetail:
        """The tree of a batch's plan, every step pending."""
        rows = list(_flatten(plan.steps, 0))
        return cls(rows, plan.worst_case, _rows={row.path: row for row in rows})

    def apply(self, event: Event) -> bool:
        """Take one controller event in; True when it changed what a client shows."""
        if isinstance(event, StepStarted):
            self._state(event.path, "running")
            self.running = event.path
            self.started_at = self.started_at or event.at
            return True
        if isinstance(event, StepEnded):
            self._state(event.path, event.outcome.value)
            if self.running == event.path:
                self.running = None
            if self.wait is not None:
                self.wait = None
            return True
        if isinstance(event, StepPaused):
            self._state(event.path, "paused")
            return True
        if isinstance(event, WaitProgress):
            shown = None if event.met else Wait(event.condition, sorted(event.values))
            changed = shown != self.wait
            self.wait = shown
            return changed
        if isinstance(event, SafeStateWritten):
            results = [{"tag": r.tag, "value": r.value, "error": r.error} for r in event.results]
            self.safe_state = SafeStateShown(event.reason, event.at, results)
            return True
        return False

    def _state(self, path: str, state: str) -> None:
        row = self._rows.get(path)
        if row is not None:
            row.state = state

    def to_json(self) -> dict[str, Any]:
        """The detail as the web view's JSON (see the contract of cellctl.web)."""
        shown = asdict(self)
        shown.pop("_rows", None)
        return shown


def _flatten(steps: Iterable[PlanStep], depth: int) -> Iterable[StepRow]:
    """Every step of a plan, depth-first, blocks before their bodies."""
    for step in steps:
        name = f"step {step.id!r}" if step.id else step.kind
        yield StepRow(step.path, depth, name, step.kind, step.action, step.worst_case)
        for branch in step.branches:
            yield from _flatten(branch, depth + 1)


def recipe_info(loaded: LoadedRecipe) -> dict[str, Any]:
    """A released recipe as the load form needs it: name, version, description, parameters."""
    recipe = loaded.recipe
    parameters = [
        {
            "name": name,
            "type": str(p.type),
            "min": p.min,
            "max": p.max,
            "choices": p.choices,
            "unit": p.unit,
            "default": p.default,
            "description": p.description,
        }
        for name, p in recipe.parameters.items()
    ]
    return {
        "name": recipe.recipe,
        "version": recipe.version,
        "description": recipe.description,
        "file": str(loaded.path),
        "parameters": parameters,
    }
