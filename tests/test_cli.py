"""The CLI's exit-code convention and messages, in-process (no devices)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cellctl import __version__
from cellctl.testing import cli

DEMO_CELL = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "--version")
    assert (code, out.strip()) == (0, f"cellctl {__version__}")


@pytest.mark.parametrize(
    "args",
    [
        ["no-such-command"],
        ["read"],  # --cell missing
        ["read", "--cell"],
        ["sim", str(DEMO_CELL), "--speed", "fast"],
        ["demo", "--speed", "fast"],
        ["validate", "--bogus", str(DEMO_CELL)],
    ],
)
def test_usage_errors_exit_1_not_2(capsys: pytest.CaptureFixture[str], args: list[str]) -> None:
    code, out, err = cli(capsys, *args)
    assert code == 1
    assert "Traceback" not in out + err
    assert err.strip()


def test_validate_demo_cell(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "validate", str(DEMO_CELL))[0] == 0


def test_validate_reports_every_problem_located(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "cell.yaml"
    broken.write_text(
        "cell: broken\n"
        "devices:\n"
        "  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 70000}\n"
        "tags:\n"
        "  plc.a: {device: plc, address: 'hr:0'}\n"
        "  plc.b: {device: plc, address: '40001'}\n",
        encoding="utf-8",
    )
    code, _, err = cli(capsys, "validate", str(broken))
    assert code == 1
    lines = err.strip().splitlines()
    assert any(line.startswith(f"{broken}:3:") and "port" in line for line in lines), err
    assert any(line.startswith(f"{broken}:6:") and "plc.b" in line for line in lines), err
    code, out, _ = cli(capsys, "validate", "--json", str(broken), str(DEMO_CELL))
    rows = json.loads(out)
    assert code == 1
    assert {row["line"] for row in rows} >= {3, 6}
    assert all(row["file"] == str(broken) for row in rows)


def test_validate_tells_files_apart(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text("recipe: x\nversion: 1\nsteps: []\n", encoding="utf-8")
    other = tmp_path / "o.yaml"
    other.write_text("hello: world\n", encoding="utf-8")
    missing = tmp_path / "missing.yaml"
    code, _, err = cli(capsys, "validate", str(recipe), str(other), str(missing))
    assert code == 1
    assert f"{recipe}:1:1:" in err and "recipe" in err
    assert f"{other}:1:1:" in err and "neither a cell file" in err
    assert f"{missing}:1:1:" in err


def test_read_with_a_broken_cell_exits_1_before_connecting(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "cell.yaml"
    broken.write_text("cell: x\ndevices: {}\ntags:\n  a.b: {device: nowhere, address: 'hr:0'}\n")
    code, _, err = cli(capsys, "read", "--cell", str(broken))
    assert code == 1
    assert f"{broken}:4:" in err and "nowhere" in err


def test_read_unknown_tag_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "read", "--cell", str(DEMO_CELL), "conveyor.nosuch")
    assert code == 1
    assert "conveyor.nosuch" in err


def test_write_to_a_real_serial_line_needs_yes(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo cell's press sits on /dev/ttyUSB0: a real machine, so no write without --yes.
    code, _, err = cli(capsys, "write", "--cell", str(DEMO_CELL), "press.cycle_start=true")
    assert code == 1
    assert "press" in err and "--yes" in err


def test_memory_devices_are_refused_by_read_write_and_check(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "cell: bench\ndevices:\n  m: {driver: memory}\n"
        "tags:\n  m.x: {device: m, type: int32, access: rw}\n"
    )
    for args in (
        ["read", "--cell", str(cell)],
        ["write", "--cell", str(cell), "m.x=5"],
        ["check", str(cell)],
    ):
        code, out, err = cli(capsys, *args)
        assert code == 1, (args, out, err)
        assert "m: a memory device" in err
        assert "confirmed" not in out


def test_sim_refuses_a_write_cell_it_cannot_write_before_serving(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for target, says in ((tmp_path, "is a folder"), (tmp_path / "no" / "x.yaml", "no folder")):
        code, _, err = cli(capsys, "sim", str(DEMO_CELL), "--write-cell", str(target))
        assert code == 1
        assert says in err and "Traceback" not in err
    assert not (tmp_path / "no").exists()


def _commands() -> list[list[str]]:
    """The root and every command, as the arguments before --help."""
    import typer.main

    from cellctl.cli import app

    group = typer.main.get_command(app)
    return [[], *([name] for name in getattr(group, "commands", {}))]


@pytest.mark.parametrize("command", _commands(), ids=lambda c: " ".join(c) or "cellctl")
def test_help_shows_flags_as_flags_at_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = cli(capsys, *command, "--help")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out)  # FORCE_COLOR in CI would colour it
    assert code == 0 and "Usage: cellctl" in text
    assert "<bool>" not in text and "BOOLEAN" not in text, text  # a flag takes no value
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert not re.search(r"[{}]", usage), usage  # `{files}...` is no usage notation
    assert not re.search(r"\b[a-z_]+\.\.\.", usage), usage  # arguments in capitals: FILE...
    assert max(len(line.rstrip()) for line in text.splitlines()) <= 80, text


def test_help_usage_names_arguments_as_documented(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    expected = {
        "validate": "cellctl validate [OPTIONS] FILE...",
        "read": "cellctl read [OPTIONS] [TAG|DEVICE]...",
        "write": "cellctl write [OPTIONS] TAG=VALUE...",
        "plan": "cellctl plan [OPTIONS] RECIPE",
        "schema": "cellctl schema [OPTIONS] [KIND]",
        "demo": "cellctl demo [OPTIONS]",
    }
    for command, usage in expected.items():
        _, out, _ = cli(capsys, command, "--help")
        assert usage in re.sub(r"\x1b\[[0-9;]*m", "", out), out


def test_demo_with_a_cell_without_press_fit_says_so(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cell = tmp_path / "cell.yaml"
    cell.write_text(DEMO_CELL.read_text(encoding="utf-8"), encoding="utf-8")
    code, out, err = cli(capsys, "demo", "--cell", str(cell))
    assert code == 1  # bad input, nothing started
    assert f"no {tmp_path / 'press-fit.yaml'};" in err, err
    assert "demo runs the press-fit.yaml recipe beside its cell file" in err
    assert "Traceback" not in out + err
