"""The controller on memory drivers: a batch to Complete, interlock trips (hold, stop, abort,
lost communication) with the safe state, blocked and free commands, failed steps and the
operator's retry/skip choice, restore on Unhold, Suspend, Stop and Abort, illegal commands
and mode changes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from cellctl.cell import Cell, cell_from_document
from cellctl.control.controller import CommandBlocked, Controller
from cellctl.control.events import (
    BatchEnded,
    CommandRefused,
    Event,
    MethodCalled,
    SafeStateWritten,
    StateChanged,
    StepEnded,
    StepOutcome,
    TagWritten,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.machine import Command, IllegalCommand, IllegalModeChange, Mode, State
from cellctl.control.operator import FailureChoice, ScriptedOperator
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe, RecipeIdentity, recipe_from_document
from cellctl.testing import wait_until
from cellctl.yamlload import parse_yaml
from drivers.base import Reading, Value
from drivers.config import MemoryConfig
from drivers.errors import DeviceTimeout
from drivers.memory import MemoryDriver
from drivers.points import Access, MemoryPoint, Point

E = TypeVar("E", bound=Event)
DEADLINE = 3.0

# The arm is an OPC UA device in the file (methods need one) and a memory driver here.
CELL = b"""\
cell: bench
devices:
  line:  {driver: memory}
  press: {driver: memory}
  aux:   {driver: memory}
  arm:   {driver: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}
tags:
  safety.ok:   {device: line, type: bool}
  line.jam:    {device: line, type: bool}
  line.done:   {device: line, type: bool}
  line.feed:   {device: line, type: uint16}
  line.run:    {device: line, type: bool, access: rw}
  line.speed:  {device: line, type: uint16, access: rw}
  line.count:  {device: line, type: uint16, access: rw, max: 10}
  press.force: {device: press, type: float32}
  press.go:    {device: press, type: bool, access: rw}
  press.heat:  {device: press, type: bool, access: rw}
  aux.lamp:    {device: aux, type: bool, access: rw}
methods:
  arm.pick: {device: arm, node: "ns=2;s=Arm", method: "2:Pick", args: {slot: int32},
             result: bool}
interlocks:
  - {name: curtain, when: "not safety.ok", action: hold}
  - {name: jam, when: "line.jam", action: stop}
  - {name: overforce, when: "press.force > 30", action: abort}
safe_state:
  line.run: false
  line.speed: 0
  press.go: false
  press.heat: false
restore_on_unhold: [line.speed, line.run]
"""
SAFE = {"line.run": False, "line.speed": 0, "press.go": False, "press.heat": False}

# Writes line.run before line.speed (restore_on_unhold lists them the other way round).
RECIPE = """\
recipe: r
version: 1
steps:
  - {id: go, set: {line.run: true, line.speed: 100}}
  - {id: heat, set: {press.heat: true}}
  - {id: lamp, set: {aux.lamp: true}}
  - {id: press, set: {press.go: true}}
  - {id: finish, wait: line.done, timeout: 5s}
"""

# Trips, by action: (the tag the device changes, the tripping value, the clearing value).
TRIPS: dict[str, tuple[str, str, Value, Value]] = {
    "hold": ("curtain", "safety.ok", False, True),
    "stop": ("jam", "line.jam", True, False),
    "abort": ("overforce", "press.force", 50.0, 10.0),
}
ENDED = {"hold": State.HELD, "stop": State.STOPPED, "abort": State.ABORTED}


class Bench:
    """A memory cell with interlocks and a safe state, its drivers, and a controller."""

    def __init__(
        self, recipe_text: str = RECIPE, line: MemoryDriver | None = None, cell: bytes = CELL
    ) -> None:
        self.cell: Cell = cell_from_document(parse_yaml(cell, "cell.yaml"))
        self.drivers = {d: MemoryDriver(MemoryConfig(d)) for d in ("line", "press", "aux", "arm")}
        if line is not None:
            self.drivers["line"] = line  # a line device of the test's own (a gated one)
        self.drivers["line"].set_device_value("safety.ok", True)
        self.drivers["press"].set_device_value("press.force", 10.0)
        self.io = TagIO(self.cell, dict(self.drivers), list(self.cell.tags))
        recipe = recipe_from_document(parse_yaml(recipe_text.encode(), "r.yaml"), self.cell)
        loaded = LoadedRecipe(
            Path("r.yaml"), recipe, self.cell, RecipeIdentity(recipe.recipe, 1, "0" * 64)
        )
        self.events: list[Event] = []
        self.hooks: list[Callable[[Event], None]] = []
        self.ctl = Controller(
            loaded,
            {},
            self.io,
            ScriptedOperator({}),
            listener=self._heard,
            comm_devices=["line", "press", "aux", "arm"],
        )
        self.calls: list[int] = []

    def _heard(self, event: Event) -> None:
        self.events.append(event)
        for hook in list(self.hooks):
            hook(event)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def since(self, mark: int, kind: type[E]) -> list[E]:
        """The events of one kind after the first `mark` events."""
        return [e for e in self.events[mark:] if isinstance(e, kind)]

    def device(self, tag: str, value: Value) -> None:
        """The device side changes a value."""
        self.drivers[self.cell.tags[tag].device].set_device_value(tag, value)

    def writes(self, *devices: str) -> list[tuple[str, Value]]:
        """Confirmed writes of the devices (all of them when none is named), device by device."""
        names = devices or tuple(self.drivers)
        return [w for d in names for w in self.drivers[d].writes]

    def forget_writes(self) -> None:
        """Empty every device's write log."""
        for driver in self.drivers.values():
            driver.writes.clear()

    def on_write(self, tag: str, action: Callable[[Value], None]) -> None:
        """The device side reacts to a change of `tag` (on the next loop turn)."""
        spec = self.cell.tags[tag]
        point = MemoryPoint(tag, tag, spec.datatype, Access.RW)
        loop = asyncio.get_running_loop()

        def heard(readings: Mapping[str, Any]) -> None:
            loop.call_soon(action, readings[tag].value)

        self.drivers[spec.device].subscribe([point], heard)

    def react(self) -> None:
        """The press finishes the part: line.done goes true once press.go is written true."""
        self.on_write("press.go", lambda v: self.device("line.done", True) if v else None)

    async def settle(self, *states: State, within: float = DEADLINE) -> State:
        """Wait until the machine rests in one of `states`."""
        return await asyncio.wait_for(self.ctl.wait_for(states), within)

    async def to_execute(self) -> None:
        """Reset and Start; return once the recipe waits in its last step."""
        await self.ctl.command(Command.RESET)
        await self.settle(State.IDLE)
        await self.ctl.command(Command.START)
        await wait_until(lambda: any(e.step_id == "finish" for e in self.of(WaitProgress)))

    def state(self) -> State:
        """The machine's state now (a call, so that mypy does not narrow it)."""
        return self.ctl.state

    def mode(self) -> Mode:
        """The unit mode now."""
        return self.ctl.machine.mode

    def states(self) -> list[State]:
        """Every state entered, in order."""
        return [e.target for e in self.of(StateChanged)]


