"""The testing kit as a user's repository meets it: a folder with only a cell file, a recipe and
a short test file runs on simulators under pytest, the plugin found through cellctl's installed
entry point (no conftest); and the kit's own faults and waits on a served cell."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cellctl.io.sim import SimulatorError
from cellctl.testing import serve, wait_until
from hil_tests.run_support import DEMO_CELL, PRESS_FIT

#: The README's example of a user's test file: the demo recipe on the cell's simulators.
RUNS_TO_COMPLETE = """\
import pytest

pytestmark = pytest.mark.cellctl_cell("cell.yaml", speed=4)


def test_press_fit_runs_to_complete(cell_sim, run_recipe):
    result = run_recipe("press-fit.yaml", params=["parts=1"])
    assert result.exit_code == 0, result.out + result.err
    assert result.outcome == "Complete"
"""

#: No marker: the cell is named on the command line or in the settings.
EVERY_DEVICE_ANSWERS = """\
def test_every_device_answers(cell_sim, cellctl_cli):
    result = cellctl_cli("check", cell_sim.cell_file)
    assert result.exit_code == 0, result.out + result.err
"""

#: A last step that can never be met: the batch holds instead of completing.
NEVER_MET = '\n  - {id: never, wait: "conveyor.fault", timeout: 300ms}\n'

#: Each variant: its test file, whether its recipe can complete, pytest's further arguments,
#: pytest's exit code, and what its output must say.
VARIANTS = {
    "completes": (RUNS_TO_COMPLETE, True, [], 0, "1 passed"),
    "does-not-complete": (RUNS_TO_COMPLETE, False, [], 1, "step 'never' timed out"),
    "option": (EVERY_DEVICE_ANSWERS, True, ["--cellctl-cell=cell.yaml"], 0, "1 passed"),
    "setting": (EVERY_DEVICE_ANSWERS, True, ["-o", "cellctl_cell=cell.yaml"], 0, "1 passed"),
    "no-cell": (EVERY_DEVICE_ANSWERS, True, [], 1, "cell_sim has no cell: name the cell file"),
}


def user_repository(folder: Path, test: str, completes: bool) -> None:
    """What a user keeps in their repository: a cell file, a recipe and one test file."""
    (folder / "cell.yaml").write_bytes(DEMO_CELL.read_bytes())
    recipe = PRESS_FIT.read_text(encoding="utf-8")
    (folder / "press-fit.yaml").write_text(recipe + ("" if completes else NEVER_MET), "utf-8")
    (folder / "test_cell.py").write_text(test, encoding="utf-8")


#: The variants the extended tier runs (each is a whole pytest run, 5–10 s): the default suite
#: keeps the one that completes.
EXTENDED_VARIANTS = {"does-not-complete", "option", "setting", "no-cell"}


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(v, marks=[pytest.mark.extended] if v in EXTENDED_VARIANTS else [])
        for v in VARIANTS
    ],
)
def test_a_users_repository_runs_its_recipe_on_simulators_under_pytest(
    tmp_path: Path, variant: str
) -> None:
    test, completes, args, code, says = VARIANTS[variant]
    folder = tmp_path / "cells"
    folder.mkdir()
    user_repository(folder, test, completes)
    assert sorted(p.name for p in folder.iterdir()) == [
        "cell.yaml",
        "press-fit.yaml",
        "test_cell.py",
    ]
    # As a fresh CI job runs it: none of this run's pytest settings, its own log file.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    env["CELLCTL_LOG_FILE"] = str(tmp_path / "cellctl.log")
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == code, done.stdout + done.stderr
    assert says in done.stdout, done.stdout + done.stderr


def test_a_fault_raised_and_cleared_reaches_the_devices_image(tmp_path: Path) -> None:
    with serve(DEMO_CELL, tmp_path) as served:

        def curtain() -> object:
            return served.image_value("conveyor", "safety.light_curtain_ok")

        wait_until(lambda: curtain() is True, 5, "the light curtain to be clear at first")
        served.fault("conveyor", "light-curtain")
        wait_until(lambda: curtain() is False, 5, "the broken light curtain on the conveyor")
        served.fault("conveyor", "light-curtain", on=False)
        wait_until(lambda: curtain() is True, 5, "the light curtain clear again")
        with pytest.raises(SimulatorError, match="no fault 'jam' on device 'conveyor'; known: "):
            served.fault("conveyor", "jam")
