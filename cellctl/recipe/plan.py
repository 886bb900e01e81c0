"""`cellctl plan`: a recipe's dry run, contacting no device.

The plan is the recipe's step tree with its parameters resolved: what each step does, the tags
it writes and reads, the devices it touches, and the worst-case duration — every wait and call
running to its timeout, every delay, every retry, repeats multiplied, parallel branches taking
the longest. A prompt without its own timeout waits for the operator as long as it takes: such
prompts are not counted but listed beside the duration. A repeat count or an `if` that only
parameters decide is resolved; one that reads tags or answers is shown as decided at run time.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cellctl import expr
from cellctl.cell import Cell
from cellctl.durations import format_duration
from cellctl.recipe.model import LoadedRecipe, parse_parameters
from cellctl.recipe.steps import OnError, StepBase
from cellctl.recipe.steps.planning import PlanStep, total_worst
from drivers.base import Value

__all__ = ["Plan", "PlanStep", "PlannedParameter", "make_plan"]


@dataclass(frozen=True)
class PlannedParameter:
    """A parameter's value for this run and where it came from ('default' or '-p')."""

    name: str
    value: Value
    unit: str | None
    source: str


@dataclass(frozen=True)
class Plan:
    """A recipe's dry run: identity, parameters, step tree, devices, tags and worst case."""

    name: str
    version: int
    sha256: str
    recipe_file: str
    cell: str
    cell_file: str
    description: str | None
    parameters: tuple[PlannedParameter, ...]
    steps: tuple[PlanStep, ...]
    devices: tuple[str, ...]
    writes: tuple[str, ...]
    reads: tuple[str, ...]
    #: Worst-case seconds of the whole recipe, operator prompts aside; None when not known.
    worst_case: float | None
    #: Ids of prompts without a timeout that may run: they wait for the operator.
    operator_prompts: tuple[str, ...]
    #: Why the worst case is not known before the run (repeat counts read at run time).
    unbounded: tuple[str, ...] = ()
    #: The tag that counts the parts made (the recipe's `parts: {counter: TAG}`), or None.
    parts_counter: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return asdict(self, dict_factory=_json_fields)


#: Fields the views read that the JSON already says otherwise (PlanStep.on_error's words).
_NOT_IN_JSON = frozenset({"retries"})


def _json_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    return {key: value for key, value in pairs if key not in _NOT_IN_JSON}


def make_plan(loaded: LoadedRecipe, assignments: Sequence[str] = ()) -> Plan:
    """The plan of a loaded recipe with `-p name=value` assignments; raises BadValue."""
    recipe = loaded.recipe
    values = parse_parameters(recipe, assignments)
    given = {text.partition("=")[0].strip() for text in assignments}
    planner = _Planner(loaded.cell, values, recipe.defaults.timeout)
    steps = planner.block(recipe.steps, "")
    running = list(_walk(steps))
    cell_file = loaded.cell.source
    return Plan(
        name=recipe.recipe,
        version=recipe.version,
        sha256=loaded.identity.sha256,
        recipe_file=str(loaded.path),
        cell=loaded.cell.cell,
        cell_file=str(cell_file) if cell_file is not None else "",
        description=recipe.description,
        parameters=tuple(
            PlannedParameter(
                name,
                value,
                recipe.parameters[name].unit,
                "-p" if name in given else "default",
            )
            for name, value in values.items()
        ),
        steps=steps,
        devices=_union(step.devices for step in running),
        writes=_union(step.writes for step in running),
        reads=_union(step.reads for step in running),
        worst_case=total_worst(step.worst_case for step in steps),
        operator_prompts=tuple(planner.prompts),
        unbounded=tuple(planner.unbounded),
        parts_counter=recipe.parts.counter if recipe.parts is not None else None,
    )


def _walk(steps: Sequence[PlanStep]) -> Iterator[PlanStep]:
    """Every step that may run, depth-first: skipped steps and what they hold are left out."""
    for step in steps:
        if step.runs is False:
            continue
        yield step
        for branch in step.branches:
            yield from _walk(branch)


def _union(groups: Iterator[tuple[str, ...]]) -> tuple[str, ...]:
    """The names of all groups, each once, in first-seen order."""
    return tuple(dict.fromkeys(name for group in groups for name in group))


