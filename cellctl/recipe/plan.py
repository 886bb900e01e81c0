"""`cellctl plan`: a recipe's dry run, contacting no device.

The plan is the recipe's step tree with its parameters resolved: what each step does, the tags
it writes and reads, the devices it touches, and the worst-case duration — every wait and call
running to its timeout, every delay, every retry, repeats multiplied, parallel branches taking
the longest. A prompt without its own timeout waits for the operator as long as it takes: such
prompts are not counted but listed beside the duration. A repeat count or an `if` that only
parameters decide is resolved; one that reads tags or answers is shown as decided at run time.
"""

from __future__ import annotations

import ast
import copy
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from rich.console import Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from cellctl import expr
from cellctl.cell import Cell
from cellctl.durations import format_duration
from cellctl.recipe import (
    AnyStep,
    CallStep,
    DelayStep,
    LoadedRecipe,
    OnError,
    ParallelStep,
    PromptStep,
    RepeatStep,
    SetStep,
    Wait,
    WaitStep,
    parse_parameters,
)
from drivers.base import Value
from drivers.points import DataType


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

    def to_json(self) -> dict[str, Any]:
        """The plan as JSON-ready data."""
        return asdict(self)


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
        worst_case=_total(step.worst_case for step in steps),
        operator_prompts=tuple(planner.prompts),
        unbounded=tuple(planner.unbounded),
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


def _total(parts: Iterator[float | None]) -> float | None:
    """The sum of worst cases; None when any is not known."""
    total = 0.0
    for part in parts:
        if part is None:
            return None
        total += part
    return total


@dataclass
class _Part:
    """What a step's handler finds; build() adds what every step kind shares."""

    action: str
    timeout: float | None = None
    worst_case: float | None = 0.0
    branches: tuple[tuple[PlanStep, ...], ...] = ()
    count: int | None = None
    writes: list[str] = field(default_factory=list)
    reads: list[str] = field(default_factory=list)
    devices: list[str] = field(default_factory=list)


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
        if not self.skipping:
            self.unbounded.append(reason)

    def block(self, steps: Sequence[AnyStep], prefix: str) -> tuple[PlanStep, ...]:
        return tuple(self.step(step, f"{prefix}{number}") for number, step in enumerate(steps, 1))

    def step(self, step: AnyStep, path: str) -> PlanStep:
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
        self, step: AnyStep, path: str, condition: str | None, runs: bool | None, reads: list[str]
    ) -> PlanStep:
        part = self.handlers[type(step)](self, step, path)
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
        )

    # One handler per step kind: what the step does, touches and may take.

    def set_step(self, step: SetStep, path: str) -> _Part:
        part = _Part("set ")
        shown = []
        for tag, value in step.set.items():
            mark = "" if step.idempotent(tag) else " (not idempotent: not repeated blindly)"
            shown.append(f"{tag} = {self.resolve(value)[0]}{mark}")
            part.writes.append(tag)
            part.reads += self.tags(value)
        part.action += ", ".join(shown)
        part.timeout = step.timeout
        if step.wait is not None:
            part.action += f", then wait until {self.wait(step.wait)}"
            part.reads += self.tags(step.wait.until) + list(step.wait.changed)
            part.timeout = step.timeout or self.default_timeout
        part.worst_case = part.timeout or 0.0
        return part

    def wait_step(self, step: WaitStep, path: str) -> _Part:
        timeout = step.timeout or self.default_timeout
        part = _Part(f"wait until {self.wait(step.wait)}", timeout, timeout or 0.0)
        part.reads += self.tags(step.wait.until) + list(step.wait.changed)
        return part

    def wait(self, wait: Wait) -> str:
        """A wait with parameters resolved: 'press.cycle_done; changed: press.cycles'."""
        return wait.describe(until=self.resolve(wait.until)[0])

    def call_step(self, step: CallStep, path: str) -> _Part:
        timeout = step.timeout or self.default_timeout
        args = ", ".join(f"{name}={self.resolve(value)[0]}" for name, value in step.args.items())
        result = f" → {step.result}" if step.result is not None else ""
        method = self.cell.methods.get(step.call)
        if step.expect is not None:
            result += f", expect {self.resolve(step.expect)[0]}"
        elif method is not None and method.result is DataType.BOOL:
            result += ", expect true"  # a bool answer of false fails the step
        part = _Part(f"call {step.call}({args}){result}", timeout, timeout or 0.0)
        for value in step.args.values():
            part.reads += self.tags(value)
        part.devices += [method.device] if method is not None else []
        return part

    def delay_step(self, step: DelayStep, path: str) -> _Part:
        return _Part(f"delay {format_duration(step.delay)}", worst_case=step.delay)

    def repeat_step(self, step: RepeatStep, path: str) -> _Part:
        text, value = self.resolve(step.repeat)
        body = self.block(step.steps, f"{path}.")
        per_round = _total(s.worst_case for s in body)
        part = _Part("", branches=(body,))
        part.reads += self.tags(step.repeat)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
            part.count = int(value)
            part.action = f"repeat {part.count} times"
            part.worst_case = None if per_round is None else per_round * part.count
        else:
            part.action = f"repeat {text} times (the count is read at run time)"
            part.worst_case = None
            each = f" (each round {_human(per_round)})" if per_round is not None else ""
            self.note_unbounded(f"{step.label(path)} repeats a count read at run time{each}")
        if step.index is not None:
            part.action += f", round number in {step.index}"
        return part

    def parallel_step(self, step: ParallelStep, path: str) -> _Part:
        branches = tuple(
            self.block(branch, f"{path}.{number}.")
            for number, branch in enumerate(step.parallel, 1)
        )
        lengths = [_total(s.worst_case for s in branch) for branch in branches]
        longest = None if None in lengths else max(x for x in lengths if x is not None)
        action = f"run {len(branches)} branches together; all must finish"
        return _Part(action, worst_case=longest, branches=branches)

    def prompt_step(self, step: PromptStep, path: str) -> _Part:
        action = f"ask the operator: {_quote(step.prompt)}"
        if step.answer is not None:
            action += f" → {step.answer.name} ({step.answer.describe_range()})"
        if step.timeout is None and not self.skipping:
            self.prompts.append(step.id)
        return _Part(action, step.timeout, step.timeout or 0.0)

    handlers: ClassVar[dict[type[Any], Callable[[_Planner, Any, str], _Part]]] = {
        SetStep: set_step,
        WaitStep: wait_step,
        CallStep: call_step,
        DelayStep: delay_step,
        RepeatStep: repeat_step,
        ParallelStep: parallel_step,
        PromptStep: prompt_step,
    }

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
        return _substitute(expression, self.values), None


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


