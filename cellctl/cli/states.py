"""`states`: the PackML state table, or its mermaid diagram."""

from __future__ import annotations

from typing import Annotated

import typer

from cellctl.cli import consoles
from cellctl.cli.app import app


@app.command()
def states(
    mermaid: Annotated[
        bool, typer.Option("--mermaid", help="a mermaid stateDiagram-v2 instead of the table")
    ] = False,
) -> None:
    """The PackML state table: for each state, where each command takes it."""
    # transitions and rich's tables load for this command only.
    from cellctl.cli.views.states import state_lines, state_table
    from cellctl.control import machine

    if mermaid:
        consoles.out.print(machine.mermaid(), markup=False)
        return
    rows = machine.state_table_rows()
    consoles.show(
        lambda: state_table(rows, consoles.out), lambda: state_lines(rows), soft_wrap=False
    )
