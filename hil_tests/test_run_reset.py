"""Resetting prepares the demo cell on its simulators: a press left latched by a manual
`cellctl write` (cycle_start and cycle_done true) is released, and the cell is Idle only once
the press's own model says its cycle has ended; a robot that stays busy stops the batch."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.control.events import Notice, TagWritten
from cellctl.control.machine import Command, State
from cellctl.testing import Served, cli, controller_for, wait_until
from hil_tests.run_support import PRESS_FIT, heartbeat_quiet, serve_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on its simulators, shared by the tests below."""
    with serve_demo(tmp_path_factory.mktemp("reset")) as served:
        yield served


def test_resetting_releases_a_press_latched_by_a_manual_write_before_start(
    demo: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    served = demo
    # A watchdog armed by an earlier controller's heartbeat would release the press itself.
    wait_until(lambda: heartbeat_quiet(served), 10, "the devices' watchdogs to be quiet")
    # As the README's `write` example does, with nobody to release the press afterwards.
    code, _, err = cli(
        capsys,
        "write",
        "--cell",
        served.cell_file,
        "press.setpoint_kN=12.5",
        "press.cycle_start=on",
    )
    assert code == 0, err
    wait_until(lambda: served.model_value("press", "cycle_done") is True, 10, "a cycle")
    cycles = served.model_value("press", "cycles")

    async def reset() -> tuple[State, list[object], bool, bool]:
        async with controller_for(served.cell_file, PRESS_FIT) as harness:
            await harness.controller.command(Command.RESET, cause="test")
            state = await harness.controller.wait_for({State.IDLE, State.STOPPED})
            # Idle, before any Start: what the press's own image and model hold now.
            start = await asyncio.to_thread(served.image_value, "press", "press.cycle_start")
            done = await asyncio.to_thread(served.model_value, "press", "cycle_done")
            return state, list(harness.events), bool(start), bool(done)

    state, events, cycle_start, cycle_done = asyncio.run(reset())
    assert state is State.IDLE
    assert (cycle_start, cycle_done) == (False, False)
    assert served.model_value("press", "cycles") == cycles  # released, not pressed again
    written = [(e.tag, e.value) for e in events if isinstance(e, TagWritten)]
    assert ("press.cycle_start", False) in written  # on record
    ready = [e.text for e in events if isinstance(e, Notice) and "is ready" in e.text]
    assert ready and "press.cycle_done = false" in ready[-1], ready


def test_a_robot_that_stays_busy_stops_the_batch_with_exit_3_naming_it(
    demo: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = demo.cell_file.read_text(encoding="utf-8")
    assert text.count("timeout: 10s}") == 1  # the demo's ready
    cell_file = tmp_path / "cell.yaml"
    cell_file.write_text(text.replace("timeout: 10s}", "timeout: 500ms}"), encoding="utf-8")
    demo.on_loop(lambda: demo.simulator.models["robot"].set("busy", True))
    try:
        code, out, err = cli(capsys, "run", PRESS_FIT, "--cell", cell_file)
    finally:
        demo.on_loop(lambda: demo.simulator.models["robot"].set("busy", False))
    assert code == 3, out + err
    cause = "Resetting: the cell is not ready after 0.5 s: robot.busy is true (robot.busy = true)"
    assert f"cause: {cause}" in out
    assert "outcome: Stopped" in out and "safe state (Stopping): " in out
    assert "press.setpoint_kN" not in out  # nothing of the recipe was written
