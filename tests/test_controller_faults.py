"""The controller under faults, on memory drivers: a BAD value from a device that still answers,
an Abort that arrives with a call's answer, a failing tag listener, a silent device found by
the watchdog, and the safe state confirmed (read back) before a run may end."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence

import pytest

from cellctl.cell import cell_from_document
from cellctl.control.events import (
    CommandRefused,
    Event,
    SafeStateWritten,
    StateChanged,
    StepStarted,
    Tripped,
    WaitProgress,
)
from cellctl.control.interlocks import InterlockMonitor
from cellctl.control.machine import Command, State
from cellctl.control.safestate import SAFE_RETRY
from cellctl.io.session import TagIO
from cellctl.testing import wait_until
from cellctl.values import TagValue
from cellctl.yamlload import parse_yaml
from drivers.base import Quality, Reading, Value
from drivers.config import MemoryConfig
from drivers.errors import DeviceTimeout, WriteRejected
from drivers.memory import MemoryDriver
from drivers.points import Point
from tests.test_controller import (
    CELL,
    SAFE,
    Bench,
    assert_safe_state,
    opened,
    slow_bench,
    start,
)


@pytest.mark.asyncio
async def test_a_bad_value_from_a_device_that_answers_holds_and_still_writes_its_safe_state() -> (
    None
):
    async with opened(Bench()) as rig:
        await rig.to_execute()
        assert rig.drivers["press"].device_value("press.heat") is True
        rig.forget_writes()
        mark = len(rig.events)
        rig.drivers["press"].set_bad("press.force", "strain gauge open circuit")
        assert await rig.settle(State.HELD) is State.HELD
        trips = rig.since(mark, Tripped)
        assert [(t.interlock, t.action) for t in trips] == [("bad-value:press", "hold")]
        assert "strain gauge open circuit" in trips[0].message
        # The press still answers: its heater and ram get their safe state like the line's.
        holding = next(e for e in rig.since(mark, SafeStateWritten) if e.reason == "Holding")
        assert holding.ok and [r.tag for r in holding.results] == list(SAFE)
        assert_safe_state(rig, rig.writes())
        # A good value again clears it; Unhold resumes.
        rig.drivers["press"].set_bad("press.force", None)
        await wait_until(lambda: not rig.ctl.interlocks.active)
        await rig.ctl.command(Command.UNHOLD)
        await rig.settle(State.EXECUTE)


ABORT_RACE = """\
recipe: race
version: 1
steps:
  - {id: pick, call: arm.pick, args: {slot: 1}, timeout: 5s}
  - {id: after, set: {aux.lamp: true}}
"""


@pytest.mark.asyncio
async def test_an_abort_that_arrives_with_the_calls_answer_lets_no_write_out() -> None:
    async with opened(Bench(ABORT_RACE)) as rig:

        async def pick(slot: int) -> bool:
            # The press overloads and the robot answers in the same loop turn: the abort
            # interlock trips on the press's value while the call's answer is on its way.
            rig.device("press.force", 50.0)
            return True

        rig.drivers["arm"].register_method("Pick", pick)
        await start(rig)
        assert await rig.settle(State.ABORTED) is State.ABORTED
        assert ("aux.lamp", True) not in rig.writes("aux")
        assert rig.drivers["aux"].device_value("aux.lamp") is False
        assert_safe_state(rig, rig.writes())
        assert not any(e.step_id == "after" for e in rig.of(StepStarted))


@pytest.mark.asyncio
async def test_a_failing_tag_listener_is_comm_loss_and_the_others_still_hear() -> None:
    async with opened(Bench()) as rig:
        heard: list[object] = []

        def broken(value: TagValue) -> None:
            raise RuntimeError("listener bug")

        stop = rig.io.board.listen(["line.feed"], broken)
        rig.io.board.listen(["line.feed"], lambda v: heard.append(v.value))
        rig.device("line.feed", 7)
        assert heard == [7]
        assert "comm-loss:line" in rig.ctl.interlocks.active
        assert "listener bug" in rig.ctl.interlocks.active["comm-loss:line"].message
        # Good samples afterwards do not clear it: the bug is still in the process.
        stop()
        rig.device("line.feed", 8)
        rig.device("safety.ok", False)
        rig.device("safety.ok", True)
        assert heard == [7, 8] and "comm-loss:line" in rig.ctl.interlocks.active
        await rig.ctl.interlocks.check_now()  # nor does a fresh read (Unhold, Start, Reset)
        assert "comm-loss:line" in rig.ctl.interlocks.active


WATCHED = b"""\
cell: watched
devices:
  plc: {driver: memory, poll: 20ms}
