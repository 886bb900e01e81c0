"""A FIFO, a device or a folder given as a cell file or recipe: refused at once, never opened."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cellctl.testing import cli

CELL = (
    "cell: bench\ndevices:\n  m: {driver: memory}\n"
    "tags:\n  m.x: {device: m, type: int32, access: rw}\n"
)
RECIPE = "recipe: r\nversion: 1\nsteps:\n  - {id: a, set: {m.x: 5}}\n"


def _fifo(folder: Path) -> Path:
    path = folder / "pipe.yaml"
    os.mkfifo(path)  # nobody ever writes: opening it for reading would block for good
    return path


def _folder(folder: Path) -> Path:
    path = folder / "sub.yaml"
    path.mkdir()
    return path


def _device(_folder: Path) -> Path:
    return Path("/dev/null")


BAD: dict[str, tuple[Callable[[Path], Path], str]] = {
    "fifo": (_fifo, "is a named pipe (FIFO), not a regular file"),
    "folder": (_folder, "is a folder, not a regular file"),
    "device": (_device, "is a character device, not a regular file"),
}

# {bad} is the bad file, {cell} and {recipe} good ones beside it.
COMMANDS = [
    ["validate", "{bad}"],
    ["validate", "{recipe}", "--cell", "{bad}"],
    ["plan", "{bad}", "--cell", "{cell}"],
    ["plan", "{recipe}", "--cell", "{bad}"],
    ["run", "{bad}", "--cell", "{cell}"],
    ["run", "{recipe}", "--cell", "{bad}"],
    ["read", "--cell", "{bad}"],
    ["write", "--cell", "{bad}", "m.x=1"],
    ["check", "{bad}"],
    ["sim", "{bad}"],
]


@pytest.mark.timeout(10)  # the failure this guards against is a command that hangs
@pytest.mark.parametrize("kind", sorted(BAD))
@pytest.mark.parametrize("args", COMMANDS, ids=lambda args: "-".join(a.strip("{}") for a in args))
def test_a_file_that_is_not_regular_is_refused_naming_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, args: list[str]
) -> None:
    make, says = BAD[kind]
    cell = tmp_path / "cell.yaml"
    cell.write_text(CELL, encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    bad = make(tmp_path)
    argv = [a.format(bad=bad, cell=cell, recipe=recipe) for a in args]
    code, out, err = cli(capsys, *argv)
    assert code == 1, (out, err)
    assert f"{bad}:1:1: cannot read: {says}" in err
    assert "Traceback" not in err and "internal error" not in err
    assert "confirmed" not in out and "outcome" not in out  # nothing ran
