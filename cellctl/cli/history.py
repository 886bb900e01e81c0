"""`cellctl history`: the last batches in the journal, newest first."""

from __future__ import annotations

from typing import Annotated

import typer

from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.audit import JournalOption, journal_path


@app.command()
def history(
    last: Annotated[
        int, typer.Option("--last", metavar="N", min=1, help="show the last N batches")
    ] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON (a list of batches)")] = False,
    journal: JournalOption = None,
) -> None:
    """The last batches: batch, recipe and version, outcome, start, duration, operator, parts."""
    # sqlite3 and the views load for this command only.
    import json

    from cellctl.reports import history_json, history_lines, history_table, read_history

    path = journal_path(journal)
    # Read-only: reading the record never creates a journal, and never writes to one.
    if as_json:  # the same JSON as the web view's /api/history
        consoles.out.print_json(json.dumps(history_json(path, last)))
        return
    summaries = read_history(path, last)
    if not summaries:
        consoles.out.print(f"no batch in journal {path}", markup=False, soft_wrap=True)
        return
    consoles.show(lambda: history_table(summaries), lambda: history_lines(summaries))
