"""`cellctl demo` from an installed (not editable) copy, run in a folder that is not the
project's: the demo cell and its recipes must ship inside the package."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: Prints where cellctl was imported from, then runs `python -m cellctl` with the given args.
RUN_CELLCTL = (
    "import runpy, sys, cellctl; print('imported', cellctl.__file__, flush=True); "
    "sys.argv = ['cellctl', *sys.argv[1:]]; runpy.run_module('cellctl', run_name='__main__')"
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `pip install .` puts in site-packages: the project's setuptools configuration run
    by the venv's setuptools on a copy of the sources (no network, no `wheel` package: build_py
    makes exactly the files of the wheel's purelib). Nothing is written in the project."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("cellctl", "drivers", "recipes"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    site = tmp / "site"  # its parent holds no recipes/: the source tree's demo is not found
    build = [sys.executable, "-c", "from setuptools import setup; setup()"]
    build += ["-q", "build_py", "--build-lib", str(site)]
    done = subprocess.run(build, cwd=source, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return site


def cellctl(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the installed copy: `-S` keeps the venv's .pth files (the editable install's
    finder) out, so cellctl comes from `installed`, its dependencies from the venv."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(installed), sysconfig.get_paths()["purelib"]])
    command = [sys.executable, "-S", "-c", RUN_CELLCTL, *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_the_installed_demo_runs_to_complete_from_any_folder(
    installed: Path, tmp_path: Path
) -> None:
    assert sorted(p.name for p in (installed / "cellctl" / "_demo").glob("*.yaml")) == sorted(
        p.name for p in (ROOT / "recipes" / "demo").glob("*.yaml")
    )
    done = cellctl(installed, tmp_path, "demo", "--speed", "10")
    assert f"imported {installed / 'cellctl' / '__init__.py'}" in done.stdout, done.stdout
    assert done.returncode == 0, done.stdout + done.stderr
    assert "outcome: Complete" in done.stdout


def test_the_installed_demo_with_a_cell_without_press_fit_says_so(
    installed: Path, tmp_path: Path
) -> None:
    cell = tmp_path / "cell.yaml"
    shutil.copy2(installed / "cellctl" / "_demo" / "cell.yaml", cell)
    done = cellctl(installed, tmp_path, "demo", "--cell", "cell.yaml")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "there is no press-fit.yaml;" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
