"""The in-memory driver: the Driver protocol, the device side, failures and subscriptions."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from drivers.base import Driver, Health, HealthState, Quality, Reading, Value
from drivers.codecs import zero_value
from drivers.config import MemoryConfig
from drivers.errors import (
    BadStatus,
    ConnectFailed,
    DeviceTimeout,
    NotConnected,
    NotSupported,
    PointMismatch,
    WriteRejected,
)
from drivers.memory import MemoryDriver
from drivers.points import (
    Access,
    DataType,
    MemoryPoint,
    MethodArg,
    MethodSpec,
    ModbusPoint,
    ModbusTable,
)

RUN = MemoryPoint("conveyor.run", "run", DataType.BOOL, Access.RW)
SPEED = MemoryPoint("conveyor.speed_rpm", "speed", DataType.UINT16, Access.RW)
FORCE = MemoryPoint("press.force_kN", "force", DataType.FLOAT32)
LABEL = MemoryPoint("press.label", "label", DataType.STRING, Access.RW)
PICK = MethodSpec("robot.pick", "ns=2;s=Robot", "2:Pick", (MethodArg("slot", DataType.INT32),))


class Recorder:
    """Collects every subscription callback."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Reading]] = []

    def __call__(self, readings: dict[str, Reading]) -> None:
        self.calls.append(readings)

    def values(self) -> list[dict[str, Value | None]]:
        """Each callback's values by point name."""
        return [{name: r.value for name, r in call.items()} for call in self.calls]


def state_of(driver: Driver) -> HealthState:
    """The driver's health state, read afresh (keeps mypy from narrowing across awaits)."""
    return driver.health.state


@pytest_asyncio.fixture
async def driver() -> AsyncIterator[MemoryDriver]:
    """A connected memory driver."""
    memory = MemoryDriver(MemoryConfig("conveyor"))
    await memory.connect()
    yield memory
    await memory.close()


def test_implements_the_driver_protocol() -> None:
    memory: Driver = MemoryDriver(MemoryConfig("conveyor"))
    assert isinstance(memory, Driver)
    assert memory.name == "conveyor"
    assert state_of(memory) is HealthState.DISCONNECTED


@pytest.mark.asyncio
async def test_power_on_values_by_type(driver: MemoryDriver) -> None:
    readings = await driver.read([RUN, SPEED, FORCE, LABEL])
    assert [r.value for r in readings] == [False, 0, 0.0, ""]
    assert type(readings[2].value) is float
    assert all(r.quality is Quality.GOOD and r.error is None for r in readings)


@pytest.mark.asyncio
async def test_write_then_read_back_and_write_log(driver: MemoryDriver) -> None:
    await driver.write(SPEED, 1200.0)
    await driver.write(RUN, True)
    await driver.write(LABEL, "batch-7")
    (speed, run, label) = await driver.read([SPEED, RUN, LABEL])
    assert (speed.value, run.value, label.value) == (1200, True, "batch-7")
    assert type(speed.value) is int  # normalised by check_value
    assert driver.writes == [("speed", 1200), ("run", True), ("label", "batch-7")]


@pytest.mark.asyncio
async def test_write_log_keeps_the_latest_writes_only(driver: MemoryDriver) -> None:
    # A 10,000-step batch on a memory cell must not keep every write it made.
    kept = driver.writes.kept
    for value in range(kept + 5):
        await driver.write(SPEED, value)
    assert driver.writes.total == kept + 5
    assert driver.writes == [("speed", value) for value in range(5, kept + 5)]


@pytest.mark.asyncio
async def test_readings_are_stamped_with_wall_clock(driver: MemoryDriver) -> None:
    before = time.time()
    (reading,) = await driver.read([SPEED])
    assert before <= reading.timestamp <= time.time()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("point", "value", "message"),
    [
        (SPEED, 70000, r"conveyor speed: value 70000 out of range for uint16 \(0\.\.65535\)"),
        (SPEED, 1.5, "conveyor speed: value 1.5 is not an integer"),
        (RUN, 1, "conveyor run: value 1 is not a bool"),
        (LABEL, 3, "conveyor label: value 3 is not a string"),
        (FORCE, 1.0, "conveyor force: point is read-only"),
    ],
)
async def test_write_rejected(
    driver: MemoryDriver, point: MemoryPoint, value: Value, message: str
) -> None:
    with pytest.raises(WriteRejected, match=message):
        await driver.write(point, value)
    assert driver.writes == []
    (reading,) = await driver.read([point])
    # The device still holds its power-on value.
    assert reading.value == zero_value(point.datatype)
    assert type(reading.value) is type(zero_value(point.datatype))


