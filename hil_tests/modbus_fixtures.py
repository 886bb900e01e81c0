"""What the Modbus tests share: the simulated device, rigs and the checks test_modbus.py runs
over each transport."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from typing import Generic, TypeVar

import pytest

from cellctl.testing import wait_until
from drivers.base import HealthState, Quality, Reading, Value
from drivers.batching import plan_reads
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.errors import ConnectFailed, DeviceTimeout, ModbusExceptionResponse, WriteRejected
from drivers.modbus import ModbusDriver, make_modbus_drivers
from drivers.points import Access, DataType, ModbusPoint, ModbusTable, WordOrder
from drivers.sim.image import ProcessImage
from drivers.sim.modbus_server import ModbusRtuSimServer, ModbusSimServer
from hil_tests.support import with_room

COIL = ModbusTable.COIL
DI = ModbusTable.DISCRETE_INPUT
HR = ModbusTable.HOLDING_REGISTER
IR = ModbusTable.INPUT_REGISTER
RW = Access.RW

# Short limits keep failure tests fast: a silent device fails after 0.2 × (1 + 1) = 0.4 s.
LIMITS = RequestLimits(timeout=0.2, retries=1)
# For queues of failing requests: pymodbus drops the connection after retries + 3 failures
# in a row, so 2 retries keep four failures on one connection.
QUEUE_LIMITS = RequestLimits(timeout=0.15, retries=2)
BUS_WAIT_SLACK = 0.25  # a request waits for the bus one worst case plus this
QUEUED = 16  # requests queued on a silent bus (check_queue_is_bounded)
POLL = 0.05

ORDERS = list(WordOrder)
SAMPLES: dict[DataType, Value] = {
    DataType.INT16: -12345,
    DataType.UINT16: 0xBEEF,
    DataType.INT32: -123456789,
    DataType.UINT32: 4_000_000_000,
    DataType.INT64: -(2**62) - 7,
    DataType.UINT64: 2**64 - 12345,
    DataType.FLOAT32: -41.5,
    DataType.FLOAT64: math.pi,
}


def _roundtrip_points() -> list[tuple[ModbusPoint, Value]]:
    """Every register type in every word order, packed from hr:0 (so hr:0 and coil:0 meet)."""
    cases: list[tuple[ModbusPoint, Value]] = []
    address = 0
    for datatype, value in SAMPLES.items():
        for order in ORDERS:
            name = f"{datatype.value}_{order.value.lower()}"
            point = ModbusPoint(name, HR, address, datatype, word_order=order, access=RW)
            cases.append((point, value))
            address = point.end
    text = ModbusPoint("text", HR, address, DataType.STRING, access=RW, length=8)
    bit3 = ModbusPoint("bit3", HR, text.end, DataType.BOOL, bit=3, access=RW)
    bit15 = replace(bit3, name="bit15", bit=15)
    cases += [(text, "héllo wörld"), (bit3, True), (bit15, True)]
    cases += [(ModbusPoint("run", COIL, 0, DataType.BOOL, access=RW), True)]
    cases += [(ModbusPoint("clamp", COIL, 9, DataType.BOOL, access=RW), True)]
    return cases


ROUNDTRIP = _roundtrip_points()
HR0 = ROUNDTRIP[0][0]  # int16 at hr:0
RUN = next(p for p, _ in ROUNDTRIP if p.name == "run")  # coil:0
BIT3 = next(p for p, _ in ROUNDTRIP if p.name == "bit3")
BIT15 = next(p for p, _ in ROUNDTRIP if p.name == "bit15")
FLOAT_CDAB = next(p for p, _ in ROUNDTRIP if p.name == "float32_cdab")
INT32_ABCD = next(p for p, _ in ROUNDTRIP if p.name == "int32_abcd")

# Read-only inputs the model drives.
PART_PRESENT = ModbusPoint("part_present", DI, 0, DataType.BOOL)
DOOR_CLOSED = ModbusPoint("door_closed", DI, 7, DataType.BOOL)
FORCE = ModbusPoint("force_kN", IR, 0, DataType.FLOAT32, word_order=WordOrder.CDAB)
CYCLES = ModbusPoint("cycles", IR, 2, DataType.UINT32)
RO_SETPOINT = ModbusPoint("ro_setpoint", HR, 90, DataType.UINT16)  # access ro

# Ten contiguous registers, a gap that another point defines, and one more register.
BLOCK = [ModbusPoint(f"blk{i}", HR, 100 + i, DataType.UINT16) for i in range(10)]
FILLER = ModbusPoint("filler", HR, 110, DataType.STRING, length=10)  # hr:110..119
AFTER = ModbusPoint("after", HR, 120, DataType.UINT16)

INPUTS = [PART_PRESENT, DOOR_CLOSED, FORCE, CYCLES]
POINTS = [p for p, _ in ROUNDTRIP] + [*INPUTS, RO_SETPOINT, *BLOCK, FILLER, AFTER]


def press_image(device: str = "press") -> ProcessImage:
    """The simulated device, with power-on values for the block and inputs."""
    image = ProcessImage(device, POINTS)
    for i, point in enumerate(BLOCK):
        image.set(point.name, 1000 + i)
    image.set(AFTER.name, 4242)
    image.set(FORCE.name, 12.25)
    image.set(CYCLES.name, 70000)
    image.set(DOOR_CLOSED.name, True)
    image.set(RO_SETPOINT.name, 7)
    return image


async def stays_false(predicate: Callable[[], bool], window: float) -> bool:
    """True when `predicate` stays false for the whole window (to show something stopped)."""
    deadline = time.monotonic() + window
    while time.monotonic() < deadline:
        if predicate():
            return False
        await asyncio.sleep(0.005)
    return not predicate()


S = TypeVar("S", ModbusSimServer, ModbusRtuSimServer)
Config = ModbusTcpConfig | ModbusRtuConfig


@dataclass
class Rig(Generic[S]):
    """A simulator serving the press image at one unit, and how to make drivers for it."""

    server: S
    image: ProcessImage
    unit: int

    def config(self, name: str = "press", unit: int | None = None, **kw: object) -> Config:
        """A device config for this simulator (defaults: this unit, short limits, fast poll)."""
        unit = self.unit if unit is None else unit
        options: dict[str, object] = {"limits": LIMITS, "poll": POLL, **kw}
        if isinstance(self.server, ModbusSimServer):
            return ModbusTcpConfig(name, "127.0.0.1", self.server.port, unit, **options)  # type: ignore[arg-type]
        return ModbusRtuConfig(name, self.server.client_path, unit, **options)  # type: ignore[arg-type]

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Rig[S]]:
        """This rig with its simulator started; stopped on exit."""
        await self.server.start()
        try:
            yield self
        finally:
            await self.server.stop()

    @asynccontextmanager
    async def driver(self, connect: bool = True, **kw: object) -> AsyncIterator[ModbusDriver]:
        """A driver for one device of this rig, closed on exit."""
        config = self.config(**kw)  # type: ignore[arg-type]
        driver = make_modbus_drivers([config])[config.name]
        try:
            if connect:
                await driver.connect()
            yield driver
        finally:
            await driver.close()


def press_rig(server: Callable[[dict[int, ProcessImage]], S], unit: int = 1) -> Rig[S]:
    """A simulator (`server` made from its images) serving the press image at `unit`; not
    started yet: `async with press_rig(...).running() as rig` serves it for a block."""
    image = press_image()
    return Rig(server({unit: image}), image, unit)


# -- checks run over TCP and RTU --------------------------------------------------------


async def check_roundtrip(
    rig: Rig[S], driver: ModbusDriver, point: ModbusPoint, value: Value
) -> None:
    """Write, read back the same value, and find it in the simulator's image."""
    await driver.write(point, value)
    (reading,) = await driver.read([point])
    assert reading.quality is Quality.GOOD, reading.error
    assert reading.value == value
    assert type(reading.value) is type(value)
    assert rig.image.get(point.name) == value


