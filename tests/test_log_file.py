"""The log file: one that cannot be opened stops the command first; a failing one warns once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cellctl.testing import cli

CELL = (
    "cell: bench\ndevices:\n  m: {driver: memory}\n"
    "tags:\n  m.x: {device: m, type: int32, access: rw}\n"
)
RECIPE = (
    "recipe: r\nversion: 1\nsteps:\n  - {id: a, set: {m.x: 5}}\n"
    "  - {id: b, wait: 'm.x == 5', timeout: 1s}\n"
)


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    """A recipe on a memory-device cell: a whole batch in-process, logging as it goes."""
    (tmp_path / "cell.yaml").write_text(CELL, encoding="utf-8")
    path = tmp_path / "r.yaml"
    path.write_text(RECIPE, encoding="utf-8")
    return path


def _folder(tmp: Path) -> Path:
    return tmp


def _missing_folder(tmp: Path) -> Path:
    return tmp / "no" / "cellctl.log"


def _under_a_file(tmp: Path) -> Path:
    (tmp / "plain").write_text("", encoding="utf-8")
    return tmp / "plain" / "cellctl.log"  # root or not: a file holds no files


def _fifo_nobody_reads(tmp: Path) -> Path:
    path = tmp / "pipe"
    os.mkfifo(path)  # opening it to write would block until a reader comes
    return path


@pytest.mark.timeout(10)  # a FIFO opened the ordinary way would hang the command
@pytest.mark.parametrize(
    ("make", "says"),
    [
        (_folder, "is a folder, not a regular file"),
        (_missing_folder, "No such file or directory"),
        (_under_a_file, "Not a directory"),
        (_fifo_nobody_reads, "a FIFO that no process reads"),
    ],
)
def test_a_log_file_that_cannot_be_opened_is_bad_input_before_anything_runs(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    recipe: Path,
    make: Callable[[Path], Path],
    says: str,
) -> None:
    log = make(tmp_path)
    code, out, err = cli(capsys, "--log-file", log, "run", recipe)
    assert code == 1, (out, err)
    assert err.strip().splitlines() == [f"error: --log-file {log}: cannot open it: {says}"]
    assert out == ""  # the batch never started
    assert not (tmp_path / "no").exists()


def test_a_log_file_that_works_gets_json_lines(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recipe: Path
) -> None:
    log = tmp_path / "cellctl.log"
    code, _, err = cli(capsys, "--log-file", log, "run", recipe)
    assert code == 0, err
    lines = log.read_text(encoding="utf-8").splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)


def test_a_log_that_fails_mid_run_warns_once_and_the_batch_completes(
    capsys: pytest.CaptureFixture[str], recipe: Path
) -> None:
    # /dev/full opens like any file, and every write to it fails with ENOSPC: a full disk.
    code, out, err = cli(capsys, "--log-file", "/dev/full", "run", recipe)
    assert code == 0, err
    assert "outcome: Complete" in out
    assert err.strip().splitlines() == [
        "warning: cannot write the log file /dev/full: No space left on device; "
        "nothing more is logged to it"
    ]
