"""Unhold after the safe state undid the interrupted step's own writes (memory drivers): the
operator is asked to re-run the step, skip it or abort, instead of re-entering a wait that can
no longer be met; not asked when nothing the step wrote was undone, or when Unholding restores
it; a run nobody can answer ends Held naming the question."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cellctl.control.controller import CommandBlocked
from cellctl.control.events import Notice, StepEnded, StepOutcome, WaitProgress
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice
from cellctl.testing import wait_until
from drivers.base import Value
from tests.test_controller import DEADLINE, Bench, assert_safe_state

# The press step sets its outputs, then waits for the part to be done: the safe state sets
# press.go and press.heat false, and restore_on_unhold lists only line.run and line.speed.
PRESSING = """\
recipe: r
version: 1
steps:
  - {id: go, set: {line.run: true, line.speed: 100}}
  - {id: press, set: {press.heat: true, press.go: true}, wait: line.done, timeout: 5s}
  - {id: lamp, set: {aux.lamp: true}}
"""

# Steps whose writes the safe state does not undo: restored ones, one that wrote the safe
# value anyway, a pure wait.
NOTHING_UNDONE = {
    "restored": "  - {id: press, set: {line.run: true, line.speed: 100}, wait: line.done, "
    "timeout: 5s}\n",
    "safe value": "  - {id: press, set: {press.go: false, aux.lamp: true}, wait: line.done, "
    "timeout: 5s}\n",
    "pure wait": "  - {id: press, wait: line.done, timeout: 5s}\n",
}

QUESTION = (
    "step 2 press: its writes were undone: press.heat was set false by the safe state; "
    "press.go was set false by the safe state"
)


@pytest_asyncio.fixture
async def pressing() -> AsyncIterator[Bench]:
    """A bench running PRESSING, connected and open."""
    rig = Bench(PRESSING)
    await rig.io.connect()
    await rig.ctl.open()
    yield rig
    await rig.ctl.close()
    await rig.io.close()


async def held_in_press(rig: Bench, *, trip: bool = False) -> None:
    """Start, and hold (by the command, or by a trip) while `press` waits after its writes."""
    await rig.ctl.command(Command.RESET)
    await rig.settle(State.IDLE)
    await rig.ctl.command(Command.START)
    await wait_until(lambda: any(e.step_id == "press" for e in rig.of(WaitProgress)))
    if trip:
        rig.device("safety.ok", False)
    else:
        await rig.ctl.command(Command.HOLD)
    await rig.settle(State.HELD)


def outcomes(rig: Bench, step_id: str) -> list[StepOutcome]:
    """How each attempt at a step ended, in order."""
    return [e.outcome for e in rig.of(StepEnded) if e.step_id == step_id]


@pytest.mark.asyncio
@pytest.mark.parametrize("trip", [False, True], ids=["hold", "trip"])
async def test_unhold_asks_and_rerun_writes_everything_again(pressing: Bench, trip: bool) -> None:
    await held_in_press(pressing, trip=trip)
    pressing.react()  # from now on: line.done once press.go is written true
    assert_safe_state(pressing, pressing.writes())
    question = pressing.ctl.executor.failure
    assert question is not None and question.step_id == "press"
    assert question.undone == ("press.heat", "press.go")
    assert question.message == QUESTION
    assert any(QUESTION in e.text for e in pressing.of(Notice))
    assert QUESTION not in pressing.ctl.faults  # a question, not a fault
    if trip:
        pressing.device("safety.ok", True)
        await wait_until(lambda: not pressing.ctl.interlocks.active)

    # Unhold without a choice is refused, naming the step, the tags and the choices.
    with pytest.raises(CommandBlocked) as refused:
        await pressing.ctl.command(Command.UNHOLD)
    assert str(refused.value) == (
        f"Unhold: {QUESTION}; choose re-run, skip or abort (every write again, the wait afresh)"
    )
    assert pressing.ctl.state is State.HELD

    pressing.forget_writes()
    # Re-run is a retry of the whole step (the r key means both).
    await pressing.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
    assert await pressing.settle(State.COMPLETE) is State.COMPLETE
    # The step's writes again, in its order, and its wait afresh (met by the new press.go).
    assert pressing.writes("press") == [("press.heat", True), ("press.go", True)]
    assert outcomes(pressing, "press") == [StepOutcome.INTERRUPTED, StepOutcome.DONE]
    assert ("aux.lamp", True) in pressing.writes("aux")


@pytest.mark.asyncio
async def test_skip_records_the_step_skipped_and_goes_on(pressing: Bench) -> None:
    await held_in_press(pressing)
    pressing.forget_writes()
    await pressing.ctl.command(Command.UNHOLD, choice=FailureChoice.SKIP)
    assert await pressing.settle(State.COMPLETE) is State.COMPLETE
    assert pressing.writes("press") == []  # nothing of the step again
    assert outcomes(pressing, "press") == [StepOutcome.INTERRUPTED, StepOutcome.SKIPPED]
    skipped = [e for e in pressing.of(StepEnded) if e.outcome is StepOutcome.SKIPPED]
    assert skipped[0].error is not None and "skipped by the operator" in skipped[0].error
    assert pressing.writes("aux") == [("aux.lamp", True)]
    assert pressing.ctl.executor.steps_done == 2  # go and lamp; press was not done


@pytest.mark.asyncio
@pytest.mark.parametrize("command", [Command.ABORT, Command.STOP])
async def test_abort_instead_ends_aborted_with_the_safe_state(
    pressing: Bench, command: Command
) -> None:
    await held_in_press(pressing)
    assert pressing.ctl.executor.failure is not None  # asked: abort is one answer
    pressing.forget_writes()
    await pressing.ctl.command(command, cause="test: instead of an answer")
    ended = State.ABORTED if command is Command.ABORT else State.STOPPED
    assert await pressing.settle(ended) is ended
    assert_safe_state(pressing, pressing.writes())
    assert ("press.go", True) not in pressing.writes()
    assert pressing.ctl.executor.failure is None


@pytest.mark.asyncio
@pytest.mark.parametrize("step", list(NOTHING_UNDONE), ids=list(NOTHING_UNDONE))
async def test_no_question_when_nothing_the_step_wrote_was_undone(step: str) -> None:
    rig = Bench(PRESSING.replace(PRESSING.splitlines()[4] + "\n", NOTHING_UNDONE[step]))
    await rig.io.connect()
    await rig.ctl.open()
    try:
        await held_in_press(rig)
        assert rig.ctl.executor.failure is None
        assert not [e for e in rig.of(Notice) if "undone" in e.text]
        await rig.ctl.command(Command.UNHOLD)  # no choice needed: the wait is re-entered
        await rig.settle(State.EXECUTE)
        rig.device("line.done", True)
        assert await rig.settle(State.COMPLETE) is State.COMPLETE
        assert outcomes(rig, "press") == [StepOutcome.INTERRUPTED, StepOutcome.DONE]
    finally:
        await rig.ctl.close()
        await rig.io.close()


@pytest.mark.asyncio
async def test_nobody_to_answer_ends_held_naming_the_question(pressing: Bench) -> None:
    async def trip_in_press() -> None:
        await wait_until(lambda: any(e.step_id == "press" for e in pressing.of(WaitProgress)))
        pressing.device("safety.ok", False)

    tripping = asyncio.ensure_future(trip_in_press())
    ended = await asyncio.wait_for(pressing.ctl.run_batch(stop_when_held=lambda: True), DEADLINE)
    await tripping
    assert ended.state is State.HELD
    assert ended.cause == f"Held: {QUESTION}; re-run, skip or abort needs an operator"


PARALLEL = """\
recipe: p
version: 1
steps:
  - parallel:
      - - {id: heat, set: {press.heat: true}, wait: line.done, timeout: 5s}
      - - {id: go, set: {press.go: true}, wait: line.done, timeout: 5s}
