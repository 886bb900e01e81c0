"""The batch as plain text: one line per event (for non-terminals and the view's last events)
and the summary printed when the batch has ended."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cellctl.control.events import (
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
    StepEvent,
    StepPaused,
    StepStarted,
    TagWritten,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.journal.location import journal_option
from cellctl.control.machine import State
from cellctl.control.parts import PartsCount
from cellctl.expr import show_values
from drivers.base import Value
from drivers.codecs import format_value

if TYPE_CHECKING:  # the model imports event_line from here
    from cellctl.cli.views.run_model import RunModel


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


def step_name(event: StepEvent) -> str:
    """How a line names the step: its id, else its kind (when started) or its place."""
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
        return f"step {event.path} {step_name(event)} started{round_}{detail}"
    if isinstance(event, StepEnded):
        error = f": {event.error}" if event.error else ""
        return f"step {event.path} {step_name(event)} {event.outcome}{error}"
    if isinstance(event, WaitProgress):
        if not event.met:
            return None
        values = f" ({show_values(event.values)})" if event.values else ""
        return f"step {event.path} {step_name(event)} met: {event.condition}{values}"
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
        return f"paused before step {event.path} {step_name(event)} ({why}){preview}"
    if isinstance(event, Notice):
        return event.text if event.level == "info" else f"{event.level}: {event.text}"
    if isinstance(event, BatchEnded):
        cause = f": {event.cause}" if event.cause else ""
        return f"batch ended {event.state} after {event.duration:.1f} s{cause}"
    return None


def stays_held_text(event: BatchEnded) -> str:
    """The line of a resume's end that leaves the batch Held: it has not ended (no batch_ended
    row), so the line must not say it did."""
    cause = f": {event.cause}" if event.cause else ""
    return f"batch stays Held, unfinished, {event.duration:.1f} s since its start{cause}"


# The last second clock() rendered: a batch stamps many lines within one second.
_last_second: tuple[int, str] = (-1, "")


def clock(at: float) -> str:
    """Wall-clock time of day with milliseconds (HH:MM:SS.mmm), as the log files stamp it."""
    global _last_second
    seconds, millis = divmod(round(at * 1000), 1000)
    second, text = _last_second
    if second != seconds:
        text = time.strftime("%H:%M:%S", time.localtime(seconds))
        _last_second = (seconds, text)
    return f"{text}.{millis:03d}"


# The last event event_line() rendered and its line: the model and the printed lines both ask
# for each event's line, one after the other. Events are frozen, so the line cannot go stale.
_last_line: tuple[Event | None, str | None] = (None, None)


def event_line(event: Event) -> str | None:
    """One plain line per event, stamped with the wall clock; None for unmet wait progress."""
    global _last_line
    last, line = _last_line
    if last is event:
        return line
    text = describe(event)
    line = None if text is None else f"{clock(event.at)} {text}"
    _last_line = (event, line)
    return line


def summary_lines(model: RunModel, ended: BatchEnded) -> list[str]:
    """The end of a batch: outcome, duration, step counts, faults and the cause."""
    counts = model.counts
    # A resume that leaves the batch Held has not ended it: it stays unfinished.
    unfinished = model.resumed is not None and ended.state is State.HELD
    lines = [
        f"outcome: {ended.state}" + (", unfinished" if unfinished else ""),
        f"duration: {ended.duration:.1f} s" + (" so far" if unfinished else ""),
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


@dataclass(frozen=True)
class BatchIdentity:
    """What the summary says of the batch's record: its id, journal, parameters, operator and
    start (time.time())."""

    batch: str
    journal: Path
    parameters: Mapping[str, Value]
    operator: str
    started: float
    #: Set when the batch stays unfinished (a resume left it Held): the command that takes it
    #: up again, said instead of an end.
    resume: str | None = None


def _when(at: float) -> str:
    """A time for people: local date and time, with the UTC offset."""
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(at))


def parts_line(parts: PartsCount) -> str:
    """The summary's parts made: 'parts: 3 (press.cycles 120 -> 123)', or unknown and why."""
    made = parts.made()
    if made is None:
        return f"parts: unknown ({parts.why()})"
    return f"parts: {made} ({parts.counter} {parts.start} -> {parts.end})"


#: The summary's lines that hold a command to copy: never broken by the view, on a terminal
#: too (the terminal folds a long one; copied, it is whole).
COMMAND_LINES = ("verify: ", "report: ", "resume: ")


def record_lines(
    record: BatchIdentity,
    ended: float,
    head: str | None,
    failure: str | None,
    *,
    parts: PartsCount | None = None,
) -> list[str]:
    """The summary's lines about the batch record: the batch id, its parameters, operator,
    start and end (or, unfinished, the command that takes it up again), the parts made (when
    the recipe names a counter), the chain's head hash once on disk (else why not), and the
    commands that show and check it."""
    params = ", ".join(f"{n}={format_value(v)}" for n, v in record.parameters.items())
    journal = journal_option(record.journal)
    lines = [
        f"batch: {record.batch}",
        f"parameters: {params or 'none'}",
        f"operator: {record.operator}",
        f"started: {_when(record.started)}",
    ]
    if record.resume is None:
        lines.append(f"ended: {_when(ended)}")
    else:
        lines.append("unfinished: the batch stays unfinished and Held (no end recorded)")
        lines.append(f"resume: {record.resume}")
    if parts is not None:
        lines.append(parts_line(parts))
    if failure is not None:
        lines.append(f"journal: {record.journal}: NOT fully written: {failure}")
    if head is not None:
        lines.append(f"head hash: {head}")
        lines.append(f"verify: cellctl audit verify {record.batch} --head {head}{journal}")
    lines.append(f"report: cellctl report {record.batch}{journal}")
    return lines