@pytest.mark.asyncio
async def test_device_side_values_bypass_access(driver: MemoryDriver) -> None:
    driver.set_device_value("force", 41.5)
    (force,) = await driver.read([FORCE])
    assert force.value == 41.5
    assert driver.writes == []  # only the controller's writes are logged


@pytest.mark.asyncio
async def test_device_value_set_before_any_point_is_typed_on_first_use(
    driver: MemoryDriver,
) -> None:
    driver.set_device_value("speed", 3.0)
    (speed,) = await driver.read([SPEED])
    assert speed.value == 3 and type(speed.value) is int
    driver.set_device_value("run", 1)
    with pytest.raises(PointMismatch, match="conveyor run: the device holds 1"):
        await driver.read([RUN])


@pytest.mark.asyncio
async def test_device_side_type_errors_are_caught(driver: MemoryDriver) -> None:
    await driver.read([SPEED])
    with pytest.raises(ValueError, match="conveyor speed: device value refused"):
        driver.set_device_value("speed", -1)


@pytest.mark.asyncio
async def test_one_key_with_two_types_is_a_mismatch(driver: MemoryDriver) -> None:
    await driver.read([SPEED])
    other = MemoryPoint("conveyor.speed_f", "speed", DataType.FLOAT32)
    with pytest.raises(PointMismatch, match=r"conveyor speed: conveyor\.speed_f is float32"):
        await driver.read([other])


@pytest.mark.asyncio
async def test_foreign_points_are_not_supported(driver: MemoryDriver) -> None:
    coil = ModbusPoint("conveyor.run", ModbusTable.COIL, 0, DataType.BOOL)
    with pytest.raises(NotSupported, match="coil:0"):
        await driver.read([coil])


@pytest.mark.asyncio
async def test_requests_need_a_connection() -> None:
    memory = MemoryDriver(MemoryConfig("press"))
    with pytest.raises(NotConnected, match="press: not connected"):
        await memory.read([SPEED])
    await memory.connect()
    await memory.write(SPEED, 5)
    await memory.close()
    assert state_of(memory) is HealthState.DISCONNECTED
    with pytest.raises(NotConnected):
        await memory.write(SPEED, 6)
    assert memory.writes == [("speed", 5)]


# --- subscriptions --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_subscribe_delivers_current_values_then_changes(driver: MemoryDriver) -> None:
    recorder = Recorder()
    driver.subscribe([RUN, SPEED], recorder)
    assert recorder.values() == [{"conveyor.run": False, "conveyor.speed_rpm": 0}]
    await driver.write(SPEED, 1200)
    driver.set_device_value("run", True)
    assert recorder.values()[1:] == [{"conveyor.speed_rpm": 1200}, {"conveyor.run": True}]


@pytest.mark.asyncio
async def test_only_changes_are_delivered(driver: MemoryDriver) -> None:
    recorder = Recorder()
    driver.subscribe([SPEED, FORCE], recorder)
    await driver.write(SPEED, 0)  # same value: confirmed and logged, but not a change
    driver.set_device_value("force", math.nan)
    driver.set_device_value("force", math.nan)
    driver.set_device_value("label", "other key")
    assert driver.writes == [("speed", 0)]
    assert len(recorder.calls) == 2
    assert math.isnan(recorder.calls[1]["press.force_kN"].value)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_unsubscribe_stops_callbacks(driver: MemoryDriver) -> None:
    recorder = Recorder()
    unsubscribe = driver.subscribe([SPEED], recorder)
    unsubscribe()
    unsubscribe()  # idempotent
    await driver.write(SPEED, 7)
    assert len(recorder.calls) == 1


@pytest.mark.asyncio
async def test_subscribe_before_connect_hears_on_connect() -> None:
    memory = MemoryDriver(MemoryConfig("press"))
    recorder = Recorder()
    memory.subscribe([SPEED], recorder)
    memory.set_device_value("speed", 9)
    assert recorder.calls == []
    await memory.connect()
    assert recorder.values() == [{"conveyor.speed_rpm": 9}]


