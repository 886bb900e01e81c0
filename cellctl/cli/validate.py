"""`cellctl validate`: tell cell files from recipes by their top-level key and check each."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cellctl.cell import cell_from_document, load_cell
from cellctl.cli.schema import KINDS, FileKind
from cellctl.errors import BadValue, Problem, Subject, SubjectKind, ValidationFailed
from cellctl.recipe import (
    LoadedRecipe,
    Recipe,
    cell_file_for,
    check_recipe_file,
    load_recipe,
    parse_parameters,
)
from cellctl.yamlload import YamlDocument, load_yaml


def validate_file(
    path: Path, cell_path: Path | None = None, assignments: Sequence[str] = ()
) -> list[Problem]:
    """Every problem of one cell or recipe file; an empty list when it is valid.

    A recipe is checked against `cell_path`, else the cell file beside it (whose own problems
    are reported too), and the `assignments` ("name=value") against its parameters.
    """
    try:
        doc = load_yaml(path)
    except ValidationFailed as err:
        return err.problems
    kind = file_kind(doc)
    if kind == "cell":
        try:
            cell_from_document(doc, path)
        except ValidationFailed as err:
            return err.problems
        return []
    if kind == "recipe":
        problems = check_recipe_file(path, cell_path)
        if problems or not assignments:
            return problems
        return _parameter_problems(doc, open_recipe(path, cell_path).recipe, assignments)
    return [
        Problem(
            str(path),
            1,
            1,
            "unknown-kind",
            "neither a cell file (top-level key 'cell:') nor a recipe (top-level key 'recipe:')",
        )
    ]


def file_kind(doc: YamlDocument) -> FileKind | None:
    """'cell' or 'recipe' by the document's top-level key; None when it has neither."""
    if isinstance(doc.data, dict):
        for kind in KINDS:
            if kind in doc.data:
                return kind
    return None


def validate_files(
    paths: Iterable[Path], cell_path: Path | None = None, assignments: Sequence[str] = ()
) -> list[Problem]:
    """The problems of every file, file by file; a cell file's problems are reported once.

    A cell file named on the command line is also the cell of the recipes beside it, and a
    recipe reports its cell's problems: each problem is kept only the first time.
    """
    problems = (p for path in paths for p in validate_file(path, cell_path, assignments))
    return list(dict.fromkeys(problems))


def open_recipe(path: Path, cell_path: Path | None = None) -> LoadedRecipe:
    """Load a recipe with its cell (`cell_path`, else the one beside it); raises ValidationFailed.

    The problems are those `validate` reports: the cell file's and the recipe's own.
    """
    try:
        return load_recipe(path, load_cell(cell_path or cell_file_for(path)))
    except ValidationFailed as err:
        failed = err  # said again below the way validate says it, and about the right file
    if file_kind(load_yaml(path)) == "cell":
        raise ValidationFailed(
            [Problem(str(path), 1, 1, "not-a-recipe", "this is a cell file, not a recipe")]
        )
    raise ValidationFailed(check_recipe_file(path, cell_path) or failed.problems)


def _parameter_problems(
    doc: YamlDocument, recipe: Recipe, assignments: Sequence[str]
) -> list[Problem]:
    """A bad -p value as a problem located at the parameter it names (else at 'parameters')."""
    try:
        parse_parameters(recipe, assignments)
    except BadValue as err:
        if err.parameter is None:  # not a parameter of the recipe (unknown, or no name=)
            return [doc.problem(("parameters",), "bad-parameter", f"-p: {err}", key=True)]
        subject = Subject(SubjectKind.PARAMETER, err.parameter)
        loc = ("parameters", err.parameter)
        return [doc.problem(loc, "bad-parameter", f"-p: {err}", key=True, subject=subject)]
    return []
