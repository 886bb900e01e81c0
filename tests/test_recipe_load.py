"""One load path for a recipe: `load_recipe(path, cell?)` gives the loaded recipe, or every
problem of the recipe and of its cell file at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.errors import ValidationFailed
from cellctl.recipe import load_recipe

CELL = """\
cell: bench
devices:
  dev: {driver: memory}
tags:
  dev.run: {device: dev, type: bool, access: rw}
"""
RECIPE = "recipe: r\nversion: 1\nsteps:\n  - {id: go, set: {dev.run: true}}\n"


def test_the_cell_beside_the_recipe_is_loaded_once_and_the_document_kept(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text(CELL)
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE)
    loaded = load_recipe(path)
    assert loaded.cell.cell == "bench"
    assert loaded.document is not None and loaded.document.file == str(path)
    assert loaded.document.position(("steps", 0, "id")) == (4, 10)


def test_a_broken_cell_and_a_broken_recipe_are_reported_together(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text(CELL.replace("driver: memory", "driver: nonsense"))
    path = tmp_path / "r.yaml"
    path.write_text("recipe: r\nversion: 1\nsteps: [\n")  # broken YAML
    with pytest.raises(ValidationFailed) as caught:
        load_recipe(path)
    files = {Path(problem.file).name for problem in caught.value.problems}
    assert files == {"cell.yaml", "r.yaml"}