async def check_inputs(rig: Rig[S], driver: ModbusDriver) -> None:
    """Values the model publishes to di and ir reach the driver."""
    for present, force, cycles in ((True, 19.5, 70001), (False, -3.25, 0)):
        rig.image.set(PART_PRESENT.name, present)
        rig.image.set(FORCE.name, force)
        rig.image.set(CYCLES.name, cycles)
        await rig.server.publish(rig.image.device, rig.image.take_dirty())
        assert [r.value for r in await driver.read(INPUTS)] == [present, True, force, cycles]


async def check_batching(rig: Rig[S]) -> None:
    """10 contiguous registers → 1 request; with a gap → 2 (max_gap 0) or 1 (max_gap 10)."""
    expected: list[Value] = [1000 + i for i in range(10)]
    async with rig.driver(name="gap0") as driver:
        before = driver.requests
        assert [r.value for r in await driver.read(BLOCK)] == expected
        assert driver.requests - before == 1
        before = driver.requests
        readings = await driver.read([*BLOCK, AFTER])
        assert [r.value for r in readings] == [*expected, 4242]
        assert driver.requests - before == 2
    async with rig.driver(name="gap10", max_gap=10) as driver:
        before = driver.requests
        readings = await driver.read([AFTER, *BLOCK])  # any order in, same order out
        assert [r.value for r in readings] == [4242, *expected]
        assert driver.requests - before == 1


