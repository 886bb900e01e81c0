"""Unhold's question asked after Held was entered (memory drivers): a device lost while holding
gets its safe state from the keeper once it answers again, and that write undoes the held
step's own writes. The question is an event (UnholdAsks), the view shows it then (not only on
entering Held), and a run that already ended Held without a terminal names it as its cause."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import pytest
from rich.console import Console

from cellctl import exitcodes
from cellctl.cli.batch import BatchRun, RunOptions, prepare
from cellctl.cli.views.run import FittedView
from cellctl.control.events import Event, Notice, StateChanged, UnholdAsks, WaitProgress
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice
from cellctl.testing import wait_until
from drivers.errors import DeviceTimeout
from tests.test_controller import CELL, DEADLINE, Bench, opened
from tests.test_unhold_undone import PRESSING, QUESTION, outcomes

LOST = DeviceTimeout("press: no answer within 0.2 s")
#: The cause of a batch that ended Held on the question, nobody there to answer it.
UNANSWERED = f"Held: {QUESTION}; re-run, skip or abort needs an operator"


@pytest.mark.asyncio
async def test_the_keepers_late_safe_state_asks_unhold_while_held() -> None:
    async with opened(Bench(PRESSING)) as rig:
        await rig.ctl.command(Command.RESET)
        await rig.settle(State.IDLE)
        await rig.ctl.command(Command.START)
        await wait_until(lambda: any(e.step_id == "press" for e in rig.of(WaitProgress)))
        # Lost while `press` waits after its writes: Holding's safe state cannot reach the
        # press, so nothing of the step is undone yet (the line's tags are restored on Unhold).
        rig.drivers["press"].fail(LOST)
        await rig.settle(State.HELD)
        assert rig.ctl.executor.failure is None and rig.of(UnholdAsks) == []
        held_at = len(rig.events)

        rig.drivers["press"].fail(None)  # answers again: the keeper writes its safe state
        await wait_until(lambda: rig.of(UnholdAsks) != [], DEADLINE, "Unhold's question")
        asked = rig.of(UnholdAsks)
        assert [(e.path, e.step_id, e.question) for e in asked] == [("2", "press", QUESTION)]
        assert asked[0].text == f"{QUESTION}; Unhold asks: re-run, skip or abort"
        assert rig.since(held_at, StateChanged) == []  # asked in Held: no state change tells
        assert rig.ctl.unanswered() == UNANSWERED

        rig.react()  # line.done once press.go is written true again
        await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
        assert await rig.settle(State.COMPLETE) is State.COMPLETE
        assert outcomes(rig, "press")[-1] == "done"
        assert rig.ctl.unanswered() is None


@pytest.mark.asyncio
async def test_a_question_after_a_headless_run_ended_held_shows_and_is_its_cause(
    tmp_path: Path,
) -> None:
    (tmp_path / "cell.yaml").write_bytes(CELL)
    (tmp_path / "r.yaml").write_text(PRESSING)
    options = RunOptions(recipe=tmp_path / "r.yaml", cell=tmp_path / "cell.yaml", safe_wait=30)
    printed = io.StringIO()
    out = Console(file=printed, width=300)
    run = BatchRun(options, prepare(options), out)
    rig = Bench(PRESSING)  # its memory devices and TagIO (the run makes its own controller)
    await rig.io.connect()
    running = asyncio.ensure_future(run._run_connected(rig.io, None))
    try:
        await wait_until(lambda: run.model is not None and "2" in run.model.waits)
        assert run.controller is not None and run.model is not None
        heard: list[Event] = []
        run.controller.listeners.append(heard.append)
        rig.drivers["press"].fail(LOST)
        # Without a terminal the run ends Held at once, on the hold's own cause; it then waits
        # for the press's safe state to be confirmed.
        await wait_until(lambda: run.model is not None and run.model.ended is not None)
        ended = run.model.ended
        assert ended is not None and ended.state is State.HELD
        assert ended.cause is not None and "comm-loss:press" in ended.cause
        assert run.model.question is None

        rig.drivers["press"].fail(None)  # the keeper's write undoes the step: the question
        async with asyncio.timeout(DEADLINE):
            code = await running
    finally:
        running.cancel()  # ended by now, unless an assertion above failed
        await asyncio.gather(running, return_exceptions=True)
        await rig.io.close()
    assert [e.question for e in heard if isinstance(e, UnholdAsks)] == [QUESTION]
    # The view follows the question that came after Held (with its keys)...
    assert run.model.question == QUESTION
    drawn = io.StringIO()
    Console(file=drawn, width=80, height=24, color_system=None).print(FittedView(run.model))
    assert "r re-run the step · s skip it · a abort" in drawn.getvalue()
    # ...and the run names it as what it ended on (exit 3 once the safe state is confirmed).
    assert code == exitcodes.BATCH_NOT_COMPLETE
    # Both causes, the hold's and the question's; the log's last word says the same.
    cause = next(line for line in printed.getvalue().splitlines() if line.startswith("cause: "))
    assert "comm-loss:press" in cause and cause.endswith(f"; then {UNANSWERED}"), cause
    notices = [e.text for e in heard if isinstance(e, Notice)]
    assert notices[-1] == f"the batch ended Held: {cause.removeprefix('cause: ')}"
