"""A Hold during the demo's press step, after cycle_start true was confirmed: the safe state
sets cycle_start false (the press aborts its cycle) and Unholding does not restore it, so
Unhold asks the operator. Re-run presses the part (the press model's own cycle count is the
witness), skip is on record, abort ends Aborted with the safe state on the devices. Over the
real protocols on the demo cell's simulators; `cellctl demo --fault` answers re-run by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cell import ModbusTcpDevice
from cellctl.control.events import Event, StepEnded, StepOutcome, StepStarted, TagWritten
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice
from cellctl.testing import Harness, Served, cli, controller_for, held_or_ended, wait_event
from hil_tests.run_support import DEMO, PRESS_FIT, ConveyorOutputs, read_conveyor, serve_demo
from hil_tests.test_run_keys import changes, logged, served_generic, write_register
from hil_tests.test_run_terminal import CELLS, SIZES, Terminal, terminal

__all__ = ["served_generic", "terminal"]  # fixtures, imported for the terminal test

#: Seconds a one-part batch may take here before the test fails (about 2 s at SPEED).
BATCH = 20.0


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on simulators shared by this module's tests."""
    with serve_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


def press_started(event: Event) -> bool:
    """The press step's cycle_start true, confirmed by the press."""
    return (
        isinstance(event, TagWritten)
        and event.tag == "press.cycle_start"
        and event.value is True
        and event.path is not None
    )


def outcomes(run: Harness, step_id: str) -> list[StepOutcome]:
    """How each attempt at a step ended, in order."""
    return [e.outcome for e in run.of(StepEnded) if e.step_id == step_id]


@pytest.mark.parametrize("choice", ["rerun", "skip", "abort"])
def test_hold_in_press_asks_and_the_answer_is_carried_out(demo: Served, choice: str) -> None:
    press = demo.simulator.models["press"]

    async def scenario() -> None:
        cycles = int(press.get("cycles"))
        async with controller_for(demo.cell_file, PRESS_FIT, params=["parts=1"]) as run:
            held: list[Event] = []

            def hold_in_press(event: Event) -> None:
                if press_started(event) and not held:
                    held.append(event)
                    run.controller.request(Command.HOLD, cause="test: hold in press")

            run.controller.listeners.append(hold_in_press)
            batch = asyncio.ensure_future(run.run_batch())
            try:
                assert await held_or_ended(run, BATCH) is State.HELD, run.events
                question = run.controller.executor.failure
                assert question is not None and question.step_id == "press", run.events
                assert question.undone == ("press.cycle_start",)
                assert "press.cycle_start was set false by the safe state" in question.message
                # The press aborted the cycle the safe state cut: no part counted.
                assert press.get("cycle_start") is False
                assert int(press.get("cycles")) == cycles
                if choice == "abort":
                    await run.controller.command(Command.ABORT, cause="test: abort")
                    ended = await asyncio.wait_for(batch, BATCH)
                    assert ended.state is State.ABORTED
                    assert await read_conveyor(demo.cell) == ConveyorOutputs(False, 0)
                    assert press.get("cycle_start") is False
                    assert int(press.get("cycles")) == cycles
                    return
                if choice == "skip":
                    await run.controller.command(Command.UNHOLD, choice=FailureChoice.SKIP)
                    await wait_event(
                        run,
                        lambda e: isinstance(e, StepStarted) and e.step_id == "release",
                        BATCH,
                        "the step after the skipped press",
                    )
                    assert outcomes(run, "press") == [StepOutcome.INTERRUPTED, StepOutcome.SKIPPED]
                    assert int(press.get("cycles")) == cycles  # skipped: not pressed again
                    await run.controller.command(Command.ABORT, cause="test: end")
                    await asyncio.wait_for(batch, BATCH)
                    return
                await run.controller.command(Command.UNHOLD, choice=FailureChoice.RETRY)
                ended = await asyncio.wait_for(batch, BATCH)
            finally:
                batch.cancel()
        assert ended.state is State.COMPLETE, ended
        # Re-run: cycle_start written true again, and the press counted this part once.
        assert len([e for e in run.events if press_started(e)]) == 2
        assert outcomes(run, "press") == [StepOutcome.INTERRUPTED, StepOutcome.DONE]
        assert int(press.get("cycles")) == cycles + 1

    demo.loop.run(scenario(), timeout=45)