async def check_register_bits(driver: ModbusDriver) -> None:
    """Two bit points of one register change independently (read-modify-write)."""
    await driver.write(BIT3, True)
    await driver.write(BIT15, True)
    await driver.write(BIT3, False)
    assert [r.value for r in await driver.read([BIT3, BIT15])] == [False, True]


async def check_coil0_hr0_independent(driver: ModbusDriver) -> None:
    """coil:0 and hr:0 are separate tables (no aliasing in the simulator)."""
    await driver.write(RUN, True)
    await driver.write(HR0, 0)
    assert [r.value for r in await driver.read([RUN, HR0])] == [True, 0]
    await driver.write(HR0, -1)  # 0xFFFF
    await driver.write(RUN, False)
    assert [r.value for r in await driver.read([RUN, HR0])] == [False, -1]


async def check_subscription(rig: Rig[S], driver: ModbusDriver) -> None:
    """All values on the first cycle, then a model change within two poll periods."""
    batches: list[dict[str, Reading]] = []
    unsubscribe = driver.subscribe([FORCE, PART_PRESENT, *BLOCK[:3]], batches.append)
    try:
        await wait_until(lambda: bool(batches), 5.0, "the first poll")
        assert set(batches[0]) == {"force_kN", "part_present", "blk0", "blk1", "blk2"}
        count = len(batches)
        per_poll = len(plan_reads([FORCE, PART_PRESENT, *BLOCK[:3]]))
        rig.image.set(FORCE.name, 15.75)
        await rig.server.publish(rig.image.device, rig.image.take_dirty())
        sent = driver.requests
        await wait_until(lambda: len(batches) > count, 5.0, "the change")
        # Counted in poll cycles, not seconds, so a loaded CI machine cannot make it flaky:
        # the change is delivered by the first or second poll after it happened.
        assert driver.requests - sent <= 2 * per_poll
        assert {n: r.value for n, r in batches[-1].items()} == {"force_kN": 15.75}
    finally:
        unsubscribe()


async def check_unsubscribe(rig: Rig[S], driver: ModbusDriver) -> None:
    """An unsubscribed callback hears nothing more; with none left polling stops."""
    seen_a: list[dict[str, Reading]] = []
    seen_b: list[dict[str, Reading]] = []
    stop_a = driver.subscribe([FORCE], seen_a.append)
    stop_b = driver.subscribe([CYCLES], seen_b.append)
    await wait_until(lambda: bool(seen_a) and bool(seen_b), 5.0, "both first polls")
    stop_b()
    count_a, count_b = len(seen_a), len(seen_b)
    rig.image.set(FORCE.name, 1.5)
    rig.image.set(CYCLES.name, 5)
    await rig.server.publish(rig.image.device, rig.image.take_dirty())
    await wait_until(lambda: len(seen_a) > count_a, 5.0, "the change for the remaining subscriber")
    assert len(seen_b) == count_b
    stop_a()
    sent = driver.requests
    assert await stays_false(lambda: driver.requests > sent, 4 * POLL)


async def check_exception_codes(rig: Rig[S], driver: ModbusDriver, code: int, text: str) -> None:
    """An injected exception fails writes with its named message and gives BAD readings."""
    rig.server.inject_exception(rig.unit, code)
    try:
        with pytest.raises(ModbusExceptionResponse) as caught:
            await driver.write(HR0, 5)
        assert caught.value.code == code
        assert str(caught.value) == f"press hr:0: {text} (exception {code})"
        coil, register = await driver.read([RUN, AFTER])
        assert (coil.value, coil.quality) == (None, Quality.BAD)
        assert coil.error == f"press coil:0: {text} (exception {code})"
        assert register.error == f"press hr:120: {text} (exception {code})"
        # The device answered: an exception is not a communication failure.
        assert driver.health.state is HealthState.CONNECTED
    finally:
        rig.server.inject_exception(rig.unit, None)
    assert (await driver.read([AFTER]))[0].value == 4242


