"""Number options (`--speed`) are read by the one parser of typed values: no '1_2', no
full-width digits, the range and messages typer gives a bad number, exit 1."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.testing import cli

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"


def _commands(missing: Path) -> dict[str, list[str]]:
    """Each command with --speed, on a cell file that does not exist: a --speed that parses
    reaches the command, which refuses the file (so nothing is ever served here)."""
    return {
        "sim": ["sim", str(missing)],
        "demo": ["demo", "--cell", str(missing)],
        "run": ["run", str(DEMO / "press-fit.yaml"), "--sim", "--cell", str(missing)],
    }


@pytest.mark.parametrize("command", ["sim", "demo", "run"])
@pytest.mark.parametrize(
    "text", ["1_2", "１２", "1_000"], ids=["underscore", "full-width", "1_000"]
)
def test_speed_refuses_separators_and_other_digits(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: str, text: str
) -> None:
    args = _commands(tmp_path / "no-cell.yaml")[command]
    code, out, err = cli(capsys, *args, "--speed", text)
    assert code == 1, out + err
    assert "Invalid value for '--speed'" in err, err
    assert "Input should be a valid number" in err, err
    assert "Traceback" not in out + err


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("fast", "Input should be a valid number, unable to parse string as a number"),
        ("0.001", "Input should be greater than or equal to 0.01"),
        ("1001", "Input should be less than or equal to 1000"),
    ],
)
def test_speed_out_of_range_or_no_number_is_worded_as_before(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, says: str
) -> None:
    code, _, err = cli(capsys, "sim", str(tmp_path / "no-cell.yaml"), "--speed", text)
    assert code == 1
    assert "Invalid value for '--speed'" in err and says in err, err


@pytest.mark.parametrize("text", ["2", " 2.5", "1e2", "1000", "0.01"])
def test_speed_takes_plain_numbers(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str
) -> None:
    # Parsed, so the command itself runs and refuses what it is given instead.
    code, _, err = cli(capsys, "run", str(DEMO / "press-fit.yaml"), "--speed", text)
    assert code == 1
    assert "error: --speed sets the simulators' time; it needs --sim" in err, err
