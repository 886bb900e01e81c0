"""`cellctl report BATCH`: one batch's full record, as text, JSON or one HTML file."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.audit import JournalOption, journal_path
from cellctl.errors import CellctlError


class ReportFormat(enum.StrEnum):
    """What `report` writes."""

    TEXT = "text"
    JSON = "json"
    HTML = "html"


class ReportNotWritten(CellctlError):
    """The output file of `report -o FILE` cannot be written (bad input: exit 1)."""


@app.command()
def report(
    batch: Annotated[
        str, typer.Argument(metavar="BATCH", help="the batch id (or a prefix naming one batch)")
    ],
    fmt: Annotated[
        ReportFormat, typer.Option("--format", metavar="text|json|html", help="what to write")
    ] = ReportFormat.TEXT,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", metavar="FILE", help="write to FILE (default: stdout)"),
    ] = None,
    journal: JournalOption = None,
) -> None:
    """A batch's full record: identity and parameters, then its timeline and device writes."""
    import json

    from cellctl.reports import read_record, report_html, report_lines

    # Read-only: reading the record never creates a journal, and never writes to one.
    path = journal_path(journal)
    record = read_record(path, batch)
    if fmt is ReportFormat.JSON:
        text = json.dumps(record.to_json(), indent=2, ensure_ascii=False) + "\n"
    elif fmt is ReportFormat.HTML:
        text = report_html(record, path)
    else:
        text = "\n".join(report_lines(record, path)) + "\n"
    if output is None:
        consoles.out.file.write(text)
        consoles.out.file.flush()
        return
    try:
        output.write_text(text, encoding="utf-8")
    except OSError as error:
        raise ReportNotWritten(f"cannot write {output}: {error.strerror or error}") from None
    consoles.err.print(f"report of batch {record.batch} written to {output}", markup=False)
