"""The released recipes a service may load: every recipe file in its recipes folder that
validates against the service's cell, found afresh at each look (a file changed on disk is
validated again before it is loaded)."""

from __future__ import annotations

import logging
from pathlib import Path

from cellctl.cell import Cell
from cellctl.errors import BadValue, CellctlError, ValidationFailed, did_you_mean
from cellctl.recipe import LoadedRecipe
from cellctl.recipe.load import load_recipe_document
from cellctl.yamlload import parse_yaml

log = logging.getLogger("cellctl.service.shelf")

#: The files looked at: YAML files of the recipes folder (not its subfolders).
PATTERNS = ("*.yaml", "*.yml")


class UnknownRecipe(BadValue):
    """No released recipe has that name."""


class RecipeShelf:
    """The recipes of one folder that name themselves `recipe:` and validate against `cell`."""

    def __init__(self, cell: Cell, folder: Path) -> None:
        self.cell = cell
        self.folder = folder

    def files(self) -> dict[str, Path]:
        """Each recipe name found in the folder and its file (the first file by name wins)."""
        found: dict[str, Path] = {}
        for pattern in PATTERNS:
            for path in sorted(self.folder.glob(pattern)):
                name = _recipe_name(path)
                if name is not None:
                    found.setdefault(name, path)
        return found

    def names(self) -> list[str]:
        """The released recipes: those that validate now, by name."""
        return [loaded.recipe.recipe for loaded in self.released()]

    def released(self) -> list[LoadedRecipe]:
        """The recipes that validate now, by name."""
        released = []
        for name, path in sorted(self.files().items()):
            try:
                released.append(self._load(path))
            except (CellctlError, OSError) as problem:  # a file replaced or gone meanwhile
                log.info("recipe %s (%s) is not released: %s", name, path, problem)
        return released

    def load(self, name: str) -> LoadedRecipe:
        """The recipe `name`, validated against the cell: UnknownRecipe, or ValidationFailed
        with the problems located as `validate` reports them."""
        files = self.files()
        path = files.get(name.strip())
        if path is None:
            known = ", ".join(sorted(files)) or "none"
            raise UnknownRecipe(
                f"no recipe {name!r} in {self.folder}{did_you_mean(name, files)} (recipes: {known})"
            )
        return self._load(path)

    def load_file(self, path: Path) -> LoadedRecipe:
        """A recipe file validated against the cell (a batch taken up after a crash runs the
        file it ran, wherever it is)."""
        return self._load(path)

    def _load(self, path: Path) -> LoadedRecipe:
        raw = path.read_bytes()
        loaded = load_recipe_document(parse_yaml(raw, str(path)), raw, self.cell)
        loaded.document = None  # a served batch needs no parsed YAML (see cli.prepare)
        return loaded


def _recipe_name(path: Path) -> str | None:
    """The `recipe:` a file names, or None (a cell file, not YAML, unreadable)."""
    try:
        doc = parse_yaml(path.read_bytes(), str(path))
    except (OSError, ValidationFailed):
        return None
    data = doc.data
    if isinstance(data, dict) and isinstance(data.get("recipe"), str):
        return str(data["recipe"])
    return None