@pytest.mark.asyncio
async def test_a_failing_callback_does_not_fail_the_write(
    driver: MemoryDriver, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(readings: dict[str, Reading]) -> None:
        if "conveyor.speed_rpm" in readings and readings["conveyor.speed_rpm"].value == 1:
            raise RuntimeError("subscriber bug")

    recorder = Recorder()
    driver.subscribe([SPEED], broken)
    driver.subscribe([SPEED], recorder)
    with caplog.at_level(logging.ERROR, logger="drivers"):
        await driver.write(SPEED, 1)
    assert driver.writes == [("speed", 1)]
    assert recorder.values()[-1] == {"conveyor.speed_rpm": 1}
    assert "subscription callback failed" in caplog.text


# --- failures and health --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_fail_and_restore(driver: MemoryDriver) -> None:
    transitions: list[Health] = []
    driver.on_health(lambda device, health: transitions.append(health))
    recorder = Recorder()
    driver.subscribe([SPEED], recorder)
    error = DeviceTimeout("conveyor: no answer from memory")

    driver.fail(error)
    assert state_of(driver) is HealthState.LOST
    assert driver.health.last_error == "conveyor: no answer from memory"
    (bad,) = recorder.calls[-1].values()
    assert (bad.value, bad.quality, bad.error) == (None, Quality.BAD, str(error))
    with pytest.raises(DeviceTimeout):
        await driver.read([SPEED])
    with pytest.raises(DeviceTimeout):
        await driver.write(SPEED, 3)
    with pytest.raises(DeviceTimeout):
        await driver.call(PICK, [1])
    calls_while_failed = len(recorder.calls)
    driver.set_device_value("speed", 42)  # the device changes while the link is down
    assert len(recorder.calls) == calls_while_failed

    driver.fail(None)
    assert state_of(driver) is HealthState.CONNECTED
    assert recorder.values()[-1] == {"conveyor.speed_rpm": 42}
    assert recorder.calls[-1]["conveyor.speed_rpm"].quality is Quality.GOOD
    assert [h.state for h in transitions] == [HealthState.LOST, HealthState.CONNECTED]
    assert driver.writes == []


@pytest.mark.asyncio
async def test_connect_fails_while_failed() -> None:
    memory = MemoryDriver(MemoryConfig("robot"))
    memory.fail(DeviceTimeout("robot: silent"))
    with pytest.raises(ConnectFailed, match="robot: cannot connect to memory: robot: silent"):
        await memory.connect()
    assert state_of(memory) is HealthState.LOST
    memory.fail(None)
    assert state_of(memory) is HealthState.DISCONNECTED
    await memory.connect()
    assert state_of(memory) is HealthState.CONNECTED


@pytest.mark.asyncio
async def test_health_transitions_are_reported_once() -> None:
    memory = MemoryDriver(MemoryConfig("robot"))
    states: list[tuple[str, HealthState]] = []
    unlisten = memory.on_health(lambda device, health: states.append((device, health.state)))
    await memory.connect()
    await memory.connect()
    await memory.close()
    unlisten()
    await memory.connect()
    assert states == [("robot", HealthState.CONNECTED), ("robot", HealthState.DISCONNECTED)]


# --- methods --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_call_registered_method(driver: MemoryDriver) -> None:
    picked: list[int] = []

    async def pick(slot: int) -> bool:
        picked.append(slot)
        return slot < 4

    driver.register_method("Pick", pick)  # no namespace: matches 2:Pick
    assert await driver.call(PICK, [1]) is True
    assert await driver.call(PICK, [9.0]) is False
    assert picked == [1, 9]
    assert type(picked[1]) is int


@pytest.mark.asyncio
async def test_call_checks_arguments(driver: MemoryDriver) -> None:
    async def pick(slot: int) -> bool:
        return True

    driver.register_method("2:Pick", pick)
    with pytest.raises(WriteRejected, match="conveyor 2:Pick: expects 1 arguments, got 0"):
        await driver.call(PICK, [])
    with pytest.raises(WriteRejected, match="conveyor 2:Pick argument slot: value 'a'"):
        await driver.call(PICK, ["a"])


@pytest.mark.asyncio
async def test_call_unknown_method_is_not_supported(driver: MemoryDriver) -> None:
    with pytest.raises(NotSupported, match="conveyor: no method 2:Pick"):
        await driver.call(PICK, [1])


@pytest.mark.asyncio
async def test_method_failures(driver: MemoryDriver) -> None:
    async def crash(slot: int) -> bool:
        raise RuntimeError("gripper jammed")

    async def refuse(slot: int) -> bool:
        raise WriteRejected("robot: slot empty")

    driver.register_method("Pick", crash)
    with pytest.raises(BadStatus, match="gripper jammed") as info:
        await driver.call(PICK, [1])
    assert info.value.status == "BadUnexpectedError"
    driver.register_method("Pick", refuse)
    with pytest.raises(WriteRejected, match="slot empty"):
        await driver.call(PICK, [1])