class _Planner:
    """Builds PlanSteps; collects untimed prompts and the reasons a worst case is unknown."""

    def __init__(self, cell: Cell, values: Mapping[str, Value], timeout: float | None) -> None:
        self.cell = cell
        self.values = values
        self.default_timeout = timeout
        self.prompts: list[str] = []
        self.unbounded: list[str] = []
        self.skipping = 0  # > 0 while inside a step its `if` skips

    def note_unbounded(self, reason: str) -> None:
        """Why the worst case is not known before the run (unless the step is skipped)."""
        if not self.skipping:
            self.unbounded.append(reason)

    def block(self, steps: Sequence[StepBase], prefix: str) -> tuple[PlanStep, ...]:
        """Plan a list of steps (paths after `prefix`)."""
        return tuple(self.step(step, f"{prefix}{number}") for number, step in enumerate(steps, 1))

    def step(self, step: StepBase, path: str) -> PlanStep:
        """One step: its `if` decided by the parameters, or at run time."""
        condition: str | None = None
        runs: bool | None = True
        reads: list[str] = []
        if step.if_ is not None:
            condition, decided = self.resolve(step.if_)
            if isinstance(decided, bool):
                condition, runs = step.if_.text.strip(), decided  # the parameters are shown
            else:
                runs = None
            reads += self.tags(step.if_)
        if runs is False:
            self.skipping += 1  # what a skipped step holds is no prompt and no open end
        try:
            return self.build(step, path, condition, runs, reads)
        finally:
            if runs is False:
                self.skipping -= 1

    def build(
        self, step: StepBase, path: str, condition: str | None, runs: bool | None, reads: list[str]
    ) -> PlanStep:
        part = step.plan(self, path)
        reads = reads + part.reads
        devices = part.devices + [
            self.cell.tags[tag].device for tag in part.writes + reads if tag in self.cell.tags
        ]
        worst = _with_retries(part.worst_case, step.on_error)
        if worst is not None and not math.isfinite(worst):
            # Durations are bounded, but deep repeats multiply past what a float holds.
            self.note_unbounded(f"{step.label(path)}: its worst case is too long to count")
            worst = None
        return PlanStep(
            path=path,
            id=step.id,
            kind=step.kind,
            action=part.action,
            condition=condition,
            runs=runs,
            timeout=part.timeout,
            on_error=_on_error(step.on_error),
            writes=tuple(dict.fromkeys(part.writes)),
            reads=tuple(dict.fromkeys(reads)),
            devices=tuple(dict.fromkeys(devices)),
            worst_case=0.0 if runs is False else worst,
            branches=part.branches,
            count=part.count,
            retries=step.on_error.retries if step.on_error is not None else 0,
        )

    def note_prompt(self, step_id: str) -> None:
        """A prompt that waits for the operator as long as it takes (unless skipped)."""
        if not self.skipping:
            self.prompts.append(step_id)

    def tags(self, expression: expr.Expression) -> list[str]:
        """The cell's tags an expression reads, in name order."""
        return sorted(name for name in expression.names if name in self.cell.tags)

    def resolve(self, expression: expr.Expression) -> tuple[str, Value | None]:
        """The expression shown with parameter values, and its value when parameters decide it."""
        if expression.names <= self.values.keys():
            try:
                value = expr.evaluate(expression, self.values)
            except expr.EvaluationError:
                value = None
            if value is not None:
                text = expr.show(value)
                plain = expression.text.strip()
                return (text if plain == text else f"{text} ({plain})"), value
        return expr.render(expression, self.values), None


def _with_retries(worst: float | None, on_error: OnError | None) -> float | None:
    """A step's worst case with its retries: every attempt times out, with the delay between."""
    if worst is None or on_error is None or on_error.action != "retry":
        return worst
    retries = on_error.retries
    return worst * (retries + 1) + (on_error.delay or 0.0) * retries


def _on_error(on_error: OnError | None) -> str | None:
    if on_error is None:
        return None
    if on_error.action != "retry":
        return on_error.action
    times = "once" if on_error.retries == 1 else f"{on_error.retries} times"
    delay = f", {format_duration(on_error.delay)} apart" if on_error.delay else ""
    return f"retry {times}{delay}"