@pytest_asyncio.fixture
async def bench() -> AsyncIterator[Bench]:
    """A connected bench whose controller is open."""
    rig = Bench()
    await rig.io.connect()
    await rig.ctl.open()
    yield rig
    await rig.ctl.close()
    await rig.io.close()


def assert_safe_state(rig: Bench, writes: Iterable[tuple[str, Value]]) -> None:
    """Every tag of the safe state was written to its safe value, and the devices hold it."""
    written = dict(writes)
    assert {tag: written.get(tag) for tag in SAFE} == SAFE
    for tag, value in SAFE.items():
        assert rig.drivers[rig.cell.tags[tag].device].device_value(tag) == value


# --- a whole batch ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_run_batch_to_complete(bench: Bench) -> None:
    bench.react()
    ended = await asyncio.wait_for(bench.ctl.run_batch(stop_when_held=lambda: True), DEADLINE)
    assert isinstance(ended, BatchEnded)
    assert (ended.state, ended.steps_done, ended.faults, ended.cause) == (
        State.COMPLETE,
        5,
        (),
        None,
    )
    assert bench.states() == [
        State.RESETTING,
        State.IDLE,
        State.STARTING,
        State.EXECUTE,
        State.COMPLETING,
        State.COMPLETE,
    ]
    # Device by device (line, press, aux): Resetting's safe state, then the recipe's order.
    assert bench.writes() == [
        ("line.run", False),
        ("line.speed", 0),
        ("line.run", True),
        ("line.speed", 100),
        ("press.go", False),
        ("press.heat", False),
        ("press.heat", True),
        ("press.go", True),
        ("aux.lamp", True),
    ]
    assert bench.of(SafeStateWritten) == [] and bench.of(Tripped) == []
    assert bench.of(BatchEnded) == [ended]


# --- interlock trips ------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("action", ["hold", "stop", "abort"])
async def test_trip_mid_batch_acts_writes_safe_state_and_blocks(bench: Bench, action: str) -> None:
    name, tag, bad, good = TRIPS[action]
    await bench.to_execute()
    bench.forget_writes()
    mark = len(bench.events)
    bench.device(tag, bad)
    assert await bench.settle(ENDED[action]) is ENDED[action]

    tripped = bench.since(mark, Tripped)
    assert [(t.interlock, t.action, t.values) for t in tripped] == [(name, action, {tag: bad})]
    message = tripped[0].message
    assert name in message and action in message
    assert message in bench.ctl.faults
    # The trip is named in the state change it caused.
    assert any(e.cause == message for e in bench.since(mark, StateChanged))
    safe = bench.since(mark, SafeStateWritten)
    assert safe and all(s.ok for s in safe)
    assert [r.tag for r in safe[-1].results] == list(SAFE)
    assert_safe_state(bench, bench.writes())
    # Nothing but the safe state was written after the trip; the last step never ran.
    assert {t for t, _ in bench.writes()} <= set(SAFE)
    assert not any(
        e.step_id == "finish" and e.outcome is StepOutcome.DONE for e in bench.of(StepEnded)
    )

    # Start, Unhold and Reset are blocked while it stands, naming it, where the state would
    # take them (elsewhere they are illegal, naming the state); nothing changes.
    if action == "abort":
        await bench.ctl.command(Command.CLEAR)  # Clear is never blocked
        await bench.settle(State.STOPPED)
    state = bench.ctl.state
    blocked = []
    for command in (Command.START, Command.UNHOLD, Command.RESET):
        legal = bench.ctl.machine.is_legal(command)
        with pytest.raises(CommandBlocked if legal else IllegalCommand) as refusal:
            await bench.ctl.command(command)
        assert (name if legal else f"not legal in {state}") in str(refusal.value)
        assert bench.ctl.state is state
        blocked += [command] if legal else []
    assert blocked == {"hold": [Command.UNHOLD], "stop": [Command.RESET]}.get(
        action, [Command.RESET]
    )
    refused = bench.since(mark, CommandRefused)
    assert [r.command for r in refused] == [Command.START, Command.UNHOLD, Command.RESET]

    # Once it clears, the batch can be ended and reset.
    bench.device(tag, good)
    assert [c.interlock for c in bench.since(mark, TripCleared)] == [name]
    if action == "hold":
        await bench.ctl.command(Command.UNHOLD)
        await bench.settle(State.EXECUTE)
        bench.device("line.done", True)
        assert await bench.settle(State.COMPLETE) is State.COMPLETE
    else:
        await bench.ctl.command(Command.RESET)
        assert await bench.settle(State.IDLE) is State.IDLE


