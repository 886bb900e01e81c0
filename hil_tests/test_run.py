"""A batch end to end on the demo cell's simulators over the real protocols (Modbus TCP, RTU on
a pty, OPC UA): Complete, an interlock hold and Unhold, a lost device, Abort, a step timeout
and a device that is down before the start. What a device holds is read back on the device
side (a raw client of our own, or the plant model behind the RTU pty our driver holds)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cell import OpcuaDevice, load_cell
from cellctl.control.controller import CommandBlocked
from cellctl.control.events import (
    Event,
    SafeStateWritten,
    StateChanged,
    StepEnded,
    StepOutcome,
    StepStarted,
    TagWritten,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.machine import Command, State
from cellctl.testing import (
    Served,
    cli,
    controller_for,
    entered,
    free_port,
    held_or_ended,
    wait_event,
    wait_until,
)
from hil_tests.run_support import (
    PRESS_FIT,
    ConveyorOutputs,
    edit_cell,
    heartbeat_quiet,
    opcua_value,
    read_conveyor,
    serve_demo,
)

#: Seconds any one batch here may take before the test fails (they take 1–3 s at SPEED).
BATCH = 20.0
#: Slack for a loaded 2-core CI machine: a detection bound is asserted as bound × 3 + this.
CI_MARGIN = 1.0
#: The outputs of the safe state as the conveyor's Modbus server holds them.
CONVEYOR_SAFE = ConveyorOutputs(run=False, speed_rpm=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on simulators shared by this module's tests (the ones that do not kill one)."""
    with serve_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


def starts(event: Event, step_id: str, round_: int | None = None) -> bool:
    """True when `event` starts step `step_id` (in repeat round `round_`, when given)."""
    if not isinstance(event, StepStarted) or event.step_id != step_id:
        return False
    return round_ is None or event.round == round_


