"""A run keeps no parsed YAML: the document a long recipe was loaded from is dropped once the
recipe is checked (it takes more memory than the steps themselves)."""

from __future__ import annotations

from pathlib import Path

from cellctl.cli.batch import RunOptions, prepare
from tests.test_controller import CELL
from tests.test_reset_ready import RECIPE


def test_a_prepared_run_drops_the_parsed_document(tmp_path: Path) -> None:
    cell = tmp_path / "cell.yaml"
    cell.write_bytes(CELL)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    prepared = prepare(RunOptions(recipe, cell))
    assert prepared.loaded.document is None
    assert prepared.loaded.recipe.steps  # the validated steps are what the batch runs