@pytest.mark.asyncio
@pytest.mark.parametrize("command", [Command.STOP, Command.ABORT])
async def test_stop_and_abort_are_never_blocked(bench: Bench, command: Command) -> None:
    await bench.to_execute()
    bench.device("safety.ok", False)
    await bench.settle(State.HELD)
    assert bench.ctl.interlocks.active
    bench.forget_writes()
    mark = len(bench.events)
    await bench.ctl.command(command)
    target = State.STOPPED if command is Command.STOP else State.ABORTED
    assert await bench.settle(target) is target
    assert bench.since(mark, CommandRefused) == []
    # Stopping and Aborting write the whole safe state again.
    assert_safe_state(bench, bench.writes())
    assert bench.ctl.executor.steps_done == 4
    assert bench.ctl._run is not None and bench.ctl._run.done()


@pytest.mark.asyncio
async def test_lost_communication_holds_and_safe_state_tries_every_tag(bench: Bench) -> None:
    await bench.to_execute()
    bench.forget_writes()
    mark = len(bench.events)
    bench.drivers["press"].fail(DeviceTimeout("press: no answer within 0.2 s"))
    assert await bench.settle(State.HELD) is State.HELD
    tripped = bench.since(mark, Tripped)
    assert [(t.interlock, t.action) for t in tripped] == [("comm-loss:press", "hold")]
    assert "press" in tripped[0].message and tripped[0].message in bench.ctl.faults
    # Every tag has its result: the lost press is not waited for (its tags are recorded as
    # not written, for the keeper), the line's tags are written.
    safe = next(e for e in bench.since(mark, SafeStateWritten) if e.reason == "Holding")
    errors = {r.tag: r.error for r in safe.results}
    assert list(errors) == list(SAFE)
    assert errors["line.run"] is None and errors["line.speed"] is None
    assert errors["press.go"] is not None and "press" in errors["press.go"]
    assert errors["press.heat"] is not None
    assert bench.writes("line") == [("line.run", False), ("line.speed", 0)]
    assert any("safe state press.go" in f for f in bench.ctl.faults)
    # The keeper attempts the lost press too, and records that it failed.
    await wait_until(lambda: len(bench.since(mark, SafeStateWritten)) >= 2)
    tried = bench.since(mark, SafeStateWritten)[1]
    assert [r.tag for r in tried.results] == ["press.go", "press.heat"] and not tried.ok

    with pytest.raises(CommandBlocked, match="comm-loss:press"):
        await bench.ctl.command(Command.UNHOLD)
    assert bench.ctl.state is State.HELD

    # The press answers again: what its safe state could not get is written now, while Held.
    bench.forget_writes()
    bench.drivers["press"].fail(None)
    await wait_until(lambda: not bench.ctl.interlocks.active)
    await wait_until(lambda: len(bench.writes("press")) == 2)
    assert bench.writes("press") == [("press.go", False), ("press.heat", False)]
    again = bench.since(mark, SafeStateWritten)[-1]
    assert "comm-loss:press cleared" in again.reason and again.ok
    assert [r.tag for r in again.results] == ["press.go", "press.heat"]
    assert bench.ctl.state is State.HELD
    await bench.ctl.command(Command.UNHOLD)
    await bench.settle(State.EXECUTE)
    bench.device("line.done", True)
    assert await bench.settle(State.COMPLETE) is State.COMPLETE


# --- trips while no batch runs ------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_state_change_a_trip_took_names_its_interlock(bench: Bench) -> None:
    name, tag, bad, _ = TRIPS["hold"]
    await bench.to_execute()
    assert all(e.interlock is None for e in bench.of(StateChanged))  # the operator's commands
    mark = len(bench.events)
    bench.device(tag, bad)
    assert await bench.settle(State.HELD) is State.HELD
    taken = [(e.command, e.interlock) for e in bench.since(mark, StateChanged) if e.command]
    assert taken == [(Command.HOLD, name)]


@pytest.mark.asyncio
async def test_trip_in_idle_writes_safe_state_and_blocks_start(bench: Bench) -> None:
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    bench.device("safety.ok", False)
    await wait_until(lambda: bool(bench.of(SafeStateWritten)))
    safe = bench.of(SafeStateWritten)[0]
    assert "curtain" in safe.reason and safe.ok
    assert_safe_state(bench, bench.writes())
    assert bench.ctl.state is State.IDLE
    with pytest.raises(CommandBlocked, match="Start is blocked by interlock curtain"):
        await bench.ctl.command(Command.START)
    assert bench.ctl.state is State.IDLE and bench.ctl.executor.steps_done == 0
    bench.device("safety.ok", True)
    await bench.ctl.command(Command.START)
    assert bench.ctl.state in (State.STARTING, State.EXECUTE)