async def check_table_exception(rig: Rig[S], driver: ModbusDriver) -> None:
    """An exception injected for one table leaves the other tables answering."""
    rig.server.inject_exception(rig.unit, 2, HR)
    try:
        coil, register = await driver.read([RUN, AFTER])
        assert coil.quality is Quality.GOOD
        assert register.quality is Quality.BAD
        assert register.error == "press hr:120: illegal data address (exception 2)"
    finally:
        rig.server.inject_exception(rig.unit, None, HR)


async def check_write_rejected(driver: ModbusDriver) -> None:
    """ro points, di/ir points and bad values are refused before anything is sent."""
    before = driver.requests
    cases: list[tuple[ModbusPoint, Value, str]] = [
        (RO_SETPOINT, 1, "press hr:90: ro_setpoint is read-only"),
        (PART_PRESENT, True, "press di:0: part_present is in a read-only table"),
        (replace(FORCE, access=RW), 1.0, "press ir:0: force_kN is in a read-only table"),
        (HR0, 70000, "press hr:0: value 70000 out of range for int16"),
        (RUN, 1, "press coil:0: value 1 is not a bool"),
    ]
    for point, value, message in cases:
        with pytest.raises(WriteRejected) as caught:
            await driver.write(point, value)
        assert str(caught.value).startswith(message)
    assert driver.requests == before


async def check_timeout(driver: ModbusDriver, point: ModbusPoint = HR0) -> None:
    """A silent device fails a read and a write within timeout × (retries + 1), with room."""
    worst = LIMITS.worst_case
    actions: list[Callable[[], Awaitable[object]]] = [
        lambda: driver.read([point]),
        lambda: driver.write(point, 1),
    ]
    for action in actions:
        start = time.monotonic()
        with pytest.raises(DeviceTimeout) as caught:
            await action()
        elapsed = time.monotonic() - start
        assert worst * 0.9 <= elapsed <= with_room(worst)
        assert driver.name in str(caught.value) and driver.endpoint in str(caught.value)


async def check_down_at_first_connect(rig: Rig[S]) -> None:
    """connect() started while nothing answers succeeds once the device comes up."""
    assert not rig.server.running
    async with rig.driver(connect=False, limits=RequestLimits(timeout=0.5, retries=1)) as driver:
        connecting = asyncio.create_task(driver.connect())
        try:
            await wait_until(
                lambda: driver.health.state is HealthState.LOST, 5.0, "a failed first attempt"
            )
            assert not connecting.done()
            await rig.server.start()
            await connecting
        finally:
            connecting.cancel()
        assert driver.health.state is HealthState.CONNECTED
        assert (await driver.read([AFTER]))[0].value == 4242


async def check_connect_fails_then_keeps_trying(rig: Rig[S]) -> None:
    """ConnectFailed within the deadline, naming device and endpoint; then a background connect."""
    assert not rig.server.running
    async with rig.driver(connect=False) as driver:
        start = time.monotonic()
        with pytest.raises(ConnectFailed) as caught:
            await driver.connect()
        assert time.monotonic() - start <= with_room(LIMITS.worst_case)
        assert str(caught.value).startswith(f"press: cannot connect to {driver.endpoint} within")
        assert driver.health.state is HealthState.LOST
        await rig.server.start()
        await wait_until(
            lambda: driver.health.state is HealthState.CONNECTED, 3.0, "the background connect"
        )
        assert (await driver.read([AFTER]))[0].value == 4242


async def check_kill_and_restart(rig: Rig[S], driver: ModbusDriver) -> None:
    """A killed device: LOST and one BAD reading; restarted: CONNECTED and values again."""
    states: list[HealthState] = []
    driver.on_health(lambda _device, health: states.append(health.state))
    batches: list[dict[str, Reading]] = []
    unsubscribe = driver.subscribe([AFTER], batches.append)
    try:
        await wait_until(lambda: bool(batches), 5.0, "the first poll")
        await rig.server.stop()
        await wait_until(lambda: driver.health.state is HealthState.LOST, 5.0, "health LOST")
        await wait_until(lambda: len(batches) > 1, 5.0, "a BAD reading")
        await rig.server.start()
        await wait_until(
            lambda: driver.health.state is HealthState.CONNECTED, 3.0, "health CONNECTED"
        )
        await wait_until(lambda: len(batches) > 2, 5.0, "values again")
    finally:
        unsubscribe()
    assert states == [HealthState.LOST, HealthState.CONNECTED]
    assert [b["after"].quality for b in batches] == [Quality.GOOD, Quality.BAD, Quality.GOOD]
    assert batches[-1]["after"].value == 4242
    assert "press" in str(batches[1]["after"].error)


