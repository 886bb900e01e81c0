"""A bug of ours ends a command with exit 4: one line on the console, the traceback in the log."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import pytest

from cellctl import exitcodes
from cellctl.testing import cli
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantModel, SimClock
from drivers.sim.plant.registry import MODELS


class _Miscounted(PlantModel):
    """A plant model with a bug: it divides by its signal count, and it has no signals."""

    model = "miscounted"

    def __init__(
        self, image: ProcessImage, clock: SimClock, signal_map: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(image, clock, signal_map)
        self.share = 1.0 / len(self.signals)


CELL = (
    "cell: bench\n"
    "devices:\n  m: {driver: memory, sim: miscounted}\n"
    "tags:\n  m.x: {device: m, type: int32, access: rw}\n"
)
RECIPE = "recipe: r\nversion: 1\nsteps:\n  - {id: a, set: {m.x: 5}}\n"


@pytest.fixture
def recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recipe whose cell simulates its device with the buggy model, registered by its name."""
    monkeypatch.setitem(MODELS, _Miscounted.model, _Miscounted)
    for name, text in (("cell.yaml", CELL), ("r.yaml", RECIPE)):
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path / "r.yaml"


@pytest.mark.parametrize("debug", [[], ["--debug"]])
def test_an_internal_error_exits_4_with_one_line_and_the_traceback_in_the_log(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recipe: Path, debug: list[str]
) -> None:
    log = tmp_path / "cellctl.log"
    code, out, err = cli(capsys, *debug, "--log-file", log, "run", recipe, "--sim")
    assert code == exitcodes.INTERNAL_ERROR == 4, (out, err)
    lines = err.splitlines()
    # --debug shows the libraries' records too, but the error is still said once.
    assert lines[-1] == f"error: internal error, see the log {log}"
    assert [line for line in lines if "internal error" in line] == lines[-1:]
    assert debug or len(lines) == 1
    assert "Traceback" not in out + err
    [record] = [r for r in map(json.loads, log.read_text("utf-8").splitlines()) if "exception" in r]
    assert (record["event"], record["level"]) == ("internal error", "error")
    [raised] = record["exception"]
    assert raised["exc_type"] == "ZeroDivisionError"
    assert any(frame["name"] == "__init__" for frame in raised["frames"])
    assert raised["frames"][-1]["filename"] == __file__


def test_an_internal_error_that_no_log_file_takes_is_named_on_its_one_line(
    capsys: pytest.CaptureFixture[str], recipe: Path
) -> None:
    # /dev/full takes no write (a full disk): the traceback has nowhere to go.
    code, out, err = cli(capsys, "--log-file", "/dev/full", "run", recipe, "--sim")
    assert code == exitcodes.INTERNAL_ERROR, (out, err)
    assert err.splitlines()[-1] == (
        "error: internal error: ZeroDivisionError: float division by zero "
        "(no log file could take the traceback)"
    )
    assert "Traceback" not in out + err


def test_bad_input_stays_exit_1_without_a_log_reference(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, recipe: Path
) -> None:
    code, _, err = cli(capsys, "--log-file", tmp_path / "cellctl.log", "run", recipe, "-p", "x=1")
    assert code == exitcodes.BAD_INPUT
    assert err.splitlines() == ["error: unknown parameter 'x' (recipe r has: none)"]