@pytest.mark.asyncio
async def test_trip_in_complete_writes_safe_state_and_blocks_reset(bench: Bench) -> None:
    bench.react()
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    await bench.ctl.command(Command.START)
    await bench.settle(State.COMPLETE)
    bench.forget_writes()
    bench.device("safety.ok", False)
    await wait_until(lambda: bool(bench.of(SafeStateWritten)))
    assert_safe_state(bench, bench.writes())
    assert bench.ctl.state is State.COMPLETE
    with pytest.raises(CommandBlocked, match="Reset is blocked by interlock curtain"):
        await bench.ctl.command(Command.RESET)
    assert bench.ctl.state is State.COMPLETE


# --- failed steps ---------------------------------------------------------------------------

CALLING = """\
recipe: c
version: 1
steps:
  - {id: go, set: {line.run: true}}
  - {id: pick, call: arm.pick, args: {slot: 3}, result: ok, timeout: 2s}
  - {id: count, set: {line.count: line.feed}}
"""


def failing_pick(rig: Bench, fails: int) -> None:
    """arm.pick fails its first `fails` calls (outcome unknown to the controller)."""

    async def pick(slot: int) -> bool:
        rig.calls.append(slot)
        if len(rig.calls) <= fails:
            raise RuntimeError("gripper stalled")
        return True

    rig.drivers["arm"].register_method("Pick", pick)


@pytest_asyncio.fixture
async def calling() -> AsyncIterator[Bench]:
    """A bench running the recipe with a method call."""
    rig = Bench(CALLING)
    await rig.io.connect()
    await rig.ctl.open()
    yield rig
    await rig.ctl.close()
    await rig.io.close()


async def start(rig: Bench) -> None:
    await rig.ctl.command(Command.RESET)
    await rig.settle(State.IDLE)
    await rig.ctl.command(Command.START)


@pytest.mark.asyncio
@pytest.mark.parametrize("choice", [FailureChoice.RETRY, FailureChoice.SKIP])
async def test_failed_call_holds_until_the_operator_chooses(
    calling: Bench, choice: FailureChoice
) -> None:
    failing_pick(calling, 1)
    calling.device("line.feed", 4)
    await start(calling)
    assert await calling.settle(State.HELD) is State.HELD
    failure = calling.ctl.executor.failure
    assert failure is not None and failure.step_id == "pick" and failure.outcome_unknown
    assert [(e.step_id, e.outcome) for e in calling.of(StepEnded) if e.step_id == "pick"] == [
        ("pick", StepOutcome.FAILED)
    ]
    assert failure.message in calling.ctl.faults
    assert_safe_state(calling, calling.writes())

    # No choice: refused, nothing repeated, still Held.
    with pytest.raises(CommandBlocked, match="choose retry or skip") as refused:
        await calling.ctl.command(Command.UNHOLD)
    assert "outcome is unknown" in str(refused.value)
    assert calling.ctl.state is State.HELD and calling.calls == [3]

    await calling.ctl.command(Command.UNHOLD, choice=choice)
    assert await calling.settle(State.COMPLETE) is State.COMPLETE
    picks = [(e.step_id, e.outcome) for e in calling.of(StepEnded) if e.step_id == "pick"]
    if choice is FailureChoice.RETRY:
        assert calling.calls == [3, 3]
        assert picks[-1] == ("pick", StepOutcome.DONE)
        assert len(calling.of(MethodCalled)) == 1
    else:
        assert calling.calls == [3]
        assert picks[-1] == ("pick", StepOutcome.SKIPPED)
        assert calling.of(MethodCalled) == []
    assert ("line.count", 4) in calling.writes("line")


@pytest.mark.asyncio
async def test_out_of_range_write_holds_and_retry_reads_afresh(calling: Bench) -> None:
    failing_pick(calling, 0)
    calling.device("line.feed", 50)  # line.count has max 10
    await start(calling)
    await calling.settle(State.HELD)
    failure = calling.ctl.executor.failure
    assert failure is not None and failure.step_id == "count" and not failure.outcome_unknown
    assert "line.count" in failure.message
    calling.device("line.feed", 7)
    await calling.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
    assert await calling.settle(State.COMPLETE) is State.COMPLETE
    assert calling.writes("line")[-1] == ("line.count", 7)


# --- Hold, Unhold and the restore -----------------------------------------------------------


@pytest.mark.asyncio
async def test_unhold_restores_only_listed_tags_in_the_recipes_write_order(
    bench: Bench,
) -> None:
    await bench.to_execute()
    await bench.ctl.command(Command.HOLD)
    await bench.settle(State.HELD)
    assert_safe_state(bench, bench.writes())
    bench.forget_writes()
    mark = len(bench.events)
    await bench.ctl.command(Command.UNHOLD)
    await bench.settle(State.EXECUTE)
    # line.run then line.speed (the recipe's order, not the cell file's); press.heat is in
    # the safe state but not listed; aux.lamp was never changed by the safe state.
    assert bench.writes() == [("line.run", True), ("line.speed", 100)]
    restored = [(e.tag, e.value, e.path) for e in bench.since(mark, TagWritten)]
    assert restored == [("line.run", True, None), ("line.speed", 100, None)]
    bench.device("line.done", True)
    assert await bench.settle(State.COMPLETE) is State.COMPLETE
    assert bench.writes() == [("line.run", True), ("line.speed", 100)]


