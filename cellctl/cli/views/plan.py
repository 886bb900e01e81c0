"""`cellctl plan`'s output: plain lines off a terminal, a rich Tree on one (JSON is the plan's
own `to_json`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rich.console import Group, RenderableType
from rich.text import Text
from rich.tree import Tree

from cellctl import expr
from cellctl.durations import format_duration, human_duration
from cellctl.recipe.plan import Plan, PlanStep


def _rows(steps: Sequence[PlanStep], depth: int = 1) -> Iterator[tuple[int, PlanStep | str]]:
    """The step tree in reading order, each row at its depth: a step, or the label of one of
    a parallel step's branches (a repeat's body sits right under its step)."""
    for step in steps:
        yield depth, step
        for number, branch in enumerate(step.branches, 1):
            if step.kind == "parallel":
                yield depth + 1, f"branch {number}"
                yield from _rows(branch, depth + 2)
            else:
                yield from _rows(branch, depth + 1)


def _name(step: PlanStep) -> str:
    return f"{step.path} {step.id}" if step.id else step.path


def _head(step: PlanStep) -> str:
    notes = []
    if step.condition is not None:
        state = {True: "runs", False: "skipped", None: "decided at run time"}[step.runs]
        notes.append(f"if {step.condition}: {state}")
    if step.timeout is not None:
        notes.append(f"timeout {format_duration(step.timeout)}")
    if step.on_error is not None:
        notes.append(f"on error: {step.on_error}")
    if step.branches or step.retries or step.worst_case is None:
        notes.append(f"worst case {human_duration(step.worst_case)}")
    tail = "".join(f"  [{note}]" for note in notes)
    return f"{_name(step)}  {step.action}{tail}"


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
    worst = human_duration(plan.worst_case)
    if plan.worst_case is not None:
        worst += " (every wait and call to its timeout, every delay and retry)"
    lines = [
        f"devices touched: {', '.join(plan.devices) or 'none'}",
        f"tags written:    {', '.join(plan.writes) or 'none'}",
        f"tags read:       {', '.join(plan.reads) or 'none'}",
    ]
    if plan.parts_counter is not None:
        lines.append(f"parts counted:   by {plan.parts_counter} (its count at the end - at Start)")
    lines.append(f"worst case:      {worst}")
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
    for depth, row in _rows(plan.steps):
        indent = "  " * depth
        if isinstance(row, str):
            lines.append(f"{indent}{row}:")
            continue
        lines.append(f"{indent}{_head(row)}")
        detail = _detail(row)
        if detail:
            lines.append(f"{indent}    {detail}")
    return [*lines, *_summary(plan)]


def _label(step: PlanStep) -> Text:
    """A step's node in the Tree: its head (dim when skipped), its name bold, its detail below."""
    label = Text(_head(step), style="dim" if step.runs is False else "")
    label.stylize("bold", 0, len(_name(step)))
    detail = _detail(step)
    if detail:
        label.append("\n" + detail, style="cyan")
    return label


def plan_view(plan: Plan) -> RenderableType:
    """The plan for a terminal: header, the steps as a rich Tree, summary."""
    header = Text("\n".join(_header(plan)))
    header.stylize("bold", 0, len(header.plain.splitlines()[0]))
    tree = Tree(Text("steps:", style="bold"))
    parents = {0: tree}  # the last node at each depth: the parent of the next row one deeper
    for depth, row in _rows(plan.steps):
        parents[depth] = parents[depth - 1].add(row if isinstance(row, str) else _label(row))
    return Group(header, tree, Text("\n".join(_summary(plan))))
