"""`cellctl validate`: tell cell files from recipes by their top-level key and check each."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cellctl.cell import cell_from_document
from cellctl.errors import Problem, ValidationFailed
from cellctl.yamlload import load_yaml


def validate_file(path: Path) -> list[Problem]:
    """Every problem of one cell or recipe file; an empty list when it is valid."""
    try:
        doc = load_yaml(path)
    except ValidationFailed as err:
        return err.problems
    data = doc.data
    name = str(path)
    if isinstance(data, dict) and "cell" in data:
        try:
            cell_from_document(doc, path)
        except ValidationFailed as err:
            return err.problems
        return []
    if isinstance(data, dict) and "recipe" in data:
        return [
            Problem(
                name,
                *doc.position(["recipe"], key=True),
                "unsupported",
                "recipe files cannot be validated by this version of cellctl yet (only cell files)",
            )
        ]
    return [
        Problem(
            name,
            1,
            1,
            "unknown-kind",
            "neither a cell file (top-level key 'cell:') nor a recipe (top-level key 'recipe:')",
        )
    ]


def validate_files(paths: Iterable[Path]) -> list[Problem]:
    """The problems of every file, file by file."""
    return [problem for path in paths for problem in validate_file(path)]
