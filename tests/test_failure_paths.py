"""Failure paths of the controller and the executor on memory drivers: a restore that fails on
Unhold, an internal error in a state's work and in the executor, a set write whose outcome is
unknown, a prompt nobody answers in time, and an interlock whose condition is not true or
false at run time."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace

import pytest
import pytest_asyncio

from cellctl.control.controller import CommandBlocked, Controller
from cellctl.control.events import (
    Notice,
    SafeStateWritten,
    StateChanged,
    StepEnded,
    StepOutcome,
    StepPaused,
    Tripped,
)
from cellctl.control.machine import Command, Mode, State
from cellctl.control.operator import FailureChoice, NoAnswer, PromptRequest, StepChoice
from cellctl.testing import wait_until
from drivers.base import Reading, ReadingsCallback, Unsubscribe, Value
from drivers.config import MemoryConfig
from drivers.errors import DeviceTimeout, WriteRejected
from drivers.memory import MemoryDriver
from drivers.points import Point
from tests.support import watched
from tests.test_controller import Bench, assert_safe_state, opened, start
from tests.test_executor import Rig, StepOperator


class Failing(MemoryDriver):
    """A line device whose write of one value to one tag raises `error` while armed."""

    def __init__(self, tag: str, value: Value, error: Exception) -> None:
        super().__init__(MemoryConfig("line"))
        self.tag, self.value, self.error = tag, value, error
        self.armed = False
        self.set_device_value("safety.ok", True)

    async def write(self, point: Point, value: Value) -> None:
        """Write, unless armed and this is the failing write."""
        if self.armed and point.name == self.tag and value == self.value:
            raise self.error
        await super().write(point, value)


def entered(rig: Bench, mark: int) -> list[State]:
    """The states entered after the first `mark` events."""
    return [e.target for e in rig.since(mark, StateChanged)]


async def held_in_finish(rig: Bench) -> int:
    """Run to the last step's wait, Hold, and return the event mark at Held."""
    await rig.to_execute()
    await rig.ctl.command(Command.HOLD)
    await rig.settle(State.HELD)
    return len(rig.events)


# --- Unhold's restore ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_restore_that_fails_on_unhold_stops_naming_the_tag() -> None:
    line = Failing("line.run", True, WriteRejected("line line.run: device busy"))
    async with opened(Bench(line=line)) as rig:
        mark = await held_in_finish(rig)
        line.armed = True  # the restore of line.run = True is refused
        rig.forget_writes()
        await rig.ctl.command(Command.UNHOLD)
        assert await rig.settle(State.STOPPED) is State.STOPPED
        assert entered(rig, mark) == [State.UNHOLDING, State.STOPPING, State.STOPPED]
        stopping = next(e for e in rig.since(mark, StateChanged) if e.target is State.STOPPING)
        assert "cannot restore line.run = True" in stopping.cause
        assert "device busy" in stopping.cause
        assert stopping.cause in rig.ctl.faults
        errors = [n.text for n in rig.since(mark, Notice) if n.level == "error"]
        assert errors == [stopping.cause]
        # Nothing of the recipe ran again; Stopping wrote the whole safe state.
        assert ("line.speed", 100) not in rig.writes()
        assert_safe_state(rig, rig.writes())


# --- internal errors ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_an_internal_error_in_a_states_work_aborts_with_the_safe_state() -> None:
    # A driver bug: a restore write raises something that is not a driver error, so
    # Unholding's work fails with it (not a refusal the state handles).
    line = Failing("line.run", True, RuntimeError("register map corrupt"))
    async with opened(Bench(line=line)) as rig:
        mark = await held_in_finish(rig)
        line.armed = True
        rig.forget_writes()
        await rig.ctl.command(Command.UNHOLD)
        assert await rig.settle(State.ABORTED) is State.ABORTED
        assert entered(rig, mark) == [State.UNHOLDING, State.ABORTING, State.ABORTED]
        assert "Unholding: internal error: register map corrupt" in rig.ctl.faults
        aborting = next(e for e in rig.since(mark, StateChanged) if e.target is State.ABORTING)
        assert aborting.cause == "internal error in Unholding: register map corrupt"
        safe = [e for e in rig.since(mark, SafeStateWritten) if e.reason == "Aborting"]
        assert safe and safe[-1].ok
        assert_safe_state(rig, rig.writes())


class CrashingStepper:
    """An operator whose stepping view fails (a bug in a terminal front end)."""

    name: str | None = "tester"

    async def answer(self, request: PromptRequest) -> Value | None:
        """Nobody answers prompts here."""
        raise NoAnswer(f"no prompt expected: {request.step_id}")

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        """Fails as a broken key reader would."""
        raise RuntimeError(f"key reader crashed before {pause.label}")


@pytest.mark.asyncio
async def test_an_internal_error_in_the_executor_aborts_with_the_safe_state() -> None:
    rig = Bench()
    # In Maintenance mode, with a breakpoint: the operator is asked outside any step's work,
    # so its failure is the executor's own, not a step's.
    rig.ctl = Controller(
        rig.ctl.loaded,
        {},
        rig.io,
        CrashingStepper(),
        listener=rig.events.append,
        mode=Mode.MAINTENANCE,
        breakpoints={"lamp"},
        comm_devices=["line", "press", "aux", "arm"],
    )
    async with opened(rig):
        await start(rig)
        assert await rig.settle(State.ABORTED) is State.ABORTED
        assert "executor: internal error: key reader crashed before step 'lamp'" in rig.ctl.faults
        aborting = next(e for e in rig.of(StateChanged) if e.target is State.ABORTING)
        assert aborting.cause == "internal error: key reader crashed before step 'lamp'"
        assert ("press.heat", True) in rig.writes("press")  # the steps before it ran
        assert rig.writes("aux") == []  # the step at the breakpoint never did
        assert_safe_state(rig, rig.writes())


