"""The step tree of the live run view: rows with rich Tree's guides, and a window of them kept
around the running step."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.text import Text

from cellctl.cli.views.rows import view_row
from cellctl.cli.views.run_model import RunModel, StepStatus
from cellctl.recipe import AnyStep

_MARK = {
    StepStatus.PENDING: ("·", "dim"),
    StepStatus.RUNNING: ("▶", "bold cyan"),
    StepStatus.DONE: ("✓", "green"),
    StepStatus.SKIPPED: ("↷", "yellow"),
    StepStatus.FAILED: ("✗", "bold red"),
    StepStatus.INTERRUPTED: ("‖", "yellow"),
    StepStatus.PAUSED: ("⏸", "bold magenta"),
}


def _step_label(model: RunModel, path: str, step: AnyStep) -> Text:
    status = model.status[path]
    mark, style = _MARK[status]
    label = Text()
    label.append(f"{mark} ", style=style)
    name = step.id or step.kind
    current = path in model.current or status is StepStatus.PAUSED
    label.append(f"{path} {name}", style="bold reverse" if current else "")
    if path in model.rounds:  # a repeat that has begun a round
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


def tree_lines(model: RunModel) -> tuple[list[Text], int]:
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
    lines = [view_row(root.label)]
    at = 0

    def draw(node: _Node, prefix: str) -> None:
        nonlocal at
        for number, child in enumerate(node.children, 1):
            last = number == len(node.children)
            if child.path is not None and child.path == focus:
                at = len(lines)
            lines.append(
                view_row(Text(prefix + ("└── " if last else "├── "), style="dim") + child.label)
            )
            draw(child, prefix + ("    " if last else "│   "))

    draw(root, "")
    return lines, at


def window(lines: list[Text], focus: int, rows: int) -> list[Text]:
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
            shown[0] = view_row(f"  ⋮ {start + 1} more above", style="dim")
        below = len(lines) - (start + rows)
        if below > 0:
            shown[-1] = view_row(f"  ⋮ {below + 1} more below", style="dim")
    return shown