tags:
  plc.ok: {device: plc, type: bool}
interlocks:
  - {name: ok, when: "not plc.ok", action: hold}
"""


class Answering(MemoryDriver):
    """A memory device that reports when it last answered, as network drivers do."""

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__(config)
        self.answered = time.monotonic()

    @property
    def answered_at(self) -> float | None:
        """The last answer the test says the device gave."""
        return self.answered


@pytest.mark.asyncio
async def test_the_watchdog_finds_a_device_that_stopped_answering_within_its_bound() -> None:
    cell = cell_from_document(parse_yaml(WATCHED, "cell.yaml"))
    plc = Answering(MemoryConfig("plc"))
    plc.set_device_value("plc.ok", True)
    io = TagIO(cell, {"plc": plc}, ["plc.ok"])
    await io.connect()
    io.watch()
    trips: list[Tripped] = []
    monitor = InterlockMonitor(
        cell, io, on_trip=trips.append, on_clear=lambda n: None, comm_devices=[]
    )
    monitor.start()
    try:
        bound = 1.0 + 2 * 0.02  # the default timeout 1 s × (retries 0 + 1) + two polls
        for _ in range(3):  # answering: never lost
            plc.answered = time.monotonic()
            await asyncio.sleep(bound / 3)
        assert trips == []
        await wait_until(lambda: bool(trips), within=bound * 3 + 1)
        assert time.monotonic() - plc.answered >= bound  # silent for the bound, not less
        assert trips[0].interlock == "comm-loss:plc" and "watchdog" in trips[0].message
        # The board still holds a good value: only the watchdog could tell.
        latest = io.board.latest("plc.ok")
        assert latest is not None and latest.quality is not Quality.BAD
        # Good values alone do not clear it while the device stays silent...
        cleared: list[str] = []
        monitor.on_clear = cleared.append
        plc.set_device_value("plc.ok", False)
        plc.set_device_value("plc.ok", True)
        await monitor.check_now()
        assert "comm-loss:plc" in monitor.active and "comm-loss:plc" not in cleared
        # ...a poll cycle answered again does, with no new sample: the watchdog sees it.
        plc.answered = time.monotonic()
        await wait_until(lambda: "comm-loss:plc" in cleared, within=bound * 3 + 1)
        assert "comm-loss:plc" not in monitor.active
    finally:
        monitor.stop()
        await io.close()


@pytest.mark.asyncio
async def test_confirm_waits_for_a_lost_device_and_names_what_stays_unconfirmed() -> None:
    async with opened(Bench()) as rig:
        await rig.to_execute()
        rig.drivers["press"].fail(DeviceTimeout("press: no answer within 0.2 s"))
        await rig.settle(State.HELD)
        told: list[list[str]] = []
        never = asyncio.Event()
        began = time.monotonic()
        left = await rig.ctl.safe.confirm(0.5, never, waiting=told.append)
        assert time.monotonic() - began >= 0.5
        assert told == [["press.go", "press.heat"]]
        assert set(left) == {"press.go", "press.heat"}
        assert "no answer" in left["press.go"]
        # Given up at once by a signal: the same answer, without waiting the limit.
        give_up = asyncio.Event()
        give_up.set()
        began = time.monotonic()
        assert set(await rig.ctl.safe.confirm(60, give_up, waiting=told.append)) == {
            "press.go",
            "press.heat",
        }
        assert time.monotonic() - began < 5
        # The press answers again: its whole safe state is written and read back.
        rig.drivers["press"].fail(None)
        assert await rig.ctl.safe.confirm(5, never, waiting=told.append) == {}
        assert_safe_state(rig, [*rig.writes(), ("line.run", False), ("line.speed", 0)])


async def held(rig: Bench) -> None:
    """Run the bench's batch into Execute, then hold it."""
    await rig.to_execute()
    await rig.ctl.command(Command.HOLD)
    await rig.settle(State.HELD)


@pytest.mark.asyncio
async def test_confirm_reads_the_safe_state_back_and_writes_again_what_changed() -> None:
    async with opened(Bench()) as rig:
        await held(rig)
        # A write that was under way lands after the safe state (a late frame on a bus).
        rig.device("press.heat", True)
        mark = len(rig.events)
        told: list[list[str]] = []
        assert await rig.ctl.safe.confirm(5, asyncio.Event(), waiting=told.append) == {}
        assert told == [["press.heat"]]
        assert rig.drivers["press"].device_value("press.heat") is False
        again = rig.since(mark, SafeStateWritten)
        assert again and again[-1].ok and "read back" in again[-1].reason


