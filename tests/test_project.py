"""The project's own set-up: what an install ships, and pytest's options from any folder."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO_CELL = ROOT / "recipes" / "demo" / "cell.yaml"


def _setuptools() -> dict[str, object]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        config: dict[str, object] = tomllib.load(file)["tool"]["setuptools"]
    return config


def test_every_package_on_disk_is_listed_for_the_install() -> None:
    # pyproject.toml lists packages (to map the demo into the package): a new one must be added.
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("cellctl", "drivers")
        for init in (ROOT / top).rglob("__init__.py")
    }
    listed = set(_setuptools()["packages"])  # type: ignore[call-overload]
    assert listed == on_disk | {"cellctl._demo"}


def test_the_folder_mapped_to_the_demo_package_holds_the_demo() -> None:
    # A moved or renamed folder would install an empty cellctl._demo: `cellctl demo` would fail.
    folder = ROOT / _setuptools()["package-dir"]["cellctl._demo"]  # type: ignore[index]
    assert (folder / "cell.yaml").is_file() and (folder / "press-fit.yaml").is_file()


@pytest.mark.parametrize(
    ("cwd", "args"),
    [
        # No path named: `--cell=FILE`, one word (see the root conftest.py for why).
        (ROOT, ["--cell={cell}", "-o", "testpaths=tests/test_project.py"]),
        (ROOT / "hil_tests", ["--cell={cell}", "-o", "python_files=test_cell.py"]),
        # A path named: pytest finds its settings from it, so `--cell FILE` works too.
        (ROOT, ["hil_tests/test_cell.py", "--cell", "{cell}", "--allow-motion"]),
        (ROOT / "hil_tests", ["test_cell.py", "--cell", "{cell}", "--allow-motion"]),
    ],
    ids=["root", "in-hil_tests", "root-hil_tests", "in-hil_tests-path"],
)
def test_pytest_takes_a_cell_file_from_anywhere(tmp_path: Path, cwd: Path, args: list[str]) -> None:
    cell = tmp_path / "cell.yaml"
    cell.write_bytes(DEMO_CELL.read_bytes())
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
    command += [arg.format(cell=cell) for arg in args]
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "hil_tests/test_cell.py::" in done.stdout or "test_project.py::" in done.stdout


def test_pytest_cell_file_from_the_root_as_the_issue_writes_it() -> None:
    # `pytest --cell FILE`, two words and no path, from the top of the clone (FILE inside it).
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only"]
    command += ["--cell", "recipes/demo/cell.yaml", "--allow-motion"]
    command += ["-o", "testpaths=tests/test_project.py"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "test_project.py::" in done.stdout


@pytest.mark.parametrize(
    ("cell", "workers"),
    # Without --cell on two workers: 10 s of a second pytest, in the extended tier.
    [(True, False), pytest.param(False, True, marks=pytest.mark.extended)],
)
def test_tests_of_real_machines_run_one_at_a_time(
    tmp_path: Path, cell: bool, workers: bool
) -> None:
    # The suite runs on two workers; with --cell, two tests would move the same machine.
    command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider"]
    command += ["tests/test_project.py", "-k", "the_folder_mapped"]
    if cell:
        command += ["--cell", str(DEMO_CELL)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ("[gw0]" in done.stdout or "[gw1]" in done.stdout) is workers, done.stdout