@pytest.mark.asyncio
async def test_suspend_and_unsuspend_write_nothing(bench: Bench) -> None:
    await bench.to_execute()
    bench.forget_writes()
    mark = len(bench.events)
    await bench.ctl.command(Command.SUSPEND)
    assert await bench.settle(State.SUSPENDED) is State.SUSPENDED
    await bench.ctl.command(Command.UNSUSPEND)
    await bench.settle(State.EXECUTE)
    assert bench.writes() == [] and bench.since(mark, SafeStateWritten) == []
    interrupted = [e for e in bench.since(mark, StepEnded) if e.step_id == "finish"]
    assert [e.outcome for e in interrupted] == [StepOutcome.INTERRUPTED]
    bench.device("line.done", True)
    assert await bench.settle(State.COMPLETE) is State.COMPLETE
    assert bench.writes() == []


@pytest.mark.asyncio
async def test_trip_while_suspended_holds_with_the_safe_state(bench: Bench) -> None:
    await bench.to_execute()
    await bench.ctl.command(Command.SUSPEND)
    await bench.settle(State.SUSPENDED)
    bench.forget_writes()
    bench.device("safety.ok", False)
    assert await bench.settle(State.HELD) is State.HELD
    assert_safe_state(bench, bench.writes())
    with pytest.raises(IllegalCommand):
        await bench.ctl.command(Command.UNSUSPEND)
    bench.device("safety.ok", True)
    await bench.ctl.command(Command.UNHOLD)
    await bench.settle(State.EXECUTE)
    bench.device("line.done", True)
    assert await bench.settle(State.COMPLETE) is State.COMPLETE


@pytest.mark.asyncio
async def test_abort_from_held(bench: Bench) -> None:
    await bench.to_execute()
    await bench.ctl.command(Command.HOLD)
    await bench.settle(State.HELD)
    bench.forget_writes()
    await bench.ctl.command(Command.ABORT)
    assert await bench.settle(State.ABORTED) is State.ABORTED
    assert_safe_state(bench, bench.writes())
    assert bench.ctl._run is not None and bench.ctl._run.cancelled()
    bench.device("line.done", True)  # nothing runs any more
    assert bench.states()[-2:] == [State.ABORTING, State.ABORTED]


# --- Stop and Abort -------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_stop_lets_the_running_wait_finish_then_writes_the_safe_state(
    bench: Bench,
) -> None:
    await bench.to_execute()
    bench.forget_writes()
    await bench.ctl.command(Command.STOP)
    # Stop lets the running step finish: Stopping waits for the wait, nothing written yet.
    assert bench.ctl.state is State.STOPPING and bench.writes() == []
    bench.device("line.done", True)
    assert await bench.settle(State.STOPPED) is State.STOPPED
    finish = [e.outcome for e in bench.of(StepEnded) if e.step_id == "finish"]
    assert finish == [StepOutcome.DONE]
    assert_safe_state(bench, bench.writes())
    assert {t for t, _ in bench.writes()} == set(SAFE)


@pytest.mark.asyncio
async def test_a_stop_trip_cuts_the_wait_and_writes_the_safe_state_at_once(
    bench: Bench,
) -> None:
    await bench.to_execute()
    bench.forget_writes()
    _, tag, bad, _ = TRIPS["stop"]
    bench.device(tag, bad)
    assert await bench.settle(State.STOPPED) is State.STOPPED
    finish = [e.outcome for e in bench.of(StepEnded) if e.step_id == "finish"]
    assert finish == [StepOutcome.INTERRUPTED]
    assert_safe_state(bench, bench.writes())


SLOW_CALL = """\
recipe: s
version: 1
steps:
  - {id: go, set: {line.run: true}}
  - {id: pick, call: arm.pick, args: {slot: 1}, result: ok, timeout: 5s}
  - {id: after, set: {aux.lamp: true}}
"""


def slow_bench() -> tuple[Bench, asyncio.Event]:
    """A bench whose arm.pick returns only when the test sets the event it returns."""
    rig = Bench(SLOW_CALL)
    release = asyncio.Event()

    async def pick(slot: int) -> bool:
        rig.calls.append(slot)
        await release.wait()
        return True

    rig.drivers["arm"].register_method("Pick", pick)
    return rig, release


@pytest_asyncio.fixture
async def slow() -> AsyncIterator[tuple[Bench, asyncio.Event]]:
    """A connected slow bench (slow_bench) whose controller is open."""
    rig, release = slow_bench()
    await rig.io.connect()
    await rig.ctl.open()
    yield rig, release
    await rig.ctl.close()
    await rig.io.close()


@pytest.mark.asyncio
async def test_stop_lets_the_call_in_flight_finish_then_safe_state(
    slow: tuple[Bench, asyncio.Event],
) -> None:
    rig, release = slow
    await start(rig)
    await wait_until(lambda: rig.calls == [1])
    await rig.ctl.command(Command.STOP)
    await wait_until(lambda: rig.ctl.state is State.STOPPING)
    assert rig.of(SafeStateWritten) == []  # not before the call has ended
    release.set()
    assert await rig.settle(State.STOPPED) is State.STOPPED
    kinds = [type(e) for e in rig.events if isinstance(e, MethodCalled | SafeStateWritten)]
    assert kinds == [MethodCalled, SafeStateWritten]
    assert rig.writes("aux") == []  # the next step never started
    assert_safe_state(rig, rig.writes())


