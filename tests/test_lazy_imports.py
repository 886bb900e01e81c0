"""Each command imports only what it needs: `--version` no model, loader, driver or live view;
`validate` and `plan` no protocol library. Checked in a fresh child process, by the modules it
holds once the command ended (never by a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
DEMO = RECIPES / "demo"

#: The protocol libraries and the drivers that wrap them: only commands that talk to devices.
PROTOCOLS = ("asyncua", "pymodbus", "serial", "drivers.modbus", "drivers.opcua", "drivers.sim")

#: What `--version` has no use for: the models, the YAML loader, logging, the controller, the
#: live views, besides the protocols.
NOT_FOR_VERSION = (
    *PROTOCOLS,
    "pydantic",
    "ruamel",
    "structlog",
    "transitions",
    "asyncio",
    "cellctl.cell",
    "cellctl.recipe",
    "cellctl.control",
    "cellctl.io",
    "cellctl.logsetup",
    "rich.live",
    "rich.table",
)

#: The child: runs the CLI in-process on its arguments, then prints its exit code and the
#: modules it holds as the last line.
CHILD = """
import json, sys
from cellctl.cli import run
code = run(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""


def imported_by(*args: str) -> list[str]:
    """The modules a fresh process holds after `cellctl ARGS` ended with exit 0."""
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert child.returncode == 0 and child.stdout, child.stderr  # the child's own traceback
    result = json.loads(child.stdout.splitlines()[-1])
    assert result["code"] == 0, child.stdout + child.stderr
    modules: list[str] = result["modules"]
    return modules


def loaded(modules: list[str], packages: tuple[str, ...]) -> list[str]:
    """The modules that are one of `packages` or inside one."""
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in packages)]


def test_version_imports_no_model_loader_driver_or_view() -> None:
    assert loaded(imported_by("--version"), NOT_FOR_VERSION) == []


@pytest.mark.parametrize(
    "command",
    [
        ["validate", str(DEMO / "press-fit.yaml"), str(DEMO / "cell.yaml")],
        ["plan", str(DEMO / "press-fit.yaml")],
    ],
    ids=["validate", "plan"],
)
def test_file_commands_import_no_protocol_library(tmp_path: Path, command: list[str]) -> None:
    modules = imported_by("--log-file", str(tmp_path / "log"), *command)
    assert "cellctl.recipe" in modules  # the command did its work
    assert loaded(modules, PROTOCOLS) == []


def test_batch_on_memory_devices_imports_no_protocol_library(tmp_path: Path) -> None:
    # The README's examples cell has one memory device: its drivers need neither library.
    (tmp_path / "cell.yaml").write_bytes((RECIPES / "examples" / "cell.yaml").read_bytes())
    recipe = tmp_path / "count.yaml"
    recipe.write_text(
        "recipe: count\nversion: 1\nsteps:\n"
        "  - {id: label, set: {batch.lot: \"'LOT-42'\", batch.count: 3}}\n",
        encoding="utf-8",
    )
    modules = imported_by("--log-file", str(tmp_path / "log"), "run", str(recipe))
    assert "drivers.memory" in modules  # the batch ran on its driver
    assert loaded(modules, PROTOCOLS) == []
