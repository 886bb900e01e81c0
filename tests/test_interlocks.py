"""Interlocks on memory drivers: trips on update (once), clears, blocking, lost communication,
check_now, and the safe state written tag by tag whatever fails."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
import pytest_asyncio

from cellctl.cell import Cell, cell_from_document
from cellctl.control.events import SafeWrite, Tripped
from cellctl.control.interlocks import InterlockMonitor
from cellctl.control.packml import Command
from cellctl.control.safestate import write_safe_state
from cellctl.io.drivers import build_drivers
from cellctl.io.session import TagIO
from cellctl.values import TagValue
from cellctl.yamlload import parse_yaml
from drivers.base import Quality
from drivers.errors import DeviceTimeout
from drivers.memory import MemoryDriver

CELL = b"""
cell: bench
devices:
  conveyor: {driver: memory}
  press: {driver: memory}
  robot: {driver: memory}
tags:
  safety.light_curtain_ok: {device: conveyor, type: bool}
  conveyor.run: {device: conveyor, type: bool, access: rw}
  conveyor.speed_rpm: {device: conveyor, type: uint16, access: rw}
  press.force_kN: {device: press, type: float32}
  press.ratio_base: {device: press, type: float32}
  press.cycle_start: {device: press, type: bool, access: rw}
  press.setpoint_kN: {device: press, type: float32, access: rw}
  robot.busy: {device: robot, type: bool}
interlocks:
  - {name: light-curtain, when: "not safety.light_curtain_ok", action: hold}
  - {name: overforce, when: "press.force_kN > 30", action: abort}
  - {name: ratio, when: "press.force_kN / press.ratio_base > 100", action: stop}
safe_state:
  conveyor.run: false
  press.cycle_start: false
  press.setpoint_kN: 0
  conveyor.speed_rpm: 0