@pytest.mark.asyncio
async def test_nothing_to_confirm_once_unhold_gave_the_outputs_back_to_the_recipe() -> None:
    async with opened(Bench()) as rig:
        # Held and unheld: the recipe decides the outputs again, restored ones included.
        await held(rig)
        await rig.ctl.command(Command.UNHOLD)
        await rig.settle(State.EXECUTE)
        rig.device("line.done", True)
        await rig.settle(State.COMPLETE)
        assert rig.drivers["line"].device_value("line.speed") == 100
        told: list[list[str]] = []
        assert await rig.ctl.safe.confirm(0, asyncio.Event(), waiting=told.append) == {}
        assert told == []


@pytest.mark.asyncio
async def test_nothing_is_confirmed_before_it_is_read_back() -> None:
    async with opened(Bench()) as rig:
        await held(rig)
        # No time to read anything back: every tag is unconfirmed, none taken for granted.
        left = await rig.ctl.safe.confirm(0, asyncio.Event(), waiting=lambda tags: None)
        assert set(left) == set(SAFE)
        assert await rig.ctl.safe.confirm(5, asyncio.Event(), waiting=lambda t: None) == {}


# The press's setpoint is a float32 and its ram position a scaled register: what they read
# back is what the device stores (0.1 as 0.10000000149, 12.34 as 123 steps of 0.1), still safe.
STORED = CELL.replace(
    b"  aux.lamp:    {device: aux, type: bool, access: rw}\n",
    b"  aux.lamp:    {device: aux, type: bool, access: rw}\n"
    b"  press.set:   {device: press, type: float32, access: rw}\n"
    b"  press.ram:   {device: press, type: int16, access: rw, scale: 0.1}\n",
).replace(b"  press.heat: false\n", b"  press.heat: false\n  press.set: 0.1\n  press.ram: 12.34\n")


@pytest.mark.asyncio
async def test_a_safe_value_reads_back_as_the_device_stores_it() -> None:
    async with opened(Bench(cell=STORED)) as rig:
        await held(rig)
        mark = len(rig.events)
        told: list[list[str]] = []
        assert await rig.ctl.safe.confirm(5, asyncio.Event(), waiting=told.append) == {}
        assert told == [] and rig.since(mark, SafeStateWritten) == []


@pytest.mark.asyncio
async def test_a_trip_during_a_stop_that_waits_for_a_call_writes_the_safe_state_at_once() -> None:
    rig, release = slow_bench()
    async with opened(rig):
        await start(rig)
        await wait_until(lambda: rig.calls == [1])
        assert rig.drivers["line"].device_value("line.run") is True
        await rig.ctl.command(Command.STOP)  # Stopping lets the call in flight finish
        await wait_until(lambda: rig.ctl.state is State.STOPPING)
        rig.device("safety.ok", False)  # the light curtain breaks meanwhile: no waiting now
        await wait_until(lambda: bool(rig.of(SafeStateWritten)))
        assert rig.calls == [1]  # the call has not returned
        assert rig.drivers["line"].device_value("line.run") is False
        release.set()
        assert await rig.settle(State.STOPPED) is State.STOPPED
        assert_safe_state(rig, rig.writes())


class Refusing(MemoryDriver):
    """A press that refuses writes of one value to one tag while `refusing` (device busy)."""

    def __init__(self, config: MemoryConfig, tag: str, value: Value) -> None:
        super().__init__(config)
        self.tag, self.value = tag, value
        self.refusing = False

    async def write(self, point: Point, value: Value) -> None:
        """Write, unless refusing this very write."""
        if self.refusing and point.name == self.tag and value == self.value:
            raise WriteRejected(f"{self.name} {self.tag}: device busy")
        await super().write(point, value)


@pytest.mark.asyncio
async def test_a_safe_state_still_due_before_start_never_lands_in_the_batch() -> None:
    rig = Bench()
    press = Refusing(MemoryConfig("press"), "press.heat", False)
    press.set_device_value("press.force", 10.0)
    rig.drivers["press"] = press
    rig.io.drivers["press"] = press
    async with opened(rig):
        await rig.ctl.command(Command.RESET)
        await rig.settle(State.IDLE)
        press.refusing = True
        rig.device("safety.ok", False)  # a trip in Idle: press.heat's safe write is refused
        await wait_until(lambda: any(not e.ok for e in rig.of(SafeStateWritten)))
        rig.device("safety.ok", True)
        await wait_until(lambda: not rig.ctl.interlocks.active)
        # Started while the press's safe state is still due: the recipe owns the outputs now.
        await rig.ctl.command(Command.START)
        await wait_until(lambda: any(e.step_id == "finish" for e in rig.of(WaitProgress)))
        press.refusing = False
        rig.forget_writes()
        await asyncio.sleep(SAFE_RETRY * 2)  # two retry periods: a keeper would have written
        assert rig.writes() == []
        assert press.device_value("press.heat") is True
        assert press.device_value("press.go") is True