# --- a set write whose outcome is unknown ---------------------------------------------------


@pytest.mark.asyncio
async def test_a_set_write_that_times_out_holds_saying_its_outcome_is_unknown() -> None:
    # The first write of the step is confirmed, the second gets no answer: it may or may not
    # have reached the device.
    line = Failing("line.speed", 100, DeviceTimeout("line (memory): no answer within 0.2 s"))
    line.armed = True
    async with opened(Bench(line=line)) as rig:
        await start(rig)
        assert await rig.settle(State.HELD) is State.HELD
        failure = rig.ctl.executor.failure
        assert failure is not None and failure.step_id == "go"
        assert failure.outcome_unknown and failure.action == "hold"
        assert "line.speed" in failure.message and "no answer within 0.2 s" in failure.message
        assert "its outcome is unknown" in failure.message
        assert failure.message in rig.ctl.faults
        ended = [e for e in rig.of(StepEnded) if e.step_id == "go"]
        assert [(e.outcome, e.error) for e in ended] == [(StepOutcome.FAILED, failure.message)]
        assert_safe_state(rig, rig.writes())
        # Unhold asks for retry or skip, saying the outcome is unknown; nothing changes.
        with pytest.raises(CommandBlocked, match="choose retry or skip") as refused:
            await rig.ctl.command(Command.UNHOLD)
        assert "its outcome is unknown" in str(refused.value)
        assert rig.ctl.state is State.HELD
        # A retry runs the whole step again, both writes.
        line.armed = False
        rig.forget_writes()
        await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
        await wait_until(lambda: ("line.speed", 100) in rig.writes("line"))
        assert rig.writes("line")[-2:] == [("line.run", True), ("line.speed", 100)]
        rig.device("line.done", True)
        assert await rig.settle(State.COMPLETE) is State.COMPLETE


# --- a prompt nobody answers in time --------------------------------------------------------

UNANSWERED = """\
recipe: unanswered
version: 1
steps:
  - {{id: ask, prompt: Part seated?, timeout: 50ms{on_error}}}
  - {{id: after, set: {{dev.a: true}}}}
"""


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """A connected, watched memory cell (as in test_executor); its executor ends with it."""
    async with watched(Rig()) as bench:
        yield bench


@pytest.mark.asyncio
@pytest.mark.parametrize("on_error", ["skip", "hold", "abort"])
async def test_a_prompt_not_answered_in_time_fails_and_follows_on_error(
    rig: Rig, on_error: str
) -> None:
    policy = "" if on_error == "hold" else f", on_error: {on_error}"
    operator = StepOperator()  # never released: it never answers
    executor = rig.executor(UNANSWERED.format(on_error=policy), operator=operator)
    task = rig.start(executor)
    why = "step 'ask': no answer to the prompt within 0.05 s"
    if on_error == "skip":
        await asyncio.wait_for(task, 3.0)
        assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.SKIPPED]
        failed = [e for e in rig.host.of(StepEnded) if e.outcome is StepOutcome.FAILED]
        assert [e.error for e in failed] == [why]
        assert rig.writes() == [("dev.a", True)]
        assert rig.host.failures == []
    else:
        await wait_until(lambda: bool(rig.host.failures))
        (failure,) = rig.host.failures
        assert (failure.step_id, failure.message, failure.action) == ("ask", why, on_error)
        assert not failure.outcome_unknown
        assert rig.host.ended("1") == [StepOutcome.FAILED]
        assert rig.writes() == []
    assert [r.step_id for r in operator.asked] == ["ask"]


# --- an interlock condition that is not true or false ---------------------------------------


class Lying(MemoryDriver):
    """A line device whose driver hands out a value of the wrong type for some tags (a driver
    bug, or a device that changed under the cell file)."""

    def __init__(self) -> None:
        super().__init__(MemoryConfig("line"))
        self.lies: dict[str, Value] = {}
        self.set_device_value("safety.ok", True)

    def tell(self, tag: str, value: Value) -> None:
        """From now on report `value` for `tag`; subscribers hear it at once."""
        self.lies[tag] = value
        self.set_bad(tag, None)  # the device side repeats the tag's reading to its subscribers

    def _lie(self, tag: str, reading: Reading) -> Reading:
        return replace(reading, value=self.lies[tag]) if tag in self.lies else reading

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """The readings, lies included."""
        readings = await super().read(points)
        return [self._lie(p.name, r) for p, r in zip(points, readings, strict=True)]

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Subscribe; the callback hears the lies."""

        def lying(readings: Mapping[str, Reading]) -> None:
            callback({name: self._lie(name, r) for name, r in readings.items()})

        return super().subscribe(points, lying)


@pytest.mark.asyncio
async def test_an_interlock_that_is_neither_true_nor_false_trips_naming_it() -> None:
    line = Lying()
    async with opened(Bench(line=line)) as rig:
        await rig.to_execute()
        rig.forget_writes()
        mark = len(rig.events)
        line.tell("line.jam", 1)  # `when: line.jam` (stop) evaluates to 1, not true or false
        assert await rig.settle(State.STOPPED) is State.STOPPED
        trips = rig.since(mark, Tripped)
        assert [(t.interlock, t.action, t.values) for t in trips] == [
            ("jam", "stop", {"line.jam": 1})
        ]
        assert trips[0].message == (
            "interlock jam tripped (line.jam; line.jam = 1; gave 1, not true or false): stop"
        )
        assert trips[0].message in rig.ctl.faults
        assert_safe_state(rig, rig.writes())
        # It stands while the value stays wrong: Reset is blocked, naming it.
        with pytest.raises(CommandBlocked, match="interlock jam"):
            await rig.ctl.command(Command.RESET)