@pytest.mark.asyncio
async def test_abort_cancels_the_call_in_flight_at_once(
    slow: tuple[Bench, asyncio.Event],
) -> None:
    rig, _ = slow
    await start(rig)
    await wait_until(lambda: rig.calls == [1])
    await rig.ctl.command(Command.ABORT)
    assert await rig.settle(State.ABORTED) is State.ABORTED  # never released
    assert rig.of(MethodCalled) == []
    assert rig.writes("aux") == []
    assert_safe_state(rig, rig.writes())


# --- refusals and modes ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_illegal_command_is_refused_and_changes_nothing(bench: Bench) -> None:
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    events = len(bench.events)
    with pytest.raises(IllegalCommand) as refused:
        await bench.ctl.command(Command.HOLD)
    message = str(refused.value)
    assert "Hold" in message and "Idle" in message
    assert "Start" in message and "Stop" in message and "Abort" in message
    # Resetting's safe state only: the refused Hold wrote nothing.
    assert bench.ctl.state is State.IDLE and bench.writes() == list(SAFE.items())
    refused_events = bench.events[events:]
    assert len(refused_events) == 1 and isinstance(refused_events[0], CommandRefused)
    assert (refused_events[0].command, refused_events[0].reason) == (Command.HOLD, message)

    await bench.ctl.command(Command.START)
    await wait_until(lambda: any(e.step_id == "finish" for e in bench.of(WaitProgress)))
    writes = bench.writes()
    with pytest.raises(IllegalCommand, match="Unsuspend is not legal in Execute"):
        await bench.ctl.command(Command.UNSUSPEND)
    assert bench.state() is State.EXECUTE and bench.writes() == writes
    assert not bench.ctl.executor.paused


@pytest.mark.asyncio
async def test_mode_changes_only_where_allowed(bench: Bench) -> None:
    assert bench.ctl.machine.mode is Mode.PRODUCTION
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    bench.ctl.machine.set_mode(Mode.MANUAL)
    assert bench.mode() is Mode.MANUAL
    with pytest.raises(IllegalCommand, match="not allowed in Manual mode"):
        await bench.ctl.command(Command.START)
    bench.ctl.machine.set_mode(Mode.MAINTENANCE)
    await bench.ctl.command(Command.START)
    await wait_until(lambda: any(e.step_id == "finish" for e in bench.of(WaitProgress)))
    with pytest.raises(IllegalModeChange, match="Execute"):
        bench.ctl.machine.set_mode(Mode.PRODUCTION)
    assert bench.mode() is Mode.MAINTENANCE
    await bench.ctl.command(Command.HOLD)
    await bench.settle(State.HELD)
    with pytest.raises(IllegalModeChange):
        bench.ctl.machine.set_mode(Mode.PRODUCTION)
    await bench.ctl.command(Command.ABORT)
    await bench.settle(State.ABORTED)
    bench.ctl.machine.set_mode(Mode.PRODUCTION)
    assert bench.mode() is Mode.PRODUCTION


# --- races ---------------------------------------------------------------------------------


def trip_on_entering(rig: Bench, state: State) -> None:
    """The light curtain breaks the moment the machine enters `state` (inside the change)."""

    def hook(event: Event) -> None:
        if isinstance(event, StateChanged) and event.target is state:
            rig.hooks.remove(hook)
            rig.device("safety.ok", False)

    rig.hooks.append(hook)


# Regression: a trip that holds before the executor task exists (in Starting, or in Execute
# before its work first runs) must not leave the executor paused once Unhold starts it.
@pytest.mark.asyncio
@pytest.mark.parametrize("state", [State.STARTING, State.EXECUTE])
async def test_trip_before_the_executor_starts_then_unhold_runs_the_recipe(
    bench: Bench, state: State
) -> None:
    trip_on_entering(bench, state)
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    await bench.ctl.command(Command.START)
    assert await bench.settle(State.HELD) is State.HELD
    assert_safe_state(bench, bench.writes())
    bench.device("safety.ok", True)
    bench.react()
    await bench.ctl.command(Command.UNHOLD)
    assert await bench.settle(State.COMPLETE) is State.COMPLETE


# Regression: a trip while Unholding holds at once (Hold is legal from Unholding), so no
# restore write reaches the device after the trip.
@pytest.mark.asyncio
async def test_no_restore_write_after_a_trip_in_unholding(bench: Bench) -> None:
    await bench.to_execute()
    await bench.ctl.command(Command.HOLD)
    await bench.settle(State.HELD)
    mark = len(bench.events)
    trip_on_entering(bench, State.UNHOLDING)
    line = bench.drivers["line"]
    seen: list[tuple[str, Value]] = []

    def record(event: Event) -> None:
        if isinstance(event, Tripped):
            seen.extend(line.writes)

    bench.hooks.append(record)
    await bench.ctl.command(Command.UNHOLD)
    assert await bench.settle(State.HELD) is State.HELD
    assert [t.interlock for t in bench.since(mark, Tripped)] == ["curtain"]
    after_trip = line.writes[len(seen) :]
    assert ("line.run", True) not in after_trip


