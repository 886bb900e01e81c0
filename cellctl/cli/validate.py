"""`cellctl validate`: tell cell files from recipes by their top-level key and check each.

Every file is read and parsed once per command: a recipe's -p values are checked against the
recipe as loaded, and a cell file that several recipes (or the command line) name is read once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from cellctl.cell import Cell, cell_from_document
from cellctl.cli.schema import KINDS, FileKind
from cellctl.errors import BadValue, Problem, Subject, SubjectKind, ValidationFailed
from cellctl.recipe import LoadedRecipe, Recipe, load_recipe_document, parse_parameters
from cellctl.yamlload import YamlDocument, parse_yaml, read_file


def read_document(path: Path) -> tuple[YamlDocument, bytes]:
    """A file parsed, and the bytes it was parsed from; raises ValidationFailed naming why not."""
    raw = read_file(path)
    return parse_yaml(raw, str(path)), raw


class CommandFiles:
    """The files one command reads: each read and parsed once, each cell file validated once."""

    def __init__(self) -> None:
        self._documents: dict[Path, tuple[YamlDocument, bytes] | list[Problem]] = {}
        self._cells: dict[Path, tuple[Cell | None, list[Problem]]] = {}

    def document(self, path: Path) -> tuple[YamlDocument, bytes]:
        """The parsed file and its bytes; raises ValidationFailed when it cannot be parsed."""
        if path not in self._documents:
            try:
                self._documents[path] = read_document(path)
            except ValidationFailed as err:
                self._documents[path] = err.problems
        found = self._documents[path]
        if isinstance(found, list):
            raise ValidationFailed(found)
        return found

    def cell(self, path: Path) -> tuple[Cell | None, list[Problem]]:
        """The cell file at `path` as `read_cell` reads it: the cell, or None and its problems."""
        if path not in self._cells:
            try:
                self._cells[path] = (cell_from_document(self.document(path)[0], path), [])
            except ValidationFailed as err:
                self._cells[path] = (None, err.problems)
        return self._cells[path]


def validate_file(
    path: Path,
    cell_path: Path | None = None,
    assignments: Sequence[str] = (),
    files: CommandFiles | None = None,
) -> list[Problem]:
    """Every problem of one cell or recipe file; an empty list when it is valid.

    A recipe is checked against `cell_path`, else the cell file beside it (whose own problems
    are reported too), and the `assignments` ("name=value") against its parameters. `files`
    holds what this command has read already.
    """
    files = files if files is not None else CommandFiles()
    try:
        doc, raw = files.document(path)
    except ValidationFailed as err:
        return err.problems
    kind = file_kind(doc)
    if kind == "cell":
        return files.cell(path)[1]
    if kind == "recipe":
        try:
            loaded = load_recipe_document(doc, raw, cell_path, read=files.cell)
        except ValidationFailed as err:
            return err.problems
        return _parameter_problems(doc, loaded.recipe, assignments) if assignments else []
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
    files = CommandFiles()
    problems = (p for path in paths for p in validate_file(path, cell_path, assignments, files))
    return list(dict.fromkeys(problems))


def open_recipe(path: Path, cell_path: Path | None = None) -> LoadedRecipe:
    """Load a recipe with its cell (`cell_path`, else the one beside it); raises ValidationFailed.

    The problems are those `validate` reports: the recipe's own when it cannot be parsed, else
    the cell file's and the recipe's (a cell file given as the recipe is named as such).
    """
    doc, raw = read_document(path)
    return load_recipe_document(doc, raw, cell_path)


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
