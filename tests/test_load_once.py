"""One load path per file kind: `validate`, `plan`, `run` and `sim --write-cell` read each file
once per command, whether it is valid or not (Python's audit events count the opens: nothing
is patched)."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from cellctl import exitcodes
from cellctl.testing import cli, wait_until
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


@pytest.mark.timeout(30)  # the command serves until told to stop: a failed stop must not hang
def test_sim_writing_the_served_cell_reads_the_cell_once(
    capsys: pytest.CaptureFixture[str], folder: Path
) -> None:
    target = folder / "served" / "cell.yaml"  # outside the folder's own files
    target.parent.mkdir()
    returned = threading.Event()

    def stop_once_written() -> None:
        """SIGTERM, as an operator would, once the copy is there and sim is serving (never
        before: without sim's handler the signal would end the test process)."""
        wait_until(lambda: target.exists() or returned.is_set(), 10.0, "the served copy")
        if not returned.is_set():
            os.kill(os.getpid(), signal.SIGTERM)

    stopper = threading.Thread(target=stop_once_written)
    with opens() as opened:
        stopper.start()
        try:
            result = cli(
                capsys,
                "--log-file",
                folder / "log",
                "sim",
                folder / "cell.yaml",
                "--write-cell",
                target,
            )
        finally:
            returned.set()
            stopper.join()
    assert result.exit_code == exitcodes.OK, result
    assert "cell file for clients" in result.out
    assert target.read_text(encoding="utf-8") == CELL  # a memory device: nothing to point at
    assert _counts(opened, folder) == {"cell.yaml": 1, "r.yaml": 0, "s.yaml": 0}