# Regression: a command that is illegal in the state is refused naming the state and the
# legal commands, even while an interlock stands (not "blocked until it clears").
@pytest.mark.asyncio
async def test_illegal_command_while_tripped_names_the_state(bench: Bench) -> None:
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    bench.device("safety.ok", False)
    await wait_until(lambda: bool(bench.ctl.interlocks.active))
    with pytest.raises(IllegalCommand, match="Reset is not legal in Idle"):
        await bench.ctl.command(Command.RESET)


# Regression: one controller runs one batch; a second Start is refused instead of reusing
# the first batch's executor.
@pytest.mark.asyncio
async def test_second_start_after_stop_runs_or_is_refused(bench: Bench) -> None:
    await bench.to_execute()
    await bench.ctl.command(Command.STOP)
    bench.device("line.done", True)  # the running wait finishes, then Stopped
    await bench.settle(State.STOPPED)
    bench.device("line.done", False)
    await bench.ctl.command(Command.RESET)
    await bench.settle(State.IDLE)
    bench.forget_writes()
    bench.react()
    try:
        await bench.ctl.command(Command.START)
    except (IllegalCommand, CommandBlocked):
        assert bench.ctl.state is State.IDLE
        return
    assert await bench.settle(State.COMPLETE) is State.COMPLETE
    assert ("press.go", True) in bench.writes()


PARALLEL = """\
recipe: p
version: 1
steps:
  - parallel:
      - - {id: left, set: {line.count: line.feed}}
      - - {id: right, set: {line.speed: line.feed * 20}}
  - {id: after, set: {aux.lamp: true}}
"""


@pytest.mark.asyncio
async def test_two_branches_failing_hold_twice_and_never_resume_without_a_choice() -> None:
    # line.feed 4000: both branches write out of range (count max 10, speed uint16), so a
    # second failure waits while the operator chooses for the first.
    rig = Bench(PARALLEL)
    await rig.io.connect()
    await rig.ctl.open()
    try:
        rig.device("line.feed", 4000)
        await start(rig)
        await rig.settle(State.HELD)
        first = rig.ctl.executor.failure
        assert first is not None and first.step_id in ("left", "right")
        rig.device("line.feed", 5)
        await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.SKIP)
        # The other branch failed as well: held again, it needs its own choice.
        await wait_until(lambda: rig.ctl.state is State.HELD and rig.ctl._settled())
        second = rig.ctl.executor.failure
        assert second is not None and second.step_id != first.step_id
        with pytest.raises(CommandBlocked, match="choose retry or skip"):
            await rig.ctl.command(Command.UNHOLD)
        await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
        assert await rig.settle(State.COMPLETE) is State.COMPLETE
        assert ("aux.lamp", True) in rig.writes("aux")
        assert not any("internal error" in f for f in rig.ctl.faults)
    finally:
        await rig.ctl.close()
        await rig.io.close()


# --- regressions: late writes and lost faults ------------------------------------------------


class GatedDriver(MemoryDriver):
    """A memory device that, once armed, stalls on one request until the test releases it."""

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__(config)
        self.armed = False
        self.entered = asyncio.Event()  # the stalled request has begun
        self.release = asyncio.Event()

    async def stall(self) -> None:
        """Hold this request until released; disarms (one stall per test)."""
        self.armed = False
        self.entered.set()
        await self.release.wait()

    async def reached(self) -> None:
        """Wait (with the deadline) until the stalled request has begun."""
        await asyncio.wait_for(self.entered.wait(), DEADLINE)


class SlowRead(GatedDriver):
    """Stalls on a read that asks for `tag` (a value expression read fresh)."""

    def __init__(self, config: MemoryConfig, tag: str) -> None:
        super().__init__(config)
        self.tag = tag

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """The values, after the stall when armed and `tag` is asked for."""
        if self.armed and any(p.name == self.tag for p in points):
            await self.stall()
        return await super().read(points)


class SlowWrite(GatedDriver):
    """Stalls on a write of `value` to `tag` (a safe-state write)."""

    def __init__(self, config: MemoryConfig, tag: str, value: Value) -> None:
        super().__init__(config)
        self.tag, self.value = tag, value

    async def write(self, point: Point, value: Value) -> None:
        """Write, after the stall when armed and this is the gated write."""
        if self.armed and point.name == self.tag and value == self.value:
            await self.stall()
        await super().write(point, value)


@contextlib.asynccontextmanager
async def opened(rig: Bench) -> AsyncIterator[Bench]:
    """The bench connected with its controller open; closed afterwards."""
    await rig.io.connect()
    await rig.ctl.open()
    try:
        yield rig
    finally:
        await rig.ctl.close()
        await rig.io.close()


FRESH_READ = """\
recipe: f
version: 1
steps:
  - {id: go, set: {line.run: true}}
  - {id: spd, set: {line.speed: "line.feed + 1"}}
  - {id: finish, wait: line.done, timeout: 5s}
"""


