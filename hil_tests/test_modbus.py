"""Modbus TCP and RTU: the real driver (pymodbus client; pyserial on a pty for RTU) against the
real simulator on 127.0.0.1, one test per check parametrised over the transport."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from cellctl.testing import free_port
from drivers.base import Health, HealthState, Quality, Value
from drivers.config import ModbusTcpConfig, RequestLimits
from drivers.errors import DriverError, NotConnected, NotSupported
from drivers.modbus import ModbusDriver, make_modbus_drivers
from drivers.points import Access, DataType, MethodSpec, ModbusPoint, ModbusTable
from drivers.sim.faultproxy import FaultProxy
from drivers.sim.image import ProcessImage
from drivers.sim.modbus_server import ModbusRtuSimServer, ModbusSimServer
from hil_tests.modbus_fixtures import (
    AFTER,
    BIT3,
    BIT15,
    DOOR_CLOSED,
    FLOAT_CDAB,
    HR0,
    INT32_ABCD,
    LIMITS,
    POLL,
    QUEUE_LIMITS,
    ROUNDTRIP,
    RUN,
    Rig,
    check_batching,
    check_coil0_hr0_independent,
    check_connect_fails_then_keeps_trying,
    check_down_at_first_connect,
    check_exception_codes,
    check_inputs,
    check_kill_and_restart,
    check_queue_is_bounded,
    check_register_bits,
    check_roundtrip,
    check_silence_health,
    check_subscription,
    check_table_exception,
    check_timeout,
    check_two_units_share_a_bus,
    check_unknown_unit,
    check_unsubscribe,
    check_write_rejected,
    press_image,
    press_rig,
    wait_until,
)

MODULE = pytest.mark.asyncio(loop_scope="module")
TRANSPORTS = ["tcp", "rtu"]
#: Each transport's simulator class, the unit of the press and of a second device on the bus.
SERVERS: dict[str, tuple[type[ModbusSimServer] | type[ModbusRtuSimServer], int, int]] = {
    "tcp": (ModbusSimServer, 1, 2),
    "rtu": (ModbusRtuSimServer, 2, 7),
}
UNIT = SERVERS["tcp"][1]  # the TCP-only tests'
RTU_UNIT = SERVERS["rtu"][1]  # the RTU-only tests'
AnyRig = Rig[ModbusSimServer] | Rig[ModbusRtuSimServer]
TcpRig = Rig[ModbusSimServer]
RtuRig = Rig[ModbusRtuSimServer]
Shared = tuple[AnyRig, ModbusDriver]
EXCEPTIONS = [
    (1, "illegal function"),
    (2, "illegal data address"),
    (3, "illegal data value"),
    (4, "server device failure"),
    (6, "server device busy"),
]
# A test for one transport only keeps the rig (or shared rig) of that one.
TCP_ONLY = pytest.mark.parametrize("rig", ["tcp"], indirect=True)
RTU_ONLY = pytest.mark.parametrize("rig", ["rtu"], indirect=True)


def tty_behind(path: str) -> str | None:
    """The pty a serial port path leads to, or None when the path does not exist."""
    return os.path.realpath(path) if os.path.lexists(path) else None


def serial(rig: AnyRig) -> bool:
    """True for an RTU rig (pyserial opens its port exclusively: one driver at a time)."""
    return isinstance(rig.server, ModbusRtuSimServer)


def make_rig(transport: str) -> AnyRig:
    """The press rig of a transport, not started yet."""
    server, unit, _ = SERVERS[transport]
    return press_rig(server, unit)  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="module", scope="module", params=TRANSPORTS)
async def shared(request: pytest.FixtureRequest) -> AsyncIterator[Shared]:
    """One simulator and one connected driver for the tests that only read and write."""
    async with make_rig(request.param).running() as rig, rig.driver() as driver:
        yield rig, driver


@pytest_asyncio.fixture(params=TRANSPORTS)
async def rig(request: pytest.FixtureRequest) -> AsyncIterator[AnyRig]:
    """A fresh running simulator, for tests that inject faults, freeze or stop it."""
    async with make_rig(request.param).running() as served:
        yield served


@pytest_asyncio.fixture(params=TRANSPORTS)
async def stopped_rig(request: pytest.FixtureRequest) -> AsyncIterator[AnyRig]:
    """A simulator not started yet: TCP on a known free port, RTU on a path not there yet."""
    image = press_image()
    server, unit, _ = SERVERS[request.param]
    if server is ModbusSimServer:
        stopped: AnyRig = Rig(ModbusSimServer({unit: image}, port=free_port()), image, unit)
    else:
        stopped = Rig(ModbusRtuSimServer({unit: image}), image, unit)
        assert tty_behind(stopped.server.endpoint) is None
    try:
        yield stopped
    finally:
        await stopped.server.stop()


@pytest_asyncio.fixture
async def proxied(rig: TcpRig) -> AsyncIterator[tuple[FaultProxy, ModbusDriver]]:
    """A driver that reaches the TCP simulator through a fault proxy (latency, freezing)."""
    proxy = FaultProxy("127.0.0.1", rig.server.port)
    await proxy.start()
    limits = RequestLimits(timeout=0.5, retries=0)
    config = ModbusTcpConfig("press", "127.0.0.1", proxy.port, UNIT, poll=POLL, limits=limits)
    driver = make_modbus_drivers([config])["press"]
    try:
        await driver.connect()
        yield proxy, driver
    finally:
        await driver.close()
        await proxy.stop()


@contextlib.asynccontextmanager
async def silenceable(
    rig: AnyRig, limits: RequestLimits
) -> AsyncIterator[tuple[ModbusDriver, Callable[[bool], None]]]:
    """A connected driver and what silences its device: a frozen fault proxy (TCP) or a frozen
    line (RTU)."""
    if isinstance(rig.server, ModbusRtuSimServer):
        async with rig.driver(limits=limits) as driver:
            yield driver, rig.server.freeze
        return
    proxy = FaultProxy("127.0.0.1", rig.server.port)
    await proxy.start()
    try:
        config = ModbusTcpConfig("press", "127.0.0.1", proxy.port, rig.unit, limits=limits)
        driver = make_modbus_drivers([config])["press"]
        try:
            await driver.connect()
            yield driver, proxy.freeze
        finally:
            await driver.close()
    finally:
        await proxy.stop()


def where(rig: AnyRig) -> int | str:
    """Where the driver finds the simulator: its TCP port or its serial port path."""
    return rig.server.client_path if isinstance(rig.server, ModbusRtuSimServer) else rig.server.port


# -- every transport ------------------------------------------------------------------------


@MODULE
@pytest.mark.parametrize(("point", "value"), ROUNDTRIP, ids=[p.name for p, _ in ROUNDTRIP])
async def test_every_type_and_word_order_round_trips(
    shared: Shared, point: ModbusPoint, value: Value
) -> None:
    await check_roundtrip(*shared, point, value)


@MODULE
async def test_discrete_and_input_registers_carry_model_values(shared: Shared) -> None:
    await check_inputs(*shared)


@MODULE
async def test_reads_are_batched_by_max_gap(shared: Shared) -> None:
    rig, driver = shared
    if not serial(rig):
        await check_batching(rig)
        return
    await driver.close()  # pyserial opens a port exclusively: one driver at a time
    try:
        await check_batching(rig)
    finally:
        await driver.connect()


@MODULE
async def test_register_bits_change_independently(shared: Shared) -> None:
    await check_register_bits(shared[1])


@MODULE
async def test_coil0_and_hr0_are_independent(shared: Shared) -> None:
    await check_coil0_hr0_independent(shared[1])


@MODULE
async def test_writes_refused_before_sending(shared: Shared) -> None:
    await check_write_rejected(shared[1])


@pytest.mark.asyncio
async def test_subscription_sees_a_model_change_within_two_polls(rig: AnyRig) -> None:
    async with rig.driver() as driver:
        await check_subscription(rig, driver)


@pytest.mark.asyncio
async def test_unsubscribe_stops_polling(rig: AnyRig) -> None:
    async with rig.driver() as driver:
        await check_unsubscribe(rig, driver)


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "text"), EXCEPTIONS)
async def test_exception_answers_are_named(rig: AnyRig, code: int, text: str) -> None:
    async with rig.driver() as driver:
        await check_exception_codes(rig, driver, code, text)


@pytest.mark.asyncio
async def test_exception_on_one_table_only(rig: AnyRig) -> None:
    async with rig.driver() as driver:
        await check_table_exception(rig, driver)


@pytest.mark.asyncio
async def test_device_down_at_first_connect_is_reached_when_it_comes_up(
    stopped_rig: AnyRig,
) -> None:
    await check_down_at_first_connect(stopped_rig)


@pytest.mark.asyncio
async def test_connect_fails_in_time_then_keeps_trying(stopped_rig: AnyRig) -> None:
    await check_connect_fails_then_keeps_trying(stopped_rig)


@pytest.mark.asyncio
async def test_killed_and_restarted_device(rig: AnyRig) -> None:
    before = where(rig)
    async with rig.driver() as driver:
        await check_kill_and_restart(rig, driver)
    assert where(rig) == before


@pytest.mark.asyncio
async def test_requests_queued_on_a_silent_device_are_each_bounded(rig: AnyRig) -> None:
    async with silenceable(rig, QUEUE_LIMITS) as (driver, silence):
        await check_queue_is_bounded(driver, silence)


@pytest.mark.asyncio
async def test_unknown_unit_is_silent(rig: AnyRig, caplog: pytest.LogCaptureFixture) -> None:
    await check_unknown_unit(rig, caplog)


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_second_unit_shares_the_bus(transport: str) -> None:
    server_class, unit, second = SERVERS[transport]
    press, feeder = press_image(), press_image("feeder")
    server = server_class({unit: press, second: feeder})
    await server.start()
    try:
        await check_two_units_share_a_bus(Rig(server, press, unit), feeder, second)  # type: ignore[arg-type]
        if transport == "tcp":
            await wait_until(lambda: server.connections == 0, 5.0, "the shared connection to close")
    finally:
        await server.stop()


# -- TCP only -------------------------------------------------------------------------------


@MODULE
@pytest.mark.parametrize("shared", ["tcp"], indirect=True)
async def test_call_is_not_supported(shared: Shared) -> None:
    with pytest.raises(NotSupported, match=r"^press: Modbus devices have no methods"):
        await shared[1].call(MethodSpec("robot.pick", "ns=2;s=Robot", "2:Pick"), [])


@MODULE
@pytest.mark.parametrize("shared", ["tcp"], indirect=True)
async def test_a_plain_pymodbus_client_sees_what_the_driver_sees_over_tcp(
    shared: Shared,
) -> None:
    rig, driver = shared
    client = AsyncModbusTcpClient("127.0.0.1", port=rig.server.port, timeout=1, retries=0)
    assert await client.connect()
    try:
        await driver.write(FLOAT_CDAB, 41.5)
        answer = await client.read_holding_registers(FLOAT_CDAB.address, count=2, device_id=UNIT)
        # CDAB is pymodbus's "little" word order (low word first).
        value = client.convert_from_registers(
            answer.registers, client.DATATYPE.FLOAT32, word_order="little"
        )
        assert value == 41.5
        words = client.convert_to_registers(-987654321, client.DATATYPE.INT32)
        assert not (
            await client.write_registers(INT32_ABCD.address, words, device_id=UNIT)
        ).isError()
        assert (await driver.read([INT32_ABCD]))[0].value == -987654321
        assert rig.image.get(INT32_ABCD.name) == -987654321
        assert not (await client.write_coil(RUN.address, True, device_id=UNIT)).isError()
        assert (await driver.read([RUN]))[0].value is True
        await driver.write(BIT3, True)
        await driver.write(BIT15, True)
        answer = await client.read_holding_registers(BIT3.address, count=1, device_id=UNIT)
        assert answer.registers == [0x8008]
        answer = await client.read_discrete_inputs(DOOR_CLOSED.address, count=1, device_id=UNIT)
        assert answer.bits[0] is True
        answer = await client.read_holding_registers(AFTER.address + 1, count=1, device_id=UNIT)
        assert answer.isError() and answer.exception_code == 2  # undefined address
    finally:
        client.close()


@pytest.mark.asyncio
async def test_frozen_device_times_out_and_health_degrades() -> None:
    handlers: list[asyncio.Task[None]] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.append(task)
        with contextlib.closing(writer):
            while await reader.read(1024):
                pass  # accepts every request, answers none

    frozen = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = int(frozen.sockets[0].getsockname()[1])
    config = ModbusTcpConfig("press", "127.0.0.1", port, UNIT, limits=LIMITS)
    driver = make_modbus_drivers([config])["press"]
    try:
        await driver.connect()
        await check_timeout(driver)
        assert driver.health.state is HealthState.DEGRADED
    finally:
        await driver.close()  # the handler sees EOF and ends
        frozen.close()
        await asyncio.wait_for(asyncio.gather(*handlers), 2.0)


@pytest.mark.asyncio
async def test_separately_made_drivers_do_not_share() -> None:
    press, feeder = press_image(), press_image("feeder")
    server = ModbusSimServer({UNIT: press, 2: feeder})
    await server.start()
    rig = Rig(server, press, UNIT)
    try:
        async with rig.driver() as first, rig.driver(name="feeder", unit=2) as second:
            assert first.bus is not second.bus  # separately made drivers: two connections
            await wait_until(lambda: server.connections == 2, 5.0, "two connections")
    finally:
        await server.stop()


@pytest.mark.asyncio
@TCP_ONLY
async def test_requests_given_up_keep_the_bus_until_their_answers(
    rig: TcpRig, proxied: tuple[FaultProxy, ModbusDriver]
) -> None:
    # A poll cut off by unsubscribe() and a read cancelled by its caller are still on the
    # wire: the next write must wait for them before its own timeout starts, and is then
    # confirmed (it used to fail while the device executed it).
    proxy, driver = proxied
    proxy.latency(0.3)  # each answer takes 0.3 s of the 0.5 s timeout
    unsubscribe = driver.subscribe([HR0], lambda _readings: None)
    await wait_until(lambda: driver.requests == 1, 5.0, "a poll on the wire")
    unsubscribe()
    reading = asyncio.create_task(driver.read([AFTER]))
    await wait_until(lambda: driver.requests == 2, 5.0, "the read on the wire")
    reading.cancel()
    await driver.write(HR0, 42)
    assert rig.image.get(HR0.name) == 42
    assert reading.cancelled()


@pytest.mark.asyncio
@TCP_ONLY
async def test_close_fails_requests_in_flight_with_not_connected(
    proxied: tuple[FaultProxy, ModbusDriver],
) -> None:
    proxy, driver = proxied
    proxy.latency(0.3)
    in_flight = asyncio.create_task(driver.read([HR0]))
    queued = asyncio.create_task(driver.read([AFTER]))
    await wait_until(lambda: driver.requests == 1, 5.0, "the first read on the wire")
    await driver.close()
    with pytest.raises(
        NotConnected, match=rf"^press \({driver.endpoint}\) read hr:0: driver closed$"
    ):
        await in_flight
    with pytest.raises(NotConnected, match=r"^press .* read hr:120: not connected$"):
        await queued


@pytest.mark.asyncio
@TCP_ONLY
async def test_a_raising_health_listener_does_not_stop_reconnecting(rig: TcpRig) -> None:
    def broken(_device: str, health: Health) -> None:
        raise RuntimeError(f"listener bug on {health.state.value}")

    async with rig.driver() as driver:
        driver.on_health(broken)
        await rig.server.stop()
        await wait_until(lambda: driver.health.state is HealthState.LOST, 5.0, "health LOST")
        await rig.server.start()
        await wait_until(lambda: driver.health.state is HealthState.CONNECTED, 3.0, "the reconnect")
        assert (await driver.read([AFTER]))[0].value == 4242


@pytest.mark.asyncio
async def test_undefined_bits_in_a_defined_word_answer_exception_2() -> None:
    # pymodbus keeps bits in 16-bit words; the simulator must still refuse every coil and
    # discrete input that no point defines, like a real device.
    coils = [
        ModbusPoint(f"c{a}", ModbusTable.COIL, a, DataType.BOOL, access=Access.RW)
        for a in (0, 1, 2, 9)
    ]
    inputs = [ModbusPoint("d7", ModbusTable.DISCRETE_INPUT, 7, DataType.BOOL)]
    image = ProcessImage("bits", [*coils, *inputs])
    image.set("d7", True)
    server = ModbusSimServer({UNIT: image})
    await server.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
    try:
        assert await client.connect()

        def refused(answer: ModbusPDU) -> bool:
            return bool(answer.isError()) and answer.exception_code == 2

        assert (await client.read_coils(0, count=3, device_id=UNIT)).bits[:3] == [False] * 3
        assert (await client.read_coils(9, count=1, device_id=UNIT)).bits[0] is False
        assert (await client.read_discrete_inputs(7, count=1, device_id=UNIT)).bits[0] is True
        for address, count in ((3, 1), (0, 4), (8, 2), (15, 1), (20, 1)):
            assert refused(await client.read_coils(address, count=count, device_id=UNIT))
        for address in (6, 8, 0):
            assert refused(await client.read_discrete_inputs(address, count=1, device_id=UNIT))
        assert refused(await client.write_coil(3, True, device_id=UNIT))
        assert refused(await client.write_coils(1, [True, True, True], device_id=UNIT))
        assert not (await client.write_coils(0, [True, True, True], device_id=UNIT)).isError()
        assert not (await client.write_coil(9, True, device_id=UNIT)).isError()
    finally:
        client.close()
        await server.stop()
    # Refused writes changed nothing; accepted ones reached the image.
    assert [image.get(p.name) for p in coils] == [True, True, True, True]


@pytest.mark.asyncio
@TCP_ONLY
async def test_answers_cut_in_pieces_still_decode(
    rig: TcpRig, proxied: tuple[FaultProxy, ModbusDriver]
) -> None:
    proxy, driver = proxied
    rig.image.set(FLOAT_CDAB.name, 12.5)
    await rig.server.publish(rig.image.device, rig.image.take_dirty())
    proxy.fragment(3)
    readings = await driver.read([FLOAT_CDAB, AFTER])
    assert [r.value for r in readings] == [12.5, 4242]
    assert all(r.quality is Quality.GOOD for r in readings)


@pytest.mark.asyncio
@TCP_ONLY
async def test_garbage_on_the_link_is_an_error_never_a_value(
    proxied: tuple[FaultProxy, ModbusDriver],
) -> None:
    proxy, driver = proxied
    proxy.garbage(True)
    with pytest.raises(DriverError) as caught:
        await driver.read([AFTER])
    assert "press" in str(caught.value)
    proxy.garbage(False)
    # The garbled connection may be dropped; the next reads find the device again.
    deadline = asyncio.get_running_loop().time() + 5.0
    while True:
        try:
            assert (await driver.read([AFTER]))[0].value == 4242
            break
        except DriverError:
            assert asyncio.get_running_loop().time() < deadline, "no recovery after garbage"
    assert driver.health.state is HealthState.CONNECTED


@pytest.mark.asyncio
@TCP_ONLY
async def test_a_dropped_link_is_lost_then_found_and_polling_resumes(
    rig: TcpRig, proxied: tuple[FaultProxy, ModbusDriver]
) -> None:
    proxy, driver = proxied
    states: list[HealthState] = []
    driver.on_health(lambda _device, health: states.append(health.state))
    seen: list[Value | None] = []
    unsubscribe = driver.subscribe([HR0], lambda r: seen.extend(x.value for x in r.values()))
    try:
        await wait_until(lambda: bool(seen), 5.0, "the first poll")
        proxy.drop()  # every open connection reset, as when a switch port flaps
        await wait_until(lambda: HealthState.LOST in states, 3.0, "health LOST")
        await wait_until(lambda: driver.health.state is HealthState.CONNECTED, 5.0, "reconnect")
        rig.image.set(HR0.name, 1234)
        await rig.server.publish(rig.image.device, rig.image.take_dirty())
        await wait_until(lambda: 1234 in seen, 5.0, "polling after the reconnect")
        # Each transition reported once: LOST once, then CONNECTED once.
        assert states.count(HealthState.LOST) == 1
        assert states[-1] is HealthState.CONNECTED
    finally:
        unsubscribe()


@pytest.mark.asyncio
async def test_a_model_bit_in_an_input_register_changes_only_that_bit() -> None:
    """Publishing ir:5.0 reads the input register it changes, not the holding register."""
    points = [
        ModbusPoint("a", ModbusTable.INPUT_REGISTER, 5, DataType.BOOL, bit=0),
        ModbusPoint("b", ModbusTable.INPUT_REGISTER, 5, DataType.BOOL, bit=1),
        ModbusPoint("h", ModbusTable.HOLDING_REGISTER, 5, DataType.UINT16),
    ]
    server = ModbusSimServer({1: ProcessImage("d", points)})
    await server.start()
    client = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=1, retries=0)
    try:
        await server.publish("d", {"h": 0xFF00, "b": True})
        await server.publish("d", {"a": True})
        assert await client.connect()
        answer = await client.read_input_registers(5, count=1, device_id=1)
        assert not answer.isError() and answer.registers == [0b11]
        held = await client.read_holding_registers(5, count=1, device_id=1)
        assert held.registers == [0xFF00]
    finally:
        client.close()
        await server.stop()


# -- RTU only -------------------------------------------------------------------------------


@pytest.mark.asyncio
@RTU_ONLY
async def test_a_plain_pymodbus_client_sees_what_the_driver_sees_on_a_serial_line(
    rig: RtuRig,
) -> None:
    async with rig.driver() as driver:
        await driver.write(FLOAT_CDAB, 41.5)
        await driver.write(BIT3, True)
        await driver.write(BIT15, True)
    client = AsyncModbusSerialClient(
        rig.server.client_path, framer=FramerType.RTU, timeout=1, retries=0
    )
    assert await client.connect()
    try:
        answer = await client.read_holding_registers(
            FLOAT_CDAB.address, count=2, device_id=RTU_UNIT
        )
        value = client.convert_from_registers(
            answer.registers, client.DATATYPE.FLOAT32, word_order="little"
        )
        assert value == 41.5
        answer = await client.read_holding_registers(BIT3.address, count=1, device_id=RTU_UNIT)
        assert answer.registers == [0x8008]
        answer = await client.read_discrete_inputs(DOOR_CLOSED.address, count=1, device_id=RTU_UNIT)
        assert answer.bits[0] is True
        words = client.convert_to_registers(-987654321, client.DATATYPE.INT32)
        assert not (
            await client.write_registers(INT32_ABCD.address, words, device_id=RTU_UNIT)
        ).isError()
        assert not (await client.write_coil(RUN.address, True, device_id=RTU_UNIT)).isError()
        answer = await client.read_holding_registers(AFTER.address + 1, count=1, device_id=RTU_UNIT)
        assert answer.isError() and answer.exception_code == 2  # undefined address
    finally:
        client.close()
    assert rig.image.get(INT32_ABCD.name) == -987654321
    async with rig.driver() as driver:
        assert [r.value for r in await driver.read([INT32_ABCD, RUN])] == [-987654321, True]


@pytest.mark.asyncio
@RTU_ONLY
async def test_frozen_line_times_out_and_health_recovers(rig: RtuRig) -> None:
    assert isinstance(rig.server, ModbusRtuSimServer)
    async with rig.driver() as driver:
        await check_silence_health(driver, rig.server.freeze)


@pytest.mark.asyncio
@RTU_ONLY
async def test_stop_removes_the_port_and_restart_restores_it(rig: RtuRig) -> None:
    first = tty_behind(rig.server.client_path)
    assert first is not None and first.startswith("/dev/pts/")
    await rig.server.stop()
    assert tty_behind(rig.server.client_path) is None
    await rig.server.start()
    again = tty_behind(rig.server.client_path)
    assert again is not None and again.startswith("/dev/pts/")