"""


def bench_cell() -> Cell:
    """The test cell: three memory devices, three interlocks, a safe state on two devices."""
    return cell_from_document(parse_yaml(CELL, "bench.yaml"))


@dataclass
class Recorder:
    """What the monitor reported, in order."""

    trips: list[Tripped] = field(default_factory=list)
    clears: list[str] = field(default_factory=list)

    def trip(self, trip: Tripped) -> None:
        self.trips.append(trip)

    def clear(self, name: str) -> None:
        self.clears.append(name)

    def names(self) -> list[str]:
        return [t.interlock for t in self.trips]


def memory(io: TagIO, name: str) -> MemoryDriver:
    """The memory driver of device `name` (every device of the bench cell is one)."""
    driver = io.drivers[name]
    assert isinstance(driver, MemoryDriver)
    return driver


@dataclass
class Wired:
    """The bench cell on connected, watching memory drivers."""

    cell: Cell
    io: TagIO

    def device(self, name: str) -> MemoryDriver:
        """The memory driver of device `name`."""
        return memory(self.io, name)


@dataclass
class Bench(Wired):
    """A connected, watching TagIO on memory drivers, with a started monitor."""

    monitor: InterlockMonitor
    seen: Recorder


async def make_io(cell: Cell) -> TagIO:
    """Memory drivers with safe values set on the device side, connected and watching."""
    io = TagIO(cell, build_drivers(cell, list(cell.devices)), [*cell.tags])
    memory(io, "conveyor").set_device_value("safety.light_curtain_ok", True)
    memory(io, "press").set_device_value("press.force_kN", 10.0)
    memory(io, "press").set_device_value("press.ratio_base", 1.0)
    await io.connect()
    io.watch()
    return io


@pytest_asyncio.fixture
async def wired() -> AsyncIterator[Wired]:
    """The bench cell wired to memory drivers, closed after the test."""
    cell = bench_cell()
    io = await make_io(cell)
    try:
        yield Wired(cell, io)
    finally:
        await io.close()


@pytest_asyncio.fixture
async def bench(wired: Wired) -> AsyncIterator[Bench]:
    """The wired bench with a started monitor watching conveyor and robot for comm loss."""
    seen = Recorder()
    monitor = InterlockMonitor(
        wired.cell,
        wired.io,
        on_trip=seen.trip,
        on_clear=seen.clear,
        comm_devices=["conveyor", "robot"],
    )
    monitor.start()
    yield Bench(wired.cell, wired.io, monitor, seen)
    monitor.stop()


@pytest.mark.asyncio
async def test_nothing_trips_on_safe_values(bench: Bench) -> None:
    assert bench.monitor.tags() == [
        "safety.light_curtain_ok",
        "press.force_kN",
        "press.ratio_base",
    ]
    assert bench.seen.trips == [] and bench.monitor.active == {}
    assert bench.monitor.blocking_message(Command.START) is None


@pytest.mark.asyncio
async def test_trip_once_on_update_names_values_then_clears(bench: Bench) -> None:
    conveyor = bench.device("conveyor")
    conveyor.set_device_value("safety.light_curtain_ok", False)
    assert bench.seen.names() == ["light-curtain"]
    trip = bench.seen.trips[0]
    assert trip.action == "hold"
    assert trip.values == {"safety.light_curtain_ok": False}
    assert trip.message == (
        "interlock light-curtain tripped "
        "(not safety.light_curtain_ok; safety.light_curtain_ok = false): hold"
    )
    assert (trip.interlock, trip.condition, trip.of_device, trip.device) == (
        "light-curtain",
        "not safety.light_curtain_ok",
        False,
        None,
    )
    # Other tags of the device, and a repeat of the same value, trip nothing more.
    conveyor.set_device_value("conveyor.speed_rpm", 5)
    again = bench.io.board.latest("safety.light_curtain_ok")
    assert again is not None
    bench.io.board.update(again)
    assert bench.seen.names() == ["light-curtain"]
    assert list(bench.monitor.active) == ["light-curtain"]

    conveyor.set_device_value("safety.light_curtain_ok", True)
    assert bench.seen.clears == ["light-curtain"]
    assert bench.monitor.active == {}


@pytest.mark.asyncio
async def test_blocking_message_for_start_unhold_reset_only(bench: Bench) -> None:
    bench.device("press").set_device_value("press.force_kN", 31.5)
    assert bench.seen.names() == ["overforce"]
    assert bench.seen.trips[0].action == "abort"
    assert bench.monitor.blocking_message(Command.UNHOLD) == (
        "Unhold is blocked by interlock overforce (press.force_kN = 31.5) until it clears"
    )
    assert bench.monitor.blocking_message(Command.START) is not None
    assert bench.monitor.blocking_message(Command.RESET) is not None
    for free in (Command.STOP, Command.ABORT, Command.HOLD):
        assert bench.monitor.blocking_message(free) is None
    bench.device("conveyor").set_device_value("safety.light_curtain_ok", False)
    message = bench.monitor.blocking_message(Command.START)
    assert message is not None
    assert "interlocks overforce (press.force_kN = 31.5); light-curtain" in message
    assert message.endswith("until they clear")


@pytest.mark.asyncio
async def test_evaluation_error_trips_the_interlock(bench: Bench) -> None:
    bench.device("press").set_device_value("press.ratio_base", 0.0)
    assert bench.seen.names() == ["ratio"]
    trip = bench.seen.trips[0]
    assert trip.action == "stop"
    assert "cannot evaluate" in trip.message and "press.ratio_base = 0.0" in trip.message
    bench.device("press").set_device_value("press.ratio_base", 2.0)
    assert bench.seen.clears == ["ratio"]


@pytest.mark.asyncio
async def test_a_nan_from_the_device_trips_instead_of_passing(bench: Bench) -> None:
    # NaN compares false with everything: `press.force_kN > 30` alone would let it pass.
    bench.device("press").set_device_value("press.force_kN", float("nan"))
    assert bench.seen.names() == ["overforce", "ratio"]
    trip = bench.seen.trips[0]
    assert trip.action == "abort" and "press.force_kN not a number" in trip.message
    bench.device("press").set_device_value("press.force_kN", 10.0)
    assert bench.seen.clears == ["overforce", "ratio"]


@pytest.mark.asyncio
async def test_device_failure_is_a_comm_loss_trip_cleared_on_recovery(bench: Bench) -> None:
    robot = bench.device("robot")
    robot.fail(DeviceTimeout("robot: no answer within 0.2 s"))
    assert bench.seen.names() == ["comm-loss:robot"]
    trip = bench.seen.trips[0]
    assert trip.action == "hold"
    assert trip.condition == "lost communication with robot"
    assert (trip.device, trip.of_device) == ("robot", True)
    assert "robot: no answer within 0.2 s" in trip.message
    assert bench.monitor.blocking_message(Command.START) == (
        "Start is blocked by interlock comm-loss:robot (lost communication with robot) "
        "until it clears"
    )
    # A good sample while the device is still lost does not clear it.
    good = TagValue("robot.busy", "robot", False, Quality.GOOD, time.time())
    bench.io.board.update(good)
    assert bench.seen.clears == []
    robot.fail(None)
    assert bench.seen.clears == ["comm-loss:robot"]
    assert bench.monitor.active == {}


@pytest.mark.asyncio
async def test_comm_loss_clears_on_a_good_reading_after_reconnect(bench: Bench) -> None:
    robot = bench.device("robot")
    await robot.close()  # the board keeps the last good values; no BAD reading comes
    robot.fail(DeviceTimeout("robot: link down"))
    assert bench.seen.names() == ["comm-loss:robot"]
    robot.fail(None)
    assert bench.seen.clears == []
    stamps: list[float] = []

    def cleared(name: str) -> None:
        latest = bench.io.board.latest("robot.busy")
        assert latest is not None
        stamps.append(latest.timestamp)

    bench.monitor.on_clear = cleared
    before = time.time()
    await robot.connect()  # health CONNECTED first, then fresh readings
    assert len(stamps) == 1 and stamps[0] >= before  # cleared by the fresh reading


@pytest.mark.asyncio
async def test_unknown_values_are_not_evaluated_yet() -> None:
    cell = bench_cell()
    io = await make_io(cell)
    await io.close()
    io = TagIO(cell, io.drivers, [*cell.tags])  # a board with no samples yet
    await io.connect()
    memory(io, "conveyor").set_device_value("safety.light_curtain_ok", False)
    seen = Recorder()
    monitor = InterlockMonitor(cell, io, on_trip=seen.trip, on_clear=seen.clear, comm_devices=[])
    monitor.start()
    try:
        assert seen.trips == [] and monitor.active == {}
        io.watch()  # the first samples arrive
        assert seen.names() == ["light-curtain"]
    finally:
        monitor.stop()
        await io.close()


@pytest.mark.asyncio
async def test_bad_reading_of_an_interlock_tag_trips_its_device(bench: Bench) -> None:
    # press is not in comm_devices, but an interlock reads it: fail safe.
    press = bench.device("press")
    press.fail(DeviceTimeout("press: no answer within 0.2 s"))
    assert bench.seen.names() == ["comm-loss:press"]
    assert "press: no answer" in bench.seen.trips[0].message
    # The BAD value is never taken as a safe one: the interlocks on it stay untripped.
    assert "overforce" not in bench.monitor.active
    press.set_device_value("press.force_kN", 40.0)  # changes while the link is down
    press.fail(None)
    assert bench.seen.clears == ["comm-loss:press"]
    assert bench.seen.names() == ["comm-loss:press", "overforce"]


@pytest.mark.asyncio
async def test_bad_board_reading_trips_and_good_reading_clears(bench: Bench) -> None:
    bad = TagValue("conveyor.run", "conveyor", None, Quality.BAD, time.time(), "crc")
    bench.io.board.update(bad)
    # The conveyor still answers (its health says so): a bad value, not a lost device.
    assert bench.seen.names() == ["bad-value:conveyor"]
    assert "conveyor.run is bad: crc" in bench.seen.trips[0].message
    assert bench.seen.trips[0].values == {"conveyor.run": None}
    assert (bench.seen.trips[0].device, bench.seen.trips[0].of_device) == ("conveyor", True)
    bench.device("conveyor").set_device_value("conveyor.run", True)
    assert bench.seen.clears == ["bad-value:conveyor"]


@pytest.mark.asyncio
async def test_health_alone_for_a_device_without_watched_tags(wired: Wired) -> None:
    cell, io = wired.cell, wired.io
    io.tags = [t for t in io.tags if t != "robot.busy"]  # robot: only its health tells
    seen = Recorder()
    monitor = InterlockMonitor(
        cell, io, on_trip=seen.trip, on_clear=seen.clear, comm_devices=["robot"]
    )
    monitor.start()
    try:
        robot = wired.device("robot")
        robot.fail(DeviceTimeout("robot: session closed"))
        assert seen.names() == ["comm-loss:robot"]
        assert "robot: session closed" in seen.trips[0].message
        robot.fail(None)
        assert seen.clears == ["comm-loss:robot"]
        # A device already lost when a monitor starts, or when check_now looks.
        robot.fail(DeviceTimeout("robot: session closed"))
        late = Recorder()
        other = InterlockMonitor(
            cell, io, on_trip=late.trip, on_clear=late.clear, comm_devices=["robot"]
        )
        assert [t.interlock for t in await other.check_now()] == ["comm-loss:robot"]
        other.start()
        other.stop()
        fresh = InterlockMonitor(
            cell, io, on_trip=late.trip, on_clear=late.clear, comm_devices=["robot"]
        )
        fresh.start()
        fresh.stop()
        assert late.names() == ["comm-loss:robot", "comm-loss:robot"]
    finally:
        monitor.stop()


@pytest.mark.asyncio
async def test_check_now_reads_fresh_values(wired: Wired) -> None:
    seen = Recorder()
    monitor = InterlockMonitor(
        wired.cell,
        wired.io,
        on_trip=seen.trip,
        on_clear=seen.clear,
        comm_devices=[],
        comm_action="stop",
    )
    # Not started: only check_now sees the device.
    press = wired.device("press")
    press.set_device_value("press.force_kN", 50.0)
    assert seen.trips == []
    trips = await monitor.check_now()
    assert [t.interlock for t in trips] == ["overforce"] == seen.names()
    assert await monitor.check_now() == trips and len(seen.trips) == 1  # once
    press.set_device_value("press.force_kN", 1.0)
    assert await monitor.check_now() == []
    assert seen.clears == ["overforce"]
    press.fail(DeviceTimeout("press: no answer"))
    trips = await monitor.check_now()
    assert [(t.interlock, t.action) for t in trips] == [("comm-loss:press", "stop")]
    press.fail(None)
    assert await monitor.check_now() == []
    assert seen.clears == ["overforce", "comm-loss:press"]


@pytest.mark.asyncio
async def test_start_sees_a_trip_already_standing(wired: Wired) -> None:
    wired.device("conveyor").set_device_value("safety.light_curtain_ok", False)
    seen = Recorder()
    monitor = InterlockMonitor(
        wired.cell, wired.io, on_trip=seen.trip, on_clear=seen.clear, comm_devices=[]
    )
    monitor.start()
    try:
        assert seen.names() == ["light-curtain"]
    finally:
        monitor.stop()


@pytest.mark.asyncio
async def test_write_safe_state_writes_every_tag(wired: Wired) -> None:
    io, cell, conveyor = wired.io, wired.cell, wired.device("conveyor")
    conveyor.set_device_value("conveyor.run", True)
    written = await write_safe_state(io, cell, "abort")
    assert written.reason == "abort" and written.ok
    assert written.results == (
        SafeWrite("conveyor.run", False),
        SafeWrite("press.cycle_start", False),
        SafeWrite("press.setpoint_kN", 0),
        SafeWrite("conveyor.speed_rpm", 0),
    )
    assert conveyor.writes == [("conveyor.run", False), ("conveyor.speed_rpm", 0)]
    assert conveyor.device_value("conveyor.run") is False


@pytest.mark.asyncio
async def test_write_safe_state_records_a_failing_device_and_writes_the_rest(wired: Wired) -> None:
    io, cell = wired.io, wired.cell
    press, conveyor = wired.device("press"), wired.device("conveyor")
    press.fail(DeviceTimeout("press: no answer within 0.2 s"))
    written = await write_safe_state(io, cell, "interlock light-curtain")
    assert not written.ok
    by_tag = {r.tag: r.error for r in written.results}
    assert by_tag["conveyor.run"] is None and by_tag["conveyor.speed_rpm"] is None
    for tag in ("press.cycle_start", "press.setpoint_kN"):  # each one attempted
        error = by_tag[tag]
        assert error is not None and tag in error and "no answer" in error
    assert conveyor.writes == [("conveyor.run", False), ("conveyor.speed_rpm", 0)]
    assert press.writes == []


@pytest.mark.asyncio
async def test_write_safe_state_does_not_wait_for_a_lost_device_and_writes_a_subset(
    wired: Wired,
) -> None:
    io, cell = wired.io, wired.cell
    press, conveyor = wired.device("press"), wired.device("conveyor")
    written = await write_safe_state(io, cell, "comm-loss:press", lost=["press"])
    by_tag = {r.tag: r.error for r in written.results}
    assert by_tag["conveyor.run"] is None and by_tag["conveyor.speed_rpm"] is None
    for tag in ("press.cycle_start", "press.setpoint_kN"):  # recorded, not sent
        error = by_tag[tag]
        assert error is not None and "press is lost" in error
    assert press.writes == []
    # Once the press answers again, only what it missed is written.
    again = await write_safe_state(
        io, cell, "press back", tags=["press.cycle_start", "press.setpoint_kN"]
    )
    assert again.ok and [r.tag for r in again.results] == [
        "press.cycle_start",
        "press.setpoint_kN",
    ]
    assert press.writes == [("press.cycle_start", False), ("press.setpoint_kN", 0)]
    assert conveyor.writes == [("conveyor.run", False), ("conveyor.speed_rpm", 0)]
