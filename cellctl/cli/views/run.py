"""The live view of a batch: the model (run_model) rendered with rich to the size of the
screen; the plain lines and the summary are in summary (all re-exported here; no I/O)."""

from __future__ import annotations

import functools
import io

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from cellctl.cli.views.rows import view_row, wrap_rows
from cellctl.cli.views.run_model import CAUSE_OF, LAST_EVENTS, RunModel, StepStatus
from cellctl.cli.views.run_tree import tree_lines, window
from cellctl.cli.views.summary import clock, describe, event_line, step_name, summary_lines
from cellctl.cli.views.tags import tag_table
from cellctl.control.machine import Command, Mode, State
from cellctl.control.operator import PromptRequest
from drivers.codecs import format_value

__all__ = [
    "CAUSE_ROWS",
    "LAST_EVENTS",
    "PROMPT_ROWS",
    "FittedView",
    "RunModel",
    "StepStatus",
    "clock",
    "describe",
    "event_line",
    "render",
    "summary_lines",
]

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


def _identity_line(model: RunModel) -> Text:
    text = Text()
    text.append(f"{model.cell_name}", style="bold")
    text.append(f" · {model.identity}")
    return view_row(text)


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
    return view_row(text)


def _parameters_line(model: RunModel) -> list[Text]:
    if not model.parameters:
        return []
    shown = ", ".join(f"{name}={format_value(v)}" for name, v in model.parameters.items())
    return [view_row(f"parameters {shown}")]


def _wait_lines(model: RunModel, now: float) -> tuple[list[Text], list[list[Text]]]:
    """Per wait: its head row (condition, time left), and its rows of tag values."""
    heads: list[Text] = []
    values: list[list[Text]] = []
    for path, wait in model.waits.items():
        text = Text()
        text.append(f"wait {path} {step_name(wait)}: ", style="bold")
        text.append(wait.condition)
        text.append("  met" if wait.met else "", style="green")
        if wait.deadline is not None:
            text.append(f"  ({max(0.0, wait.deadline - now):.1f} s left)")
        heads.append(view_row(text))
        rows = []
        for tag, value in wait.values.items():
            row = Text(f"  {tag} = ")
            row.append(format_value(value), style="bold")
            rows.append(view_row(row))
        values.append(rows)
    return heads, values


def _cause_lines(model: RunModel, width: int) -> list[Text]:
    """Why the batch is held, stopped, aborted or suspended (gone once it runs again)."""
    if model.cause is None:
        return []
    command, cause = model.cause
    if model.cause_interlock in model.trips:
        return []  # the trip's own rows say it
    style = "bold red" if command is Command.ABORT else "bold yellow"
    text = f"cause of the {CAUSE_OF[command]}: {cause or 'not given'}"
    return [view_row(row, style=style) for row in wrap_rows(text, width, CAUSE_ROWS)]


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
        rows.append((view_row(head), True))
        rows += [
            (view_row(f"  {tag} = {format_value(v)}"), False) for tag, v in trip.values.items()
        ]
        if trip.message:
            rows += [
                (view_row(row), True) for row in wrap_rows(trip.message, width, CAUSE_ROWS, "  ")
            ]
    safe = model.safe_state
    if safe is not None and not safe.ok:
        rows.append((view_row(f"safe state ({safe.reason}) FAILED:", style="bold red"), True))
        for result in safe.results:
            outcome = "ok" if result.error is None else f"FAILED: {result.error}"
            row = view_row(f"  {result.tag} = {format_value(result.value)} {outcome}")
            rows.append((row, result.error is not None))
    return rows


def _prompt_rows(model: RunModel, prompt: PromptRequest, width: int) -> _Rows:
    question = wrap_rows(f"prompt {prompt.step_id}: {prompt.text}", width, PROMPT_ROWS)
    lines = [view_row(row) for row in question]
    lines[0].stylize("bold", 0, len(f"prompt {prompt.step_id}:"))
    if prompt.answer is not None:
        lines.append(view_row(f"  answer {prompt.answer.name}: {prompt.answer.describe_range()}"))
    if model.prompt_error:
        lines.append(view_row(f"  {model.prompt_error}", style="red"))
    entry = Text("> ")
    entry.append(model.typed, style="bold")
    entry.append("▌  (Enter to answer)" if prompt.answer else "▌  (Enter to acknowledge)")
    lines.append(view_row(entry))
    return [(line, True) for line in lines]


def _pending_rows(model: RunModel, width: int) -> _Rows:
    """What the controller waits for from the operator: a pause (its preview past the first
    row is detail) or a prompt, each with its keys."""
    if model.pause is not None:
        pause = model.pause
        why = "breakpoint" if pause.breakpoint else "stepping"
        rows: _Rows = [
            (
                view_row(
                    f"paused before step {pause.path} {step_name(pause)} ({why})", style="bold"
                ),
                True,
            )
        ]
        rows += [(view_row(f"  {line}"), n == 0) for n, line in enumerate(pause.preview)]
        keys = view_row("Enter run · s skip · c continue · a abort", style="bold magenta")
        return [*rows, (keys, True)]
    if model.prompt is not None:
        return _prompt_rows(model, model.prompt, width)
    if model.question is not None:
        # Wrapped: the step and the undone tags show whatever the width (PROMPT_ROWS at most).
        wrapped = wrap_rows(model.question, width, PROMPT_ROWS)
        keys = view_row("r re-run the step · s skip it · a abort", style="bold magenta")
        return [*((view_row(row, style="bold"), True) for row in wrapped), (keys, True)]
    return []


def _events(model: RunModel, rows: int) -> list[Text]:
    """The last `rows` events."""
    shown = list(model.events)[-rows:] if rows > 0 else []
    return [view_row(line, style="dim") for line in shown]


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
    return [view_row(f"tags: … {len(values)} more", style="dim")]


def render(model: RunModel, width: int, height: int) -> RenderableType:
    """The live view on a `width` × `height` screen: what the operator must see to act always,
    the rest as room allows (tags give up room first, then events, then the step tree)."""
    now = model.clock()
    height = max(height, 1)
    trips, pending = _trip_rows(model, width), _pending_rows(model, width)
    hint = [view_row(model.hint, style="bold")] if model.hint else []
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
    steps, focus = tree_lines(model)
    tree = take(window(steps, focus, room))
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