def test_demo_fault_in_the_press_step_reruns_it_and_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The demo's fault comes once the second round's first write is confirmed: a press-fit
    # whose rounds start with the press step writing cycle_start has the hold land in it,
    # after cycle_start true (the step cannot end while the curtain is broken).
    cell = tmp_path / "cell.yaml"
    cell.write_text((DEMO / "cell.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    (tmp_path / "press-fit.yaml").write_text(PRESS_FIRST, encoding="utf-8")
    code, out, err = cli(capsys, "demo", "--cell", cell, "--fault", "light-curtain", "--speed", "4")
    assert code == 0, out + err
    assert "outcome: Complete" in out, out
    asked = [line for line in out.splitlines() if "Unhold asks: re-run" in line]
    assert asked and "press.cycle_start was set false by the safe state" in asked[0], out
    assert "the demo's choice: re-run" in out, out


# The demo cell's press, first thing in each round (no conveyor or robot: a short batch). Its
# first write is cycle_start, and its wait needs the light curtain: the hold of the demo's
# fault, raised once cycle_start true is confirmed, always lands in the step.
PRESS_FIRST = """\
recipe: press-fit
version: 1
parameters:
  parts: {type: int, default: 2, min: 1, max: 5}
defaults: {timeout: 5s}
steps:
  - {id: setpoint, set: {press.setpoint_kN: 12.0}}
  - repeat: parts
    steps:
      - {id: press, set: {press.cycle_start: true},
         wait: "press.cycle_done and press.force_kN >= 11.4 and safety.light_curtain_ok"}
      - {id: release, set: {press.cycle_start: false}, wait: "not press.cycle_done"}
"""


# --- on a terminal -------------------------------------------------------------------------

RERUN = CELLS / "rerun.yaml"


@pytest.mark.parametrize("size", SIZES)
def test_on_a_terminal_the_question_and_its_keys_show_and_r_reruns(
    terminal: list[Terminal],
    tmp_path: Path,
    served_generic: tuple[Path, ModbusTcpDevice],
    size: tuple[int, int],
) -> None:
    cell_file, device = served_generic
    term = Terminal(["run", str(RERUN), "--cell", str(cell_file)], tmp_path / "cellctl.log", *size)
    terminal.append(term)
    term.wait_for("step 1 cycle started", "h hold")
    term.wait_for("wrote plc.run = true")
    term.press(b"h")
    keys = "r re-run the step · s skip it · a abort"
    rows = term.wait_on_screen(
        "state Held",
        "step 1 cycle: its writes were undone: plc.run was set false by the safe state",
        keys,
    )
    # The question's keys, once, at the bottom: no second row of the same keys.
    assert [row for row in rows if row][-1] == keys
    assert sum("s skip it" in row for row in rows) == 1, "\n".join(rows)
    write_register(device, 1, 5)  # plc.mode = 5: what the step waits for, once it runs again
    at = term.press(b"r")
    assert term.exit_code() == 0, term.text()
    assert "outcome: Complete" in term.text(at)
    assert ("Held", "Unholding", "the operator (key r)") in changes(tmp_path)
    written = [(r["tag"], r["value"]) for r in logged(tmp_path, "TagWritten") if r["path"] == "1"]
    # The step's writes again, in its order, after the safe state undid them.
    assert written == [("plc.speed", 300), ("plc.run", True)] * 2
    ends = [(r["step_id"], r["outcome"]) for r in logged(tmp_path, "StepEnded")]
    assert ends == [("cycle", "interrupted"), ("cycle", "done"), ("stop", "done")]
