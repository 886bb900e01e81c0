"""Any valid recipe runs on any valid cell's simulators, not only press-fit on the demo cell:
every demo recipe with --sim, and a cell of Modbus TCP, Modbus RTU and OPC UA devices without
plant models, served by --sim in-process and by `cellctl sim` in another process."""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.testing import cli, free_port, serve_in_child

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "recipes" / "demo"
MIXED = Path(__file__).resolve().parent / "cells" / "mixed"
SETUP = MIXED / "setup.yaml"

#: What each demo recipe needs to run unattended and short: answers to its prompts (any text
#: acknowledges a prompt without a typed answer) and small parameters.
DEMO_ARGS: dict[str, list[str]] = {
    "press-fit": ["-p", "parts=1"],
    "changeover": [
        "--answer",
        "swap-tool=A12",
        "--answer",
        "wrong-tool=ok",
        "--answer",
        "trial-rejected=ok",
    ],
    "press-calibration": [
        "--answer",
        "prepare=ok",
        "--answer",
        "gauge-drift=ok",
    ],
}

DEMO_RECIPES = sorted(p for p in DEMO.glob("*.yaml") if p.name != "cell.yaml")


def test_every_demo_recipe_has_its_unattended_arguments() -> None:
    # A new demo recipe must be added to DEMO_ARGS, so the test below runs it as meant.
    assert {p.stem for p in DEMO_RECIPES} == set(DEMO_ARGS)


@pytest.mark.parametrize("recipe", DEMO_RECIPES, ids=lambda p: p.stem)
def test_every_demo_recipe_completes_on_the_simulators(
    recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", recipe, "--sim", "--speed", "4", *DEMO_ARGS[recipe.stem])
    assert code == 0, out + err
    assert "outcome: Complete" in out
    assert "faults: none" in out
    assert "steps: 0 done" not in out
    # Nothing but the connect report, which a loaded machine's slow connect prints by design.
    assert [line for line in err.splitlines() if not line.startswith("connecting to ")] == []


def check_setup_output(out: str) -> None:
    """`setup` wrote to every device, saw its values come back and called the OPC UA method."""
    assert "outcome: Complete" in out
    assert "steps: 6 done, 0 skipped, 0 failed" in out
    for written in (
        "wrote plc.recipe_no = 12",
        "wrote drive.speed_rpm = 1450.5",
        "wrote drive.reverse = true",
        "wrote gauge.limit_mm = 2.5",
        "wrote gauge.lot = L-0042",
    ):
        assert written in out
    # A generic OPC UA method answers the zero value of its result type.
    assert "called gauge.zero(channel=1) -> false" in out


def test_generic_devices_on_every_protocol_with_sim(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "run", SETUP, "--sim")
    assert code == 0, out + err
    check_setup_output(out)


@pytest.fixture
def served_mixed(tmp_path: Path) -> Iterator[Path]:
    """`cellctl sim` serving the mixed cell (on free ports) in a child; the cell file it wrote."""
    text = (MIXED / "cell.yaml").read_text(encoding="utf-8")
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        text.replace("port: 5020", f"port: {free_port()}").replace(
            "127.0.0.1:4840", f"127.0.0.1:{free_port()}"
        ),
        encoding="utf-8",
    )
    # SIGTERM is a normal end of `cellctl sim`, as SIGINT is.
    log = tmp_path / "sim.log"
    with serve_in_child(cell, tmp_path / "served.yaml", stop=signal.SIGTERM, log_file=log) as child:
        yield child.cell_file


def test_generic_devices_served_by_cellctl_sim_in_another_process(
    served_mixed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", SETUP, "--cell", served_mixed)
    assert code == 0, out + err
    check_setup_output(out)
    # The simulators in the other process keep what the batch wrote.
    code, out, err = cli(capsys, "read", "--cell", served_mixed, "--json")
    assert code == 0, err
    values = {row["tag"]: row["value"] for row in json.loads(out)}
    assert values == {
        "plc.enable": False,
        "plc.recipe_no": 12,
        "drive.speed_rpm": 1450.5,
        "drive.reverse": True,
        "gauge.limit_mm": 2.5,
        "gauge.lot": "L-0042",
    }
