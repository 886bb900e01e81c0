"""`run` and `demo`: their options turned into `RunOptions` for `cellctl.cli.batch`, which runs
the batch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cellctl import exitcodes
from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.audit import JournalOption
from cellctl.cli.params import (
    DEFAULT_SAFE_WAIT,
    ParamOption,
    RecipeArgument,
    RecipeCellOption,
    SafeWaitOption,
    operator_option,
    safe_wait_seconds,
    speed_option,
)
from cellctl.errors import CellctlError

#: Where the demo cell is: shipped in the installed package (pyproject.toml maps recipes/demo
#: to cellctl/_demo), or, run from a source tree, recipes/demo itself.
_PACKAGE = Path(__file__).resolve().parent.parent  # the cellctl package
DEMO_FOLDERS = (_PACKAGE / "_demo", _PACKAGE.parent / "recipes" / "demo")
DEMO_RECIPE = "press-fit.yaml"


class DemoMissing(CellctlError):
    """`demo` found no demo cell, or no press-fit recipe beside the cell it was given."""


def demo_cell() -> Path:
    """The demo cell file, installed or in the source tree."""
    for folder in DEMO_FOLDERS:
        if (folder / "cell.yaml").is_file():
            return folder / "cell.yaml"
    looked = " or ".join(str(folder / "cell.yaml") for folder in DEMO_FOLDERS)
    raise DemoMissing(f"the demo cell is not installed: no {looked} (reinstall cellctl)")


def interactive() -> bool:
    """True when somebody can answer at a terminal (stdin and stdout are terminals)."""
    return sys.stdin.isatty() and consoles.out.is_terminal


def check_speed(speed: float, sim: bool) -> None:
    """--speed without --sim is bad input (exit 1): it sets the simulators' time."""
    if speed != 1.0 and not sim:
        consoles.err.print("error: --speed sets the simulators' time; it needs --sim", markup=False)
        raise typer.Exit(exitcodes.BAD_INPUT)


@app.command("run")
def run_recipe(
    recipe: RecipeArgument,
    cell: RecipeCellOption = None,
    params: ParamOption = None,
    sim: Annotated[
        bool, typer.Option("--sim", help="start the cell's simulators in this process first")
    ] = False,
    speed: Annotated[float, speed_option("model time factor (--sim)")] = 1.0,
    step: Annotated[
        bool, typer.Option("--step", help="pause before every step (Maintenance mode)")
    ] = False,
    breaks: Annotated[
        list[str] | None,
        typer.Option("--break", metavar="STEP_ID", help="pause before this step (repeatable)"),
    ] = None,
    answers: Annotated[
        list[str] | None,
        typer.Option("--answer", metavar="ID=VALUE", help="answer a prompt (repeatable)"),
    ] = None,
    operator: Annotated[str | None, operator_option("who runs the batch (recorded)")] = None,
    safe_wait: SafeWaitOption = DEFAULT_SAFE_WAIT,
    journal: JournalOption = None,
) -> None:
    """Run a recipe to Complete: Reset, Start, a live view; Ctrl-C holds, SIGTERM stops."""
    check_speed(speed, sim)
    _run_batch(
        recipe,
        cell,
        params,
        safe_wait,
        sim=sim,
        speed=speed,
        step=step,
        breaks=breaks or [],
        answers=answers or [],
        operator=operator,
        journal=journal,
    )


def _run_batch(
    recipe: Path, cell: Path | None, params: list[str] | None, safe_wait: str, **more: Any
) -> None:
    """Check the inputs, run the batch, exit with its code."""
    # The controller, the drivers and the live view load only once a batch is to run.
    import asyncio

    from cellctl.cli.batch import RunOptions, run_command

    options = RunOptions(
        recipe=recipe,
        cell=cell,
        params=params or [],
        interactive=interactive(),
        safe_wait=safe_wait_seconds(safe_wait),
        **more,
    )
    # A cellctl or driver error reaches cellctl.cli.run, which prints it with its exit code.
    code = asyncio.run(run_command(options, consoles.out)())
    if code != exitcodes.OK:
        raise typer.Exit(code)


@app.command()
def demo(
    fault: Annotated[
        str | None,
        typer.Option("--fault", help="break this mid-batch, then restore it (light-curtain)"),
    ] = None,
    cell_file: Annotated[
        Path | None,
        typer.Option(
            "--cell",
            metavar="CELL",
            help=f"the cell to simulate, with {DEMO_RECIPE} beside it (default: the demo cell)",
        ),
    ] = None,
    speed: Annotated[float, speed_option("model time factor")] = 1.0,
    params: ParamOption = None,
    safe_wait: SafeWaitOption = DEFAULT_SAFE_WAIT,
    journal: JournalOption = None,
) -> None:
    """Run press-fit on the demo cell's simulators, in this process, to Complete."""
    if cell_file is None:
        cell_file = demo_cell()
    recipe = cell_file.parent / DEMO_RECIPE
    if not recipe.is_file():
        raise DemoMissing(
            f"demo runs the {DEMO_RECIPE} recipe beside its cell file, and there is no "
            f"{recipe}; run another recipe with: cellctl run RECIPE --sim --cell {cell_file}"
        )
    _run_batch(
        recipe,
        cell_file,
        params,
        safe_wait,
        sim=True,
        speed=speed,
        operator="demo",
        fault=fault,
        journal=journal,
    )
