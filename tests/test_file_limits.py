"""Numbers too long and durations too short in a cell file or recipe: located problems, with
no advice about sys.set_int_max_str_digits() and no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.testing import cli
from tests.located import col_of

BIG = "9" * 5000

CELL = """\
cell: bench
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020}
  m: {driver: memory, poll: 20ms}
  arm: {driver: opcua, endpoint: "opc.tcp://127.0.0.1:4840/arm"}
tags:
  m.x: {device: m, type: int32, access: rw, min: 0, max: 1000}
  m.flag: {device: m, type: bool, access: rw}
  plc.speed: {device: plc, address: "hr:0", access: rw}
  arm.busy: {device: arm, node: "ns=2;i=7", type: bool}
"""

RECIPE = """\
recipe: r
version: 1
parameters:
  count: {type: int, default: 3, min: 1, max: 500}
steps:
  - {id: a, set: {m.x: 5}}
  - {id: w, wait: m.flag, timeout: 2s, on_error: {action: retry, count: 2, delay: 1s}}
  - {delay: 800ms}
"""


def write(folder: Path, cell: str = CELL, recipe: str = RECIPE) -> tuple[Path, Path]:
    """The cell file and the recipe beside it."""
    (folder / "cell.yaml").write_text(cell, encoding="utf-8")
    (folder / "r.yaml").write_text(recipe, encoding="utf-8")
    return folder / "cell.yaml", folder / "r.yaml"


def refused_at(
    capsys: pytest.CaptureFixture[str], path: Path, line: int, at: str, *says: str
) -> None:
    """`validate path` exits 1 with one problem at `line`, where `at` starts, saying `says`."""
    code, out, err = cli(capsys, "validate", path)
    assert code == 1, out + err
    col = col_of(path.read_text(encoding="utf-8"), line, at)
    problems = err.strip().splitlines()
    assert problems[0].startswith(f"{path}:{line}:{col}: "), err[:500]
    assert all(word in problems[0] for word in says), problems[0]
    assert "set_int_max_str_digits" not in err
    assert "Traceback" not in err
    assert len(err) < 1000  # the 5000 digits are not echoed


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("version: 1", f"version: {BIG}", 2),
        ("max: 500", f"max: {BIG}", 4),
        ("default: 3", f"default: {BIG}", 4),
        ("min: 1,", f"min: -{BIG},", 4),
        ("m.x: 5}", f"m.x: {BIG}}}", 6),
        ("count: 2,", f"count: 0x{BIG},", 7),  # hexadecimal: int() reads it, but no further
        ("max: 500", f"max: {BIG}.5", 4),  # a float that long is inf
    ],
    ids=["version", "max", "default", "negative-min", "set-value", "hex", "float"],
)
def test_a_recipe_number_too_long_is_a_located_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, line: int
) -> None:
    _, recipe = write(tmp_path, recipe=RECIPE.replace(old, new, 1))
    refused_at(capsys, recipe, line, new.split()[1][:20], "number too long")


@pytest.mark.parametrize(
    ("old", "new", "line", "at", "says"),
    [
        ("port: 5020", f"port: {BIG}", 3, BIG[:5], "number too long"),
        ("max: 1000", f"max: {BIG}", 7, BIG[:5], "number too long"),
        ('"hr:0"', f'"hr:{BIG}"', 9, '"hr:', "is not an address"),
        ('"ns=2;i=7"', f'"ns={BIG};i=7"', 10, '"ns=', "bad NodeId"),
        ('"ns=2;i=7"', f'"ns=2;i={BIG}"', 10, '"ns=', "bad NodeId"),
    ],
    ids=["port", "tag-max", "address", "namespace", "numeric-node-id"],
)
def test_a_cell_number_too_long_is_a_located_problem(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    old: str,
    new: str,
    line: int,
    at: str,
    says: str,
) -> None:
    cell, _ = write(tmp_path, cell=CELL.replace(old, new, 1))
    refused_at(capsys, cell, line, at, says)


@pytest.mark.parametrize(
    ("old", "new", "line"),
    [
        ("timeout: 2s", "timeout: 0.5ms", 7),
        ("delay: 1s", "delay: 0.0001s", 7),
        ("{delay: 800ms}", "{delay: 0.999ms}", 8),
    ],
    ids=["timeout", "retry-delay", "delay-step"],
)
def test_a_recipe_duration_below_a_millisecond_is_a_located_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, line: int
) -> None:
    _, recipe = write(tmp_path, recipe=RECIPE.replace(old, new, 1))
    value = new.split()[-1].rstrip("}")
    refused_at(capsys, recipe, line, value, f"duration {value!r} is shorter than a millisecond")


def test_a_long_text_that_is_no_duration_is_not_echoed_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, recipe = write(tmp_path, recipe=RECIPE.replace("timeout: 2s", f"timeout: {BIG}s!", 1))
    refused_at(capsys, recipe, 7, BIG[:5], f"duration '{BIG[:37]}...' is not like '500ms'")


def test_a_cell_duration_below_a_millisecond_is_a_located_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cell, _ = write(tmp_path, cell=CELL.replace("poll: 20ms", "poll: 0.5ms"))
    refused_at(capsys, cell, 4, "0.5ms", "'0.5ms' is shorter than a millisecond", "'1ms'")


def test_a_millisecond_and_a_retry_at_once_are_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = RECIPE.replace("delay: 1s", "delay: 0s").replace("{delay: 800ms}", "{delay: 1ms}")
    cell, path = write(tmp_path, cell=CELL.replace("poll: 20ms", "poll: 0.001s"), recipe=recipe)
    code, out, err = cli(capsys, "validate", cell, path)
    assert code == 0, out + err
