"""`cellctl history`'s table and `cellctl report`'s text: the batch record as lines."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from cellctl.control.journal.location import journal_option
from cellctl.control.journal.record import BatchRecord, BatchSummary, value_text

#: How a timeline line marks faults and operator actions (not only a colour).
MARKS = {"fault": "!", "operator": ">", None: " "}


def when(at: str | None) -> str:
    """A row time stamp as 'YYYY-MM-DD HH:MM:SS' (UTC), or '-'."""
    return "-" if at is None else at[:19].replace("T", " ")


def short_when(at: str | None) -> str:
    """A row time stamp to the minute, 'YYYY-MM-DD HH:MM' (UTC), or '-'."""
    return "-" if at is None else at[:16].replace("T", " ")


def table_when(at: str | None, year: str) -> str:
    """short_when without the year when it is `year` ('MM-DD HH:MM'): the history's table
    then holds a real batch id, the recipe and its version, and the operator on 80 columns."""
    if at is None or not at.startswith(f"{year}-"):
        return short_when(at)
    return short_when(at)[5:]


def span(seconds: float | None, *, short: bool = False) -> str:
    """A duration as '4.2 s', '12 min 03 s' or '2 h 05 min'; `short`, in at most 6 characters:
    '4.2s', '12m03s', '2h05m', '31h'; '-' when unknown."""
    if seconds is None:
        return "-"
    s, m, h, gap = ("s", "m", "h", "") if short else (" s", " min", " h", " ")
    if seconds < 60:
        return f"{seconds:.1f}{s}"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}{m}{gap}{secs:02d}{s}"
    hours, minutes = divmod(minutes, 60)
    if short and hours >= 10:
        return f"{hours}h"
    return f"{hours}{h}{gap}{minutes:02d}{m}"


def _recipe(s: BatchSummary) -> str:
    if s.recipe is None:
        return "-"
    return s.recipe if s.version is None else f"{s.recipe} v{s.version}"


def _parts(s: BatchSummary) -> str:
    return "-" if s.parts_made is None else str(s.parts_made)


HISTORY_HEADER = ("batch", "recipe", "outcome", "start (UTC)", "took", "operator", "parts")


def history_row(s: BatchSummary) -> tuple[str, ...]:
    """One batch's cells, in HISTORY_HEADER's order."""
    return (
        s.batch,
        _recipe(s),
        s.outcome,
        short_when(s.start),
        span(s.duration, short=True),
        s.operator or "-",
        _parts(s),
    )


def history_table(summaries: Sequence[BatchSummary]) -> Table:
    """The history as a table for a terminal: long cells wrap (80 columns hold it)."""
    # One space between columns: 80 columns hold a 24-character batch id and the rest.
    table = Table(*HISTORY_HEADER, box=None, padding=(0, 1, 0, 0), header_style="bold")
    year = time.strftime("%Y", time.gmtime())
    for s in summaries:
        row = history_row(s)
        table.add_row(*row[:3], table_when(s.start, year), *row[4:])
    # Nothing is cut short: the batch id, the outcome and the start are read whole, never
    # folded; the rest wraps (folded within a word when it must) to fit the screen.
    for n, column in enumerate(table.columns):
        column.overflow = "fold"
        column.no_wrap = n in (0, 2, 3)
    table.columns[6].justify = "right"
    return table


def history_lines(summaries: Sequence[BatchSummary]) -> list[str]:
    """The history as tab-separated lines, for scripts."""
    return ["\t".join(HISTORY_HEADER)] + ["\t".join(history_row(s)) for s in summaries]


def identity_lines(record: BatchRecord) -> list[str]:
    """The record's identity and parameters: what ran, where, by whom, how it ended."""
    ended = "UNFINISHED: no batch_ended row, the process stopped mid-batch"
    version = "-" if record.version is None else record.version
    lines = [
        f"batch      {record.batch}",
        f"recipe     {record.recipe or '-'} v{version}  sha256 {record.recipe_sha256 or '-'}",
        f"cell       {record.cell or '-'}  sha256 {record.cell_sha256 or '-'}",
        f"operator   {record.operator or '-'}   mode {record.mode or '-'}"
        + (f"   host {record.host} pid {record.pid}" if record.host or record.pid else ""),
        f"start      {when(record.start)} UTC",
        f"end        {when(record.end)} UTC" if not record.unfinished else f"end        {ended}",
        f"outcome    {record.outcome}"
        + (f" ({record.cause})" if record.cause else "")
        + (f"   exit code {record.exit_code}" if record.exit_code is not None else ""),
        f"duration   {span(record.duration)}"
        f"   steps done {'-' if record.steps_done is None else record.steps_done}"
        f"   parts made {'-' if record.parts_made is None else record.parts_made}",
        f"head       {record.head or '-'}  ({record.rows} rows)",
    ]
    if record.parameters:
        lines.append("parameters")
        width = max(len(name) for name in record.parameters)
        lines += [
            f"  {name:<{width}}  {value_text(value)}"
            for name, value in sorted(record.parameters.items())
        ]
    else:
        lines.append("parameters none")
    return lines


def report_lines(record: BatchRecord, journal: Path | None = None) -> list[str]:
    """The whole record as text: identity and parameters, then the timeline, one event a
    line ('!' a fault, '>' an operator action), then the writes of unknown outcome."""
    lines = identity_lines(record)
    lines += ["", "timeline (offset from start; ! fault, > operator action)"]
    for entry in record.timeline:
        lines.append(f"  {entry.offset:>10.3f} s {MARKS.get(entry.flag, ' ')} {entry.text}")
    unknown = record.unknown_writes
    if unknown:
        lines += ["", "writes of UNKNOWN OUTCOME (an intent, no confirmation):"]
        lines += [
            f"  {w.tag} := {value_text(w.value)}  step {w.step_id or w.path or '-'}"
            f"  intent {when(w.intent_at)} UTC"
            for w in unknown
        ]
    where = "" if journal is None else journal_option(journal)
    lines += [
        "",
        f"verify: cellctl audit verify {record.batch} --head {record.head or '-'}{where}",
    ]
    return lines
