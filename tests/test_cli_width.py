"""`cellctl states` and `cellctl plan` on an 80-column terminal: nothing wider than the screen,
no state cut short, a long step wrapped instead of cut."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.cells import cell_len
from rich.console import Console

from cellctl import cli
from cellctl.cli import consoles
from cellctl.control.machine import state_table_rows

DEMO = Path(__file__).parent.parent / "recipes" / "demo"


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The CLI's stdout as an 80-column terminal (set up as the CLI's own console is)."""
    stream = io.StringIO()
    console = Console(
        file=stream,
        width=80,
        force_terminal=True,
        color_system=None,
        highlight=False,
        soft_wrap=True,
        emoji=False,
    )
    monkeypatch.setattr(consoles, "out", console)
    return stream


def rows_of(stream: io.StringIO) -> list[str]:
    rows = stream.getvalue().rstrip("\n").split("\n")
    too_wide = [row for row in rows if cell_len(row) > 80]
    assert not too_wide, "\n".join(too_wide)
    return rows


def test_states_at_80_columns_shows_every_transition_whole(screen: io.StringIO) -> None:
    assert cli.run(["states"]) == 0
    rows = rows_of(screen)
    assert not any("…" in row for row in rows)
    # Read the table back: (state, command, next state) for every row.
    shown: set[tuple[str, str, str]] = set()
    state = ""
    for row in rows:
        cells = [cell.strip() for cell in row.split("│")[1:-1]]
        if len(cells) != 3:
            continue
        state = cells[0] or state
        shown.add((state, cells[1], cells[2]))
    header, *table = state_table_rows()
    wanted = {
        (row[0], header[n], target) for row in table for n, target in enumerate(row) if n and target
    }
    assert shown == wanted


def test_plan_at_80_columns_wraps_a_long_step(screen: io.StringIO, tmp_path: Path) -> None:
    recipe = tmp_path / "long-step.yaml"
    recipe.write_text(
        "recipe: long-step\nversion: 1\nsteps:\n"
        "  - id: prepare-every-station-for-the-next-batch\n"
        "    set: {conveyor.speed_rpm: 1200, conveyor.run: true, press.setpoint_kN: 12.5,\n"
        "          press.cycle_start: false, inspection.trigger: false}\n",
        encoding="utf-8",
    )
    assert cli.run(["plan", str(recipe), "--cell", str(DEMO / "cell.yaml")]) == 0
    rows = rows_of(screen)
    flowing = " ".join(row.strip(" │├└─") for row in rows)
    for assignment in (
        "conveyor.speed_rpm = 1200",
        "conveyor.run = true",
        "press.setpoint_kN = 12.5",
        "press.cycle_start = false",
        "inspection.trigger = false",
    ):
        assert assignment in flowing, "\n".join(rows)
    assert "writes conveyor.speed_rpm, conveyor.run, press.setpoint_kN" in flowing