"""


@pytest.mark.asyncio
async def test_two_branches_undone_are_asked_one_after_the_other() -> None:
    rig = Bench(PARALLEL)
    await rig.io.connect()
    await rig.ctl.open()
    try:
        await rig.ctl.command(Command.RESET)
        await rig.settle(State.IDLE)
        await rig.ctl.command(Command.START)
        waiting = {"heat", "go"}
        await wait_until(lambda: waiting <= {e.step_id for e in rig.of(WaitProgress)})
        await rig.ctl.command(Command.HOLD)
        await rig.settle(State.HELD)
        first = rig.ctl.executor.failure
        assert first is not None and first.step_id in waiting
        rig.forget_writes()
        await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
        # The other branch's step was undone too: held again for its own answer.
        await wait_until(lambda: rig.ctl.state is State.HELD and rig.ctl._settled())
        second = rig.ctl.executor.failure
        assert second is not None and {first.step_id, second.step_id} == waiting
        assert rig.writes("press") == [("press.go", False), ("press.heat", False)]  # again
        await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.SKIP)
        await wait_until(lambda: rig.ctl.state is State.EXECUTE)
        rig.device("line.done", True)
        assert await rig.settle(State.COMPLETE) is State.COMPLETE
        rerun: Value = True
        assert rig.writes("press")[-1] == (f"press.{first.step_id}", rerun)
        assert outcomes(rig, str(second.step_id))[-1] is StepOutcome.SKIPPED
        assert outcomes(rig, str(first.step_id))[-1] is StepOutcome.DONE
    finally:
        await rig.ctl.close()
        await rig.io.close()
