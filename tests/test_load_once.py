"""One load path per file kind: `validate`, `plan` and `run` read each file once per command,
whether it is valid or not (Python's audit events count the opens: nothing is patched)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl import exitcodes
from cellctl.testing import cli
from tests.support import opens

CELL = """\
cell: bench
devices:
  m: {driver: memory}
tags:
  m.x: {device: m, type: int32, access: rw}
"""

RECIPE = """\
recipe: r
version: 1
parameters:
  n: {type: int, default: 1, min: 1, max: 9}
steps:
  - {id: a, set: {m.x: n}}
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A cell file, a recipe for it and a second recipe, side by side."""
    (tmp_path / "cell.yaml").write_text(CELL, encoding="utf-8")
    (tmp_path / "r.yaml").write_text(RECIPE, encoding="utf-8")
    (tmp_path / "s.yaml").write_text(RECIPE.replace("recipe: r", "recipe: s"), encoding="utf-8")
    return tmp_path


def _counts(opened: list[str], folder: Path) -> dict[str, int]:
    """How often each YAML file of `folder` was opened."""
    return {path.name: opened.count(str(path)) for path in sorted(folder.glob("*.yaml"))}


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (["validate", "r.yaml", "-p", "n=3"], exitcodes.OK),
        (["validate", "r.yaml", "-p", "n=99"], exitcodes.BAD_INPUT),
        (["plan", "r.yaml", "-p", "n=3"], exitcodes.OK),
        (["plan", "r.yaml", "-p", "n=99"], exitcodes.BAD_INPUT),
        (["run", "r.yaml", "--sim", "-p", "n=3"], exitcodes.OK),
    ],
)
def test_a_command_reads_the_recipe_and_its_cell_once(
    capsys: pytest.CaptureFixture[str], folder: Path, args: list[str], code: int
) -> None:
    command, recipe, *rest = args
    with opens() as opened:
        result = cli(capsys, "--log-file", folder / "log", command, folder / recipe, *rest)
    assert result.exit_code == code, result
    assert _counts(opened, folder) == {"cell.yaml": 1, "r.yaml": 1, "s.yaml": 0}


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_a_broken_recipe_is_read_once(
    capsys: pytest.CaptureFixture[str], folder: Path, command: str
) -> None:
    (folder / "r.yaml").write_text(RECIPE.replace("set:", "sett:"), encoding="utf-8")
    with opens() as opened:
        result = cli(capsys, "--log-file", folder / "log", command, folder / "r.yaml")
    assert result.exit_code == exitcodes.BAD_INPUT, result
    assert "unknown step kind 'sett'" in result.err
    assert _counts(opened, folder) == {"cell.yaml": 1, "r.yaml": 1, "s.yaml": 0}


def test_validating_a_cell_and_its_recipes_reads_the_cell_once(
    capsys: pytest.CaptureFixture[str], folder: Path
) -> None:
    files = [folder / name for name in ("cell.yaml", "r.yaml", "s.yaml")]
    with opens() as opened:
        result = cli(capsys, "--log-file", folder / "log", "validate", *files, "-p", "n=2")
    assert result.exit_code == exitcodes.OK, result
    assert _counts(opened, folder) == {"cell.yaml": 1, "r.yaml": 1, "s.yaml": 1}