def test_press_fit_completes_with_exactly_the_parts_pressed(
    demo: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    before = demo.model_value("press", "cycles")
    code, out, err = cli(capsys, "run", PRESS_FIT, "--cell", demo.cell_file, "-p", "parts=2")
    assert code == 0, out + err
    assert "outcome: Complete" in out, out
    assert demo.model_value("press", "cycles") == int(before) + 2


def test_light_curtain_holds_safe_on_the_device_and_unhold_completes(demo: Served) -> None:
    simulator, cell = demo.simulator, demo.cell
    press = simulator.models["press"]

    async def scenario() -> None:
        # Set on the device, so the safe state's `inspection.trigger: false` is seen arriving.
        await opcua_value(cell, "inspection.trigger", write=True)
        cycles = int(press.get("cycles"))
        async with controller_for(demo.cell_file, PRESS_FIT, params=["parts=2"]) as run:
            broken: list[Event] = []

            def break_curtain(event: Event) -> None:
                # Once: Unhold re-enters the interrupted step, which starts it again.
                if starts(event, "wait-part", round_=2) and not broken:
                    broken.append(event)
                    simulator.fault("conveyor", "light-curtain", True)

            run.controller.listeners.append(break_curtain)
            batch = asyncio.ensure_future(run.run_batch())
            try:
                state = await held_or_ended(run, BATCH)
                assert state is State.HELD, run.events
                assert "light-curtain" in entered(run.events, State.HOLDING).cause
                # The batch had the conveyor running; the device now holds the safe state.
                assert any(
                    (e.tag, e.value, e.path) == ("conveyor.run", True, "1")
                    for e in run.of(TagWritten)
                )
                assert await read_conveyor(cell) == CONVEYOR_SAFE
                assert await opcua_value(cell, "inspection.trigger") is False
                assert press.get("cycle_start") is False
                assert int(press.get("cycles")) == cycles + 1
                # While the curtain is still broken, Unhold is refused and nothing changes.
                with pytest.raises(CommandBlocked, match="light-curtain"):
                    await run.controller.command(Command.UNHOLD)
                assert run.controller.state is State.HELD
                simulator.fault("conveyor", "light-curtain", False)
                await wait_event(
                    run,
                    lambda e: isinstance(e, TripCleared) and e.interlock == "light-curtain",
                    5.0,
                    "the light curtain to clear",
                )
                await run.controller.command(Command.UNHOLD, cause="test: curtain restored")
                ended = await asyncio.wait_for(batch, BATCH)
            finally:
                simulator.fault("conveyor", "light-curtain", False)
                batch.cancel()
        assert ended.state is State.COMPLETE, ended
        # Unhold resumed the interrupted wait: no part was pressed twice, none skipped.
        assert int(press.get("cycles")) == cycles + 2
        pressed = [e for e in run.of(StepEnded) if e.step_id == "press"]
        assert [e.outcome for e in pressed] == [StepOutcome.DONE, StepOutcome.DONE]
        # Unholding wrote the conveyor's level outputs back (a restore has no step path).
        after_held = run.events[run.events.index(entered(run.events, State.HELD)) :]
        restored = [
            (e.tag, e.value) for e in after_held if isinstance(e, TagWritten) and not e.path
        ]
        assert restored == [("conveyor.speed_rpm", 1200), ("conveyor.run", True)], restored

    demo.loop.run(scenario(), timeout=45)


@pytest.mark.parametrize("kill_at", ["pick", "picked"])  # in the call; in the wait after it
def test_robot_killed_mid_batch_trips_comm_loss_and_holds_within_the_bound(
    tmp_path: Path, kill_at: str
) -> None:
    # Its own simulators: the robot's server is stopped for good.
    with serve_demo(tmp_path) as own:
        shorter = tmp_path / "short" / "cell.yaml"
        shorter.parent.mkdir()
        edit_cell(own.cell_file, shorter, "robot", timeout="300ms", retries=1)
        robot = load_cell(shorter).devices["robot"]
        assert isinstance(robot, OpcuaDevice)
        bound = robot.publishing_interval * 2 + robot.timeout * (robot.retries + 1)

        async def scenario() -> None:
            async with controller_for(shorter, PRESS_FIT, params=["parts=1"]) as run:
                killed: list[float] = []
                stopping: list[asyncio.Future[None]] = []

                def kill_robot(event: Event) -> None:
                    if starts(event, kill_at) and not killed:
                        killed.append(time.time())
                        stopping.append(
                            asyncio.ensure_future(own.simulator.servers["robot"].stop())
                        )

                run.controller.listeners.append(kill_robot)
                batch = asyncio.ensure_future(run.run_batch())
                try:
                    state = await held_or_ended(run, BATCH)
                    await asyncio.gather(*stopping)
                    assert state is State.HELD, run.events
                    trips = [t for t in run.of(Tripped) if t.interlock == "comm-loss:robot"]
                    assert trips, run.events
                    took = entered(run.events, State.HELD).at - killed[0]
                    assert took <= bound * 3 + CI_MARGIN, f"Held {took:.2f} s after the kill"
                    assert trips[0].at - killed[0] <= bound * 3 + CI_MARGIN
                    # The lost robot blocks Unhold; Abort is never blocked.
                    with pytest.raises(CommandBlocked, match="comm-loss:robot"):
                        await run.controller.command(Command.UNHOLD)
                    await run.controller.command(Command.ABORT, cause="test: robot gone")
                    ended = await asyncio.wait_for(batch, BATCH)
                finally:
                    batch.cancel()
            assert ended.state is State.ABORTED
            assert not [
                e
                for e in run.of(StepEnded)
                if e.step_id == "picked" and e.outcome is StepOutcome.DONE
            ]
            assert await read_conveyor(own.cell) == CONVEYOR_SAFE

        own.loop.run(scenario(), timeout=45)


def test_abort_mid_wait_aborts_with_the_safe_state_on_the_device(demo: Served) -> None:
    cell = demo.cell

    async def scenario() -> None:
        await opcua_value(cell, "inspection.trigger", write=True)
        async with controller_for(demo.cell_file, PRESS_FIT, params=["parts=1"]) as run:
            aborting: list[asyncio.Future[object]] = []

            def abort(event: Event) -> None:
                # The robot is moving (busy): the `picked` wait is under way, unmet.
                if (
                    isinstance(event, WaitProgress)
                    and event.step_id == "picked"
                    and not event.met
                    and not aborting
                ):
                    aborting.append(
                        asyncio.ensure_future(
                            run.controller.command(Command.ABORT, cause="test: abort mid-wait")
                        )
                    )

            run.controller.listeners.append(abort)
            ended = await asyncio.wait_for(run.run_batch(), BATCH)
            await asyncio.gather(*aborting)
            assert ended.state is State.ABORTED, run.events
            assert await read_conveyor(cell) == CONVEYOR_SAFE
            assert await opcua_value(cell, "inspection.trigger") is False
        assert aborting
        safe = [e for e in run.of(SafeStateWritten) if "Aborting" in e.reason]
        assert safe and safe[-1].ok, safe
        # Abort cancels at once: the wait never completed and no later step started.
        aborted = next(e for e in run.of(StateChanged) if e.target is State.ABORTING)
        after = run.events[run.events.index(aborted) :]
        assert not [e for e in after if isinstance(e, StepStarted)]
        assert not [
            e for e in run.of(StepEnded) if e.step_id == "picked" and e.outcome is StepOutcome.DONE
        ]

    demo.loop.run(scenario(), timeout=45)


def test_a_step_timeout_holds_naming_the_step(
    demo: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(demo.cell_file, tmp_path / "cell.yaml")
    recipe = tmp_path / "stuck.yaml"
    recipe.write_text(
        "recipe: stuck\nversion: 1\nsteps:\n"
        "  - {id: wait-press-fault, wait: press.fault, timeout: 300ms}\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "run", recipe)
    assert code == 3, out + err
    assert "Traceback" not in out + err
    holding = [line for line in out.splitlines() if "Execute -> Holding" in line]
    assert len(holding) == 1 and "'wait-press-fault' timed out" in holding[0], out
    assert "outcome: Held" in out, out
    assert "cause: step 'wait-press-fault' timed out after 0.3 s" in out, out


def test_a_device_down_exits_2_and_nothing_is_written(
    demo: Served, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    port = free_port()
    down = tmp_path / "cell.yaml"
    edit_cell(
        demo.cell_file,
        down,
        "robot",
        endpoint=f"opc.tcp://127.0.0.1:{port}/robot",
        timeout="300ms",  # given up after timeout × (retries + 1)
    )
    # The batches before this one beat the heartbeat: their devices' watchdogs trip once, after
    # its timeout; the marks are set after that, or the trip would overwrite them.
    wait_until(lambda: heartbeat_quiet(demo), 10, "the last batch's heartbeat trips")
    # Values that neither the recipe nor the safe state would write, set on the devices.
    marks = ["conveyor.speed_rpm=777", "press.setpoint_kN=7.5", "inspection.trigger=true"]
    assert cli(capsys, "write", "--cell", demo.cell_file, *marks)[0] == 0
    written = {
        "conveyor": ["conveyor.run", "conveyor.speed_rpm"],
        "press": ["press.setpoint_kN", "press.cycle_start"],
        "inspection": ["inspection.trigger"],
    }

    def device_side() -> dict[str, object]:
        return {t: demo.image_value(d, t) for d, tags in written.items() for t in tags}

    before = device_side()
    assert before["conveyor.speed_rpm"] == 777 and before["inspection.trigger"] is True
    try:
        code, out, err = cli(capsys, "run", PRESS_FIT, "--cell", down)
        assert code == 2, out + err
        assert "robot" in err and str(port) in err, err
        assert "Traceback" not in out + err
        assert device_side() == before
    finally:
        assert cli(capsys, "write", "--cell", demo.cell_file, "inspection.trigger=false")[0] == 0
