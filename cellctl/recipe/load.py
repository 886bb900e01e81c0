"""Loading a recipe: one read, one parse, every problem at once.

A recipe is loaded in three passes so that every problem is reported at once: YAML
(cellctl.yamlload), pydantic (the shape of each step, parameter and expression), then the
checks against the cell file (cellctl.recipe.check: tags, methods, types, ranges, ids, names).
When the cell file is broken or missing, its problems come first, then the recipe's own
problems that do not need a cell.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from cellctl.cell import Cell, read_cell
from cellctl.errors import Problem, ValidationFailed
from cellctl.recipe.check import check_rules
from cellctl.recipe.located import model_problems, subject_in, yaml_problems
from cellctl.recipe.model import LoadedRecipe, Recipe, RecipeIdentity
from cellctl.yamlload import YamlDocument, parse_yaml, read_file

__all__ = [
    "cell_file_for",
    "check_recipe_file",
    "load_recipe",
    "load_recipe_document",
    "recipe_from_document",
]

#: The top-level key of a cell file: a recipe file never has it.
_CELL_KEY = "cell"

#: Reads a cell file as `read_cell` does: the cell, or None and the problems of its file.
CellReader = Callable[[Path], tuple[Cell | None, list[Problem]]]


def cell_file_for(recipe_path: Path) -> Path:
    """The cell file a recipe runs on: cell.yaml in the recipe's directory."""
    return recipe_path.parent / "cell.yaml"


def load_recipe(path: Path, cell: Cell | Path | None = None) -> LoadedRecipe:
    """Load a recipe and validate it against its cell: `cell` itself, the cell file at that
    path, or else cell.yaml beside the recipe.

    Raises ValidationFailed with every problem: the cell file's first (when it is broken or
    missing), then the recipe's own.
    """
    try:
        raw = read_file(path)  # read once: the hash is of the very bytes that were validated
        doc = parse_yaml(raw, str(path))
    except ValidationFailed as err:
        found, cell_problems = _cell_of(path, cell)
        if found is None:  # the cell file is broken too: its problems come first
            raise ValidationFailed([*cell_problems, *err.problems]) from None
        raise
    return load_recipe_document(doc, raw, cell)


def load_recipe_document(
    doc: YamlDocument, raw: bytes, cell: Cell | Path | None = None, *, read: CellReader = read_cell
) -> LoadedRecipe:
    """load_recipe for a recipe file already read (`raw`) and parsed (`doc`), such as by a
    caller that tells cell files from recipes by their top-level key; `read` reads the cell
    file (a caller validating many files reads each cell file once)."""
    path = Path(doc.file)
    doc = doc.about(subject_in(doc))
    found, cell_problems = _cell_of(path, cell, read)
    recipe, problems = _validate(doc, found)
    if isinstance(doc.data, dict) and _CELL_KEY in doc.data and (problems or recipe is None):
        not_recipe = "this is a cell file, not a recipe"
        raise ValidationFailed([Problem(doc.file, 1, 1, "not-a-recipe", not_recipe)])
    if found is None or problems or recipe is None:
        raise ValidationFailed([*cell_problems, *problems])
    identity = RecipeIdentity(recipe.recipe, recipe.version, hashlib.sha256(raw).hexdigest())
    return LoadedRecipe(path, recipe, found, identity, doc)


def _cell_of(
    path: Path, cell: Cell | Path | None, read: CellReader = read_cell
) -> tuple[Cell | None, list[Problem]]:
    """The recipe's cell, or None and the problems of its file."""
    if isinstance(cell, Cell):
        return cell, []
    cell_file = cell if cell is not None else cell_file_for(path)
    if cell is None and not cell_file.exists():
        message = f"no cell file beside the recipe ({cell_file} not found); give it with --cell"
        return None, [Problem(str(path), 1, 1, "no-cell", message)]
    return read(cell_file)


def recipe_from_document(doc: YamlDocument, cell: Cell) -> Recipe:
    """Validate a loaded YAML document as a recipe for `cell`; raises ValidationFailed."""
    recipe, problems = _validate(doc.about(subject_in(doc)), cell)
    if problems or recipe is None:
        raise ValidationFailed(problems)
    return recipe


def check_recipe_file(path: Path, cell_path: Path | None = None) -> list[Problem]:
    """Every problem of a recipe file and of its cell file (`cell_path`, else the one beside
    the recipe); an empty list when both are valid."""
    try:
        load_recipe(path, cell_path)
    except ValidationFailed as err:
        return err.problems
    return []


def _validate(doc: YamlDocument, cell: Cell | None) -> tuple[Recipe | None, list[Problem]]:
    """The recipe (None when its shape is broken) and every problem, sorted.

    Without a cell (the cell file is broken or missing) only what does not need one is
    checked: YAML, keys, types, durations, expression syntax, ids, names, retries.
    """
    problems = yaml_problems(doc)
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(doc.data)
    except ValidationError as err:
        problems.extend(model_problems(doc, err))
    if isinstance(doc.data, dict):
        problems.extend(check_rules(doc, doc.data, cell))
    unique = dict.fromkeys(problems)  # two passes may find one fault: say it once
    return recipe, sorted(unique, key=lambda p: (p.line, p.col))
