"""`cellctl resume [BATCH]`: take up a batch whose controller died mid-batch (its options as
`run`'s, plus `--choice`); the work is in cellctl.cli.resume_run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cellctl import exitcodes
from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.audit import JournalOption
from cellctl.cli.params import (
    DEFAULT_SAFE_WAIT,
    SafeWaitOption,
    operator_option,
    safe_wait_seconds,
    speed_option,
)

#: What `--choice` may say: Unhold's answer to the step in progress, or the end of the batch.
CHOICES = ("retry", "skip", "continue", "abort")


@app.command("resume")
def resume_batch(
    batch: Annotated[
        str | None,
        typer.Argument(
            metavar="[BATCH]",
            help="the unfinished batch, or the start of its id (default: the latest one)",
        ),
    ] = None,
    cell: Annotated[
        Path | None,
        typer.Option("--cell", "-c", help="the cell file (default: the one the batch ran on)"),
    ] = None,
    sim: Annotated[
        bool, typer.Option("--sim", help="start the cell's simulators in this process first")
    ] = False,
    speed: Annotated[float, speed_option("model time factor (--sim)")] = 1.0,
    answers: Annotated[
        list[str] | None,
        typer.Option("--answer", metavar="ID=VALUE", help="answer a prompt (repeatable)"),
    ] = None,
    operator: Annotated[str | None, operator_option("who takes the batch up (recorded)")] = None,
    choice: Annotated[
        str | None,
        typer.Option(
            "--choice",
            metavar="retry|skip|continue|abort",
            help="once Held: Unhold with this choice (continue: no question asked), or Abort",
        ),
    ] = None,
    safe_wait: SafeWaitOption = DEFAULT_SAFE_WAIT,
    journal: JournalOption = None,
) -> None:
    """Take up a batch whose controller stopped mid-batch: Held at its step, the safe state
    written; a write of unknown outcome is sent again only when the operator chooses retry."""
    from cellctl.cli.run_commands import check_speed, interactive

    check_speed(speed, sim)
    if choice is not None and choice not in CHOICES:
        consoles.err.print(
            f"error: --choice {choice}: choose one of {', '.join(CHOICES)}", markup=False
        )
        raise typer.Exit(exitcodes.BAD_INPUT)
    # The controller, the drivers and the journal load only once a batch is to be taken up.
    import asyncio

    from cellctl.cli.resume_run import ResumeOptions, resume_command

    options = ResumeOptions(
        batch=batch,
        cell=cell,
        sim=sim,
        speed=speed,
        answers=answers or [],
        operator=operator,
        choice=choice,
        interactive=interactive(),
        safe_wait=safe_wait_seconds(safe_wait),
        journal=journal,
    )
    code = asyncio.run(resume_command(options, consoles.out)())
    if code != exitcodes.OK:
        raise typer.Exit(code)