async def check_silence_health(
    driver: ModbusDriver, silence: Callable[[bool], None], point: ModbusPoint = HR0
) -> None:
    """A device that stops answering: DeviceTimeout, DEGRADED, then LOST; back: CONNECTED."""
    states: list[HealthState] = []
    driver.on_health(lambda _device, health: states.append(health.state))
    silence(True)
    try:
        await check_timeout(driver, point)  # two failures
        assert driver.health.state is HealthState.DEGRADED
        with pytest.raises(DeviceTimeout):
            await driver.read([point])
        assert states[-1] is HealthState.LOST
    finally:
        silence(False)
    await driver.read([point])
    assert states == [HealthState.DEGRADED, HealthState.LOST, HealthState.CONNECTED]


async def check_queue_is_bounded(driver: ModbusDriver, silence: Callable[[bool], None]) -> None:
    """Requests queued on a silent bus each fail within two worst cases (+ slack), not n × one.

    Each waits for the bus at most one worst case (+ slack) and is then given its own. Enough
    of them that n × one worst case is beyond that bound even with room for a loaded machine.
    """
    worst = driver.bus.limits.worst_case
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def timed_read() -> tuple[float, str]:
        with pytest.raises(DeviceTimeout) as caught:
            await driver.read([HR0])
        return loop.time() - start, str(caught.value)

    silence(True)
    try:
        results = await asyncio.gather(*(timed_read() for _ in range(QUEUED)))
    finally:
        silence(False)
    bound = with_room(2 * worst + BUS_WAIT_SLACK)
    assert QUEUED * worst > bound
    assert max(elapsed for elapsed, _ in results) <= bound
    for _, message in results:
        assert message.startswith(f"{driver.name} ({driver.endpoint}) read hr:0: ")
    assert "not sent: the bus to" in results[-1][1]  # the last one never got the bus
    assert (await driver.read([AFTER]))[0].value == 4242  # and the bus works again


def no_tracebacks(records: list[logging.LogRecord]) -> list[str]:
    """Log lines that carry a traceback or a KeyError (what pymodbus logs for an unknown unit)."""
    return [
        r.getMessage()
        for r in records
        if r.exc_info or "Traceback" in r.getMessage() or "KeyError" in r.getMessage()
    ]


async def check_unknown_unit(rig: Rig[S], caplog: pytest.LogCaptureFixture) -> None:
    """A unit nobody simulates stays silent (timeout), and the server logs no traceback."""
    caplog.set_level(logging.DEBUG, logger="pymodbus")
    async with rig.driver(name="ghost", unit=9) as ghost:
        with pytest.raises(DeviceTimeout) as caught:
            await ghost.read([AFTER])
        assert "ghost" in str(caught.value) and "unit 9" in str(caught.value)
    assert no_tracebacks(caplog.records) == []
    async with rig.driver() as driver:
        assert (await driver.read([AFTER]))[0].value == 4242


async def check_two_units_share_a_bus(rig: Rig[S], second: ProcessImage, second_unit: int) -> None:
    """Two devices on one bus: one shared ModbusBus, each unit answers with its own tables."""
    drivers = make_modbus_drivers([rig.config(), rig.config("feeder", second_unit)])
    press, feeder = drivers["press"], drivers["feeder"]
    try:
        await press.connect()
        await feeder.connect()
        assert press.bus is feeder.bus
        assert rig.server.connections == 1
        assert feeder.health.state is HealthState.CONNECTED
        await feeder.write(HR0, 321)
        await press.write(HR0, 123)
        assert second.get(HR0.name) == 321
        assert rig.image.get(HR0.name) == 123
        assert [(await d.read([HR0]))[0].value for d in (press, feeder)] == [123, 321]
        await press.close()  # the bus stays open for the other device
        assert (await feeder.read([HR0]))[0].value == 321
    finally:
        for driver in drivers.values():
            await driver.close()
