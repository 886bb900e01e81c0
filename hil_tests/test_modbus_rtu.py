"""Modbus RTU: the real driver (pymodbus serial client, pyserial) against the simulator on a pty."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerType

from drivers.base import Value
from drivers.modbus import ModbusDriver
from drivers.points import ModbusPoint
from drivers.sim.modbus_server import ModbusRtuSimServer
from hil_tests.modbus_fixtures import (
    AFTER,
    BIT3,
    BIT15,
    DOOR_CLOSED,
    FLOAT_CDAB,
    INT32_ABCD,
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
    check_two_units_share_a_bus,
    check_unknown_unit,
    check_unsubscribe,
    check_write_rejected,
    press_image,
    press_rig,
)
from hil_tests.test_modbus_tcp import EXCEPTIONS

UNIT = 2
MODULE = pytest.mark.asyncio(loop_scope="module")
RtuRig = Rig[ModbusRtuSimServer]
Shared = tuple[RtuRig, ModbusDriver]


def tty_behind(path: str) -> str | None:
    """The pty a serial port path leads to, or None when the path does not exist."""
    return os.path.realpath(path) if os.path.lexists(path) else None


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def shared() -> AsyncIterator[Shared]:
    """One simulator and one connected driver for the tests that only read and write."""
    async with press_rig(ModbusRtuSimServer, UNIT).running() as rig, rig.driver() as driver:
        yield rig, driver


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[RtuRig]:
    """A fresh running simulator, for tests that inject faults, freeze or stop it."""
    async with press_rig(ModbusRtuSimServer, UNIT).running() as served:
        yield served


@pytest_asyncio.fixture
async def stopped_rig() -> AsyncIterator[RtuRig]:
    """A simulator whose serial port path is known but does not exist yet."""
    image = press_image()
    rig = Rig(ModbusRtuSimServer({UNIT: image}), image, UNIT)
    assert tty_behind(rig.server.endpoint) is None
    try:
        yield rig
    finally:
        await rig.server.stop()


@MODULE
@pytest.mark.parametrize(("point", "value"), ROUNDTRIP, ids=[p.name for p, _ in ROUNDTRIP])
async def test_every_type_and_word_order_round_trips(
    shared: Shared, point: ModbusPoint, value: Value
) -> None:
    await check_roundtrip(*shared, point, value)


@MODULE
async def test_discrete_and_input_registers_carry_model_values(
    shared: Shared,
) -> None:
    await check_inputs(*shared)


@MODULE
async def test_reads_are_batched_by_max_gap(shared: Shared) -> None:
    rig, driver = shared
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
async def test_a_plain_pymodbus_client_sees_what_the_driver_sees(rig: RtuRig) -> None:
    async with rig.driver() as driver:
        await driver.write(FLOAT_CDAB, 41.5)
        await driver.write(BIT3, True)
        await driver.write(BIT15, True)
    client = AsyncModbusSerialClient(
        rig.server.client_path, framer=FramerType.RTU, timeout=1, retries=0
    )
    assert await client.connect()
    try:
        answer = await client.read_holding_registers(FLOAT_CDAB.address, count=2, device_id=UNIT)
        value = client.convert_from_registers(
            answer.registers, client.DATATYPE.FLOAT32, word_order="little"
        )
        assert value == 41.5
        answer = await client.read_holding_registers(BIT3.address, count=1, device_id=UNIT)
        assert answer.registers == [0x8008]
        answer = await client.read_discrete_inputs(DOOR_CLOSED.address, count=1, device_id=UNIT)
        assert answer.bits[0] is True
        words = client.convert_to_registers(-987654321, client.DATATYPE.INT32)
        assert not (
            await client.write_registers(INT32_ABCD.address, words, device_id=UNIT)
        ).isError()
        assert not (await client.write_coil(RUN.address, True, device_id=UNIT)).isError()
        answer = await client.read_holding_registers(AFTER.address + 1, count=1, device_id=UNIT)
        assert answer.isError() and answer.exception_code == 2  # undefined address
    finally:
        client.close()
    assert rig.image.get(INT32_ABCD.name) == -987654321
    async with rig.driver() as driver:
        assert [r.value for r in await driver.read([INT32_ABCD, RUN])] == [-987654321, True]


@pytest.mark.asyncio
async def test_subscription_sees_a_model_change_within_two_polls(rig: RtuRig) -> None:
    async with rig.driver() as driver:
        await check_subscription(rig, driver)


@pytest.mark.asyncio
async def test_unsubscribe_stops_polling(rig: RtuRig) -> None:
    async with rig.driver() as driver:
        await check_unsubscribe(rig, driver)


@pytest.mark.asyncio
@pytest.mark.parametrize(("code", "text"), EXCEPTIONS)
async def test_exception_answers_are_named(rig: RtuRig, code: int, text: str) -> None:
    async with rig.driver() as driver:
        await check_exception_codes(rig, driver, code, text)


@pytest.mark.asyncio
async def test_exception_on_one_table_only(rig: RtuRig) -> None:
    async with rig.driver() as driver:
        await check_table_exception(rig, driver)


@pytest.mark.asyncio
async def test_device_down_at_first_connect_is_reached_when_it_comes_up(
    stopped_rig: RtuRig,
) -> None:
    await check_down_at_first_connect(stopped_rig)


@pytest.mark.asyncio
async def test_connect_fails_in_time_then_keeps_trying(stopped_rig: RtuRig) -> None:
    await check_connect_fails_then_keeps_trying(stopped_rig)


@pytest.mark.asyncio
async def test_killed_and_restarted_device(rig: RtuRig) -> None:
    path = rig.server.client_path
    async with rig.driver() as driver:
        await check_kill_and_restart(rig, driver)
    assert rig.server.client_path == path


@pytest.mark.asyncio
async def test_frozen_line_times_out_and_health_recovers(rig: RtuRig) -> None:
    assert isinstance(rig.server, ModbusRtuSimServer)
    async with rig.driver() as driver:
        await check_silence_health(driver, rig.server.freeze)


@pytest.mark.asyncio
async def test_requests_queued_on_a_frozen_line_are_each_bounded(rig: RtuRig) -> None:
    assert isinstance(rig.server, ModbusRtuSimServer)
    async with rig.driver(limits=QUEUE_LIMITS) as driver:
        await check_queue_is_bounded(driver, rig.server.freeze)


@pytest.mark.asyncio
async def test_unknown_unit_is_silent(rig: RtuRig, caplog: pytest.LogCaptureFixture) -> None:
    await check_unknown_unit(rig, caplog)


@pytest.mark.asyncio
async def test_two_units_share_the_line() -> None:
    press, feeder = press_image(), press_image("feeder")
    server = ModbusRtuSimServer({UNIT: press, 7: feeder})
    await server.start()
    try:
        await check_two_units_share_a_bus(Rig(server, press, UNIT), feeder, 7)
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_stop_removes_the_port_and_restart_restores_it(rig: RtuRig) -> None:
    first = tty_behind(rig.server.client_path)
    assert first is not None and first.startswith("/dev/pts/")
    await rig.server.stop()
    assert tty_behind(rig.server.client_path) is None
    await rig.server.start()
    again = tty_behind(rig.server.client_path)
    assert again is not None and again.startswith("/dev/pts/")
