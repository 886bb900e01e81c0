"""`validate`, `plan` and `schema`: commands on cell and recipe files that touch no device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cellctl import exitcodes
from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.params import ParamOption, RecipeArgument, RecipeCellOption
from cellctl.cli.schema import FileKind

# The models, the loader and the views load when a command runs, not for every command.


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(metavar="FILE...", help="cell or recipe files")],
    cell: Annotated[
        Path | None,
        typer.Option(
            "--cell", "-c", help="the cell of the recipes (default: cell.yaml beside each)"
        ),
    ] = None,
    params: ParamOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print problems as JSON")] = False,
) -> None:
    """Check cell and recipe files; every problem as FILE:LINE:COL: message."""
    from cellctl.cli.validate import validate_files

    problems = validate_files(files, cell, params or ())
    if as_json:
        consoles.out.print_json(json.dumps([p.to_json() for p in problems]))
    else:
        for problem in problems:
            consoles.err.print(str(problem), markup=False)
        if not problems:
            consoles.out.print(f"{len(files)} file(s) valid")
    if problems:
        raise typer.Exit(exitcodes.BAD_INPUT)


@app.command()
def plan(
    recipe: RecipeArgument,
    cell: RecipeCellOption = None,
    params: ParamOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the plan as JSON")] = False,
) -> None:
    """Dry run: the step tree with parameters resolved, tags, devices, worst case; no device."""
    from cellctl.cli.validate import open_recipe
    from cellctl.cli.views.plan import plan_lines, plan_view
    from cellctl.recipe.plan import make_plan

    made = make_plan(open_recipe(recipe, cell), params or ())  # errors: see cellctl.cli.run
    if as_json:
        consoles.out.print_json(json.dumps(made.to_json()))
        return
    # Long steps wrap on a terminal, never cut.
    consoles.show(
        lambda: plan_view(made), lambda: plan_lines(made), soft_wrap=False, keep_tabs=False
    )


@app.command()
def schema(
    kind: Annotated[
        FileKind | None,
        typer.Argument(
            metavar="KIND", help="recipe or cell (default: either, for one editor setting)"
        ),
    ] = None,
) -> None:
    """Print the JSON Schema of recipe or cell files, for editors' YAML language servers."""
    from cellctl.cli.schema import schema_of, schema_of_both

    consoles.out.print(
        json.dumps(schema_of(kind) if kind else schema_of_both(), indent=2),
        markup=False,
    )