class _Parameters(ast.NodeTransformer):
    """Replaces parameter names by their values; dotted tag names are left alone."""

    def __init__(self, values: Mapping[str, Value]) -> None:
        self.values = values

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        return node  # a tag name such as press.force_kN: its first part is no parameter

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in self.values:
            return node
        value = self.values[node.id]
        if isinstance(value, bool):
            return ast.Name("true" if value else "false", ast.Load())
        return ast.Constant(value)


def _substitute(expression: expr.Expression, values: Mapping[str, Value]) -> str:
    """The expression's text with parameter values in place of parameter names."""
    if not expression.names & values.keys():
        return expression.text.strip()
    tree = _Parameters(values).visit(copy.deepcopy(expression.tree))
    return ast.unparse(tree)


def _quote(text: str) -> str:
    one_line = " ".join(text.split())
    return f'"{one_line}"'


def _human(seconds: float | None) -> str:
    """A duration for people: 500ms, 34s, 2m 41s, 1h 5m, 3d 4h; 'not known' for None."""
    if seconds is None:
        return "not known before the run"
    if not math.isfinite(seconds):
        return "too long to count"
    if seconds >= 1000 * 86400:
        return f"{seconds / 86400:.3g} days"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000, 1):g}ms"
    if seconds < 60:
        return f"{round(seconds, 2):g}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m {rest}s" if rest else f"{minutes}m"
    if seconds < 86400:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours}h {rest // 60}m" if rest // 60 else f"{hours}h"
    days, rest = divmod(round(seconds), 86400)
    return f"{days}d {rest // 3600}h" if rest // 3600 else f"{days}d"


# ---------------------------------------------------------------------------------------------
# Rendering: plain lines off a terminal, a rich Tree on one, JSON with --json.


def _head(step: PlanStep) -> str:
    name = f"{step.path} {step.id}" if step.id else step.path
    notes = []
    if step.condition is not None:
        state = {True: "runs", False: "skipped", None: "decided at run time"}[step.runs]
        notes.append(f"if {step.condition}: {state}")
    if step.timeout is not None:
        notes.append(f"timeout {format_duration(step.timeout)}")
    if step.on_error is not None:
        notes.append(f"on error: {step.on_error}")
    retries = step.on_error is not None and step.on_error.startswith("retry")
    if step.branches or retries or step.worst_case is None:
        notes.append(f"worst case {_human(step.worst_case)}")
    tail = "".join(f"  [{note}]" for note in notes)
    return f"{name}  {step.action}{tail}"


def _detail(step: PlanStep) -> str | None:
    parts = []
    if step.writes:
        parts.append("writes " + ", ".join(step.writes))
    if step.reads:
        parts.append("reads " + ", ".join(step.reads))
    if step.devices:
        parts.append(
            ("device " if len(step.devices) == 1 else "devices ") + ", ".join(step.devices)
        )
    return "; ".join(parts) or None


def _summary(plan: Plan) -> list[str]:
    worst = _human(plan.worst_case)
    if plan.worst_case is not None:
        worst += " (every wait and call to its timeout, every delay and retry)"
    lines = [
        f"devices touched: {', '.join(plan.devices) or 'none'}",
        f"tags written:    {', '.join(plan.writes) or 'none'}",
        f"tags read:       {', '.join(plan.reads) or 'none'}",
        f"worst case:      {worst}",
    ]
    if plan.operator_prompts:
        lines.append(
            "                 plus the operator's time at prompt(s) "
            + ", ".join(plan.operator_prompts)
        )
    lines += [f"                 {reason}" for reason in plan.unbounded]
    return lines


def _header(plan: Plan) -> list[str]:
    lines = [
        f"recipe {plan.name} v{plan.version}  sha256:{plan.sha256}",
        f"file   {plan.recipe_file}",
        f"cell   {plan.cell} ({plan.cell_file})",
    ]
    if plan.description:
        lines.append(f"       {plan.description}")
    if plan.parameters:
        lines.append("parameters:")
        width = max(len(p.name) for p in plan.parameters)
        for p in plan.parameters:
            unit = f" {p.unit}" if p.unit else ""
            lines.append(f"  {p.name:<{width}} = {expr.show(p.value)}{unit}  ({p.source})")
    return lines


def plan_lines(plan: Plan) -> list[str]:
    """The plan as plain text lines (for a file, a pipe or a log)."""
    lines = [*_header(plan), "steps:"]

    def add(steps: Sequence[PlanStep], depth: int) -> None:
        for step in steps:
            indent = "  " * depth
            lines.append(f"{indent}{_head(step)}")
            detail = _detail(step)
            if detail:
                lines.append(f"{indent}    {detail}")
            for number, branch in enumerate(step.branches, 1):
                if step.kind == "parallel":
                    lines.append(f"{indent}  branch {number}:")
                    add(branch, depth + 2)
                else:
                    add(branch, depth + 1)

    add(plan.steps, 1)
    return [*lines, *_summary(plan)]


def plan_view(plan: Plan) -> RenderableType:
    """The plan for a terminal: header, the steps as a rich Tree, summary."""
    header = Text("\n".join(_header(plan)))
    header.stylize("bold", 0, len(header.plain.splitlines()[0]))
    tree = Tree(Text("steps:", style="bold"))

    def add(parent: Tree, steps: Sequence[PlanStep]) -> None:
        for step in steps:
            label = Text(_head(step), style="dim" if step.runs is False else "")
            label.stylize("bold", 0, len(f"{step.path} {step.id}" if step.id else step.path))
            detail = _detail(step)
            if detail:
                label.append("\n" + detail, style="cyan")
            node = parent.add(label)
            for number, branch in enumerate(step.branches, 1):
                add(node.add(f"branch {number}") if step.kind == "parallel" else node, branch)

    add(tree, plan.steps)
    return Group(header, tree, Text("\n".join(_summary(plan))))