class OnTheWire(MemoryDriver):
    """A line device whose gated write, once sent, ends before a cancel takes effect (as a
    Modbus frame on the wire does)."""

    def __init__(self, config: MemoryConfig, tag: str, value: Value) -> None:
        super().__init__(config)
        self.tag, self.value = tag, value
        self.armed = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, point: Point, value: Value) -> None:
        """Write; the gated write waits for the release even when cancelled meanwhile."""
        if self.armed and point.name == self.tag and value == self.value:
            self.armed = False
            self.entered.set()
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                await self.release.wait()
                raise
        await super().write(point, value)


@pytest.mark.asyncio
async def test_a_trip_while_resetting_ends_the_old_writers_still_gets_its_safe_state() -> None:
    line = OnTheWire(MemoryConfig("line"), "line.run", False)
    line.set_device_value("safety.ok", True)
    async with opened(Bench(line=line)) as rig:
        await rig.to_execute()
        await rig.ctl.command(Command.ABORT)
        await rig.settle(State.ABORTED)
        line.armed = True
        rig.device("safety.ok", False)  # a trip in Aborted: its safe-state write stalls
        await wait_until(line.entered.is_set)
        rig.device("safety.ok", True)
        await wait_until(lambda: not rig.ctl.interlocks.active)
        await rig.ctl.command(Command.CLEAR)
        await rig.settle(State.STOPPED)
        mark = len(rig.events)
        await rig.ctl.command(Command.RESET)  # Resetting ends that writer, which is on the wire
        await wait_until(lambda: rig.ctl.state is State.RESETTING)
        line.set_device_value("line.run", True)  # a technician's manual write meanwhile
        rig.device("safety.ok", False)  # and the curtain breaks again, during Resetting
        line.release.set()
        await wait_until(
            lambda: any(
                "Resetting" in e.reason and e.ok for e in rig.since(mark, SafeStateWritten)
            ),
            what="the new trip's safe state",
        )
        assert line.device_value("line.run") is False
        # The new trip's safe state is on record as asked for: a run would confirm it. It is
        # the last word: Resetting writes nothing after it, and stops the cell.
        await rig.settle(State.STOPPED)
        left = await rig.ctl.safe.confirm(0, asyncio.Event(), waiting=lambda tags: None)
        assert set(left) == set(SAFE)
        assert await rig.ctl.safe.confirm(5, asyncio.Event(), waiting=lambda tags: None) == {}


class SignalOnRead(MemoryDriver):
    """A device whose next read, once armed, runs `during` first (a signal arriving while the
    controller reads it)."""

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__(config)
        self.during: Callable[[], None] | None = None

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """The values, after `during` (once)."""
        during, self.during = self.during, None
        if during is not None:
            during()
        return await super().read(points)


WRITES_ONLY = """\
recipe: w
version: 1
steps:
  - {id: go, set: {line.run: true, line.speed: 100}}
"""


# Regression: SIGTERM while Start's interlock check reads the devices: Start is not carried
# out (the batch ran to Complete, its cause "SIGTERM before the batch started").
@pytest.mark.asyncio
async def test_a_stop_request_during_starts_interlock_check_refuses_the_start() -> None:
    line = SignalOnRead(MemoryConfig("line"))
    cause = "SIGTERM before the batch started"
    async with opened(Bench(WRITES_ONLY, line=line)) as rig:

        def idle(event: Event) -> None:
            # Reset's own check is past: the next read of the line is Start's.
            if isinstance(event, StateChanged) and event.target is State.IDLE:

                def signal() -> None:
                    assert rig.ctl.before_start  # as the CLI's handler checks
                    rig.ctl.refuse_start(cause)

                line.during = signal

        rig.hooks.append(idle)
        async with asyncio.timeout(5):
            ended = await rig.ctl.run_batch(stop_when_held=lambda: True)
        assert line.during is None  # the read came, and the request with it
        assert ended.state is State.IDLE
        assert rig.ctl.start_refused == cause and ended.cause == cause
        assert ended.faults == ()  # a stop request, not a fault
        refused = rig.of(CommandRefused)
        assert [(r.command, r.reason) for r in refused] == [(Command.START, cause)]
        assert State.STARTING not in rig.states()
        assert ("line.run", True) not in rig.writes()