# Regression: a trip while a set step reads its value afresh stops that write (it is made
# after Unhold); the safe state stays the last word on the device.
@pytest.mark.asyncio
async def test_a_trip_during_the_fresh_read_of_a_set_value_stops_that_write() -> None:
    line = SlowRead(MemoryConfig("line"), "line.feed")
    line.set_device_value("line.feed", 41)
    async with opened(Bench(FRESH_READ, line)) as rig:

        def arm(event: Event) -> None:
            # Armed by step go's write (not Resetting's): the interlock checks on Reset and
            # Start read it too.
            if isinstance(event, TagWritten) and event.tag == "line.run" and event.path:
                rig.hooks.remove(arm)
                line.armed = True

        rig.hooks.append(arm)
        await start(rig)
        await line.reached()  # step spd reads line.feed for its write
        rig.device("safety.ok", False)
        await wait_until(lambda: bool(rig.of(SafeStateWritten)))
        line.release.set()
        # Held only once the executor has stopped: a write it let out would be logged by now.
        await rig.settle(State.HELD)
        assert line.writes == [
            *[("line.run", False), ("line.speed", 0)],  # Resetting's
            *[("line.run", True), ("line.run", False), ("line.speed", 0)],
        ]
        assert line.device_value("line.speed") == 0
        # The write was stopped, not lost: after Unhold the step reads afresh and writes.
        rig.device("safety.ok", True)
        await rig.ctl.command(Command.UNHOLD)
        await wait_until(lambda: line.device_value("line.speed") == 42)
        rig.device("line.done", True)
        assert await rig.settle(State.COMPLETE) is State.COMPLETE


# Regression: a safe-state write that a trip starts while Held is ended by Unholding; it never
# lands after the restore, under the resumed recipe.
@pytest.mark.asyncio
async def test_a_safe_state_write_started_by_a_trip_while_held_never_lands_after_unhold() -> None:
    line = SlowWrite(MemoryConfig("line"), "line.run", False)
    async with opened(Bench(line=line)) as rig:
        await rig.to_execute()
        await rig.ctl.command(Command.HOLD)
        await rig.settle(State.HELD)
        line.armed = True
        mark = len(rig.events)
        rig.device("safety.ok", False)  # the curtain flickers while Held...
        await line.reached()  # ...its safe-state write stalls on line.run
        rig.device("safety.ok", True)
        await wait_until(lambda: not rig.ctl.interlocks.active)
        rig.forget_writes()
        await rig.ctl.command(Command.UNHOLD)
        await rig.settle(State.EXECUTE)
        line.release.set()
        # A Hold's safe state waits for any safe-state writer still going (one at a time):
        # once Held, a late write would be in the log before the Hold's own.
        await rig.ctl.command(Command.HOLD)
        await rig.settle(State.HELD)
        assert [s.reason for s in rig.since(mark, SafeStateWritten)] == ["Holding"]
        assert line.writes == [
            ("line.run", True),
            ("line.speed", 100),
            ("line.run", False),
            ("line.speed", 0),
        ]


# Regression: a lost device that answers again while Holding still writes the others gets its
# safe state (its tags are on record as pending before any write is awaited, so its clear
# writes them once Holding's write is done).
@pytest.mark.asyncio
async def test_a_device_back_while_holding_still_writes_the_rest_gets_its_safe_state() -> None:
    line = SlowWrite(MemoryConfig("line"), "line.run", False)
    async with opened(Bench(line=line)) as rig:
        await rig.to_execute()
        press = rig.drivers["press"]
        assert press.device_value("press.go") is True
        line.armed = True
        mark = len(rig.events)
        press.fail(DeviceTimeout("press: no answer within 0.2 s"))  # comm-loss: Holding
        await line.reached()  # Holding writes the line's safe state, slowly
        press.fail(None)  # the press answers again meanwhile
        await wait_until(lambda: not rig.ctl.interlocks.active)
        line.release.set()
        await rig.settle(State.HELD)
        await wait_until(lambda: rig.since(mark, SafeStateWritten)[-1].ok)
        assert_safe_state(rig, rig.writes())
        written = rig.since(mark, SafeStateWritten)
        holding = next(e for e in written if e.reason == "Holding")
        again = written[-1]
        assert holding.reason == "Holding" and [r.tag for r in holding.results] == list(SAFE)
        assert {r.tag for r in holding.results if r.error} == {"press.go", "press.heat"}
        assert "comm-loss:press cleared" in again.reason and again.ok
        assert [r.tag for r in again.results] == ["press.go", "press.heat"]
        assert rig.ctl.state is State.HELD


SKIP_AND_RETRY = """\
recipe: k
version: 1
steps:
  - {id: go, set: {line.run: true}}
  - {id: bad, set: {line.count: "line.feed + 20"}, on_error: skip}
  - {id: w, wait: line.feed > 100, timeout: 0.1s, on_error: {action: retry, count: 1}}
  - {id: finish, set: {aux.lamp: true}}
"""


# Regression: a step failure that on_error handles without a Hold (skipped, or retried and
# then passed) is among the batch's faults, which the summary lists.
@pytest.mark.asyncio
async def test_a_skipped_and_a_retried_step_failure_appear_in_the_batchs_faults() -> None:
    async with opened(Bench(SKIP_AND_RETRY)) as rig:

        def feed_rises(event: Event) -> None:
            # w times out once; the feed rises, so its retry passes.
            if isinstance(event, StepEnded) and event.step_id == "w":
                rig.device("line.feed", 200)

        rig.hooks.append(feed_rises)
        ended = await asyncio.wait_for(rig.ctl.run_batch(stop_when_held=lambda: True), DEADLINE)
        assert (ended.state, ended.steps_done) == (State.COMPLETE, 3)
        assert rig.writes("aux") == [("aux.lamp", True)]
        assert len(ended.faults) == 2
        bad, timed_out = ended.faults
        assert "'bad'" in bad and "line.count" in bad and "above the maximum 10" in bad
        assert "'w'" in timed_out and "timed out" in timed_out
        assert list(ended.faults) == rig.ctl.faults
