"""A Modbus request that gets no answer, or whose connection dies under it, ends bounded with
the error that says so, and frees the bus (real pymodbus server behind the fault proxy).

The bus bounds every request: the tries share one budget of timeout × (retries + 1), and a
guard a little beyond it catches a hang; pymodbus's own errors map to DeviceTimeout (no answer)
and NotConnected (the connection lost and not back)."""

from __future__ import annotations

import asyncio
import time

import pytest

from cellctl.testing import wait_until
from drivers.base import HealthState
from drivers.errors import DeviceTimeout, NotConnected
from drivers.points import Access, ModbusPoint, ModbusTable
from hil_tests.support import with_room
from hil_tests.test_modbus_late import LIMITS, REGISTERS, Device, tcp_rig

#: How long the bus may take for one request at most: its budget and the guard's margin.
GUARDED = LIMITS.worst_case + 0.25
#: hr:0 as a writable point.
SETPOINT = ModbusPoint("setpoint", ModbusTable.HOLDING_REGISTER, 0, access=Access.RW)


@pytest.mark.asyncio
async def test_a_device_that_never_answers_times_out_bounded_and_frees_the_bus() -> None:
    async with tcp_rig(Device()) as rig:
        assert rig.proxy is not None
        driver, point = rig.driver, REGISTERS[0]
        prefix = f"press ({driver.endpoint}) "
        rig.proxy.freeze(True)  # requests are swallowed: the device never answers
        for what, request in (
            ("read hr:100", lambda: driver.read([point])),
            ("write hr:0", lambda: driver.write(SETPOINT, 7)),
        ):
            started = time.monotonic()
            with pytest.raises(DeviceTimeout) as caught:
                await request()
            took = time.monotonic() - started
            # Each request had the bus to itself (the one before freed it) and its whole budget.
            assert str(caught.value) == f"{prefix}{what}: no answer within 0.4 s"
            assert LIMITS.worst_case * 0.9 <= took <= with_room(GUARDED)
        assert driver.health.state is HealthState.DEGRADED
        rig.proxy.clear()
        assert [r.value for r in await driver.read(REGISTERS)] == [1000, 1001, 1002, 1003]
        assert driver.health.state is HealthState.CONNECTED


@pytest.mark.asyncio
async def test_a_connection_lost_under_a_request_is_not_connected_then_found_again() -> None:
    async with tcp_rig(Device()) as rig:
        proxy = rig.proxy
        assert proxy is not None
        driver = rig.driver
        proxy.freeze(True)
        sent = driver.requests
        reading = asyncio.ensure_future(driver.read([REGISTERS[1]]))
        try:
            await wait_until(lambda: driver.requests > sent, what="the request sent")
            # The link is cut under the request and nothing listens any more: the retry cannot
            # even be sent.
            await proxy.stop()
            started = time.monotonic()
            with pytest.raises(NotConnected) as caught:
                await reading
            assert time.monotonic() - started <= with_room(GUARDED)
        finally:
            reading.cancel()
        assert str(caught.value) == f"press ({driver.endpoint}) read hr:101: connection lost"
        await wait_until(lambda: driver.health.state is HealthState.LOST, 5.0, "health LOST")
        with pytest.raises(NotConnected, match=r"read hr:101: not connected$"):
            await driver.read([REGISTERS[1]])
        # The device is reachable again: the bus's own connect loop finds it.
        proxy.clear()
        await proxy.start()
        await wait_until(
            lambda: driver.health.state is HealthState.CONNECTED, 10.0, "the reconnect"
        )
        assert [r.value for r in await driver.read(REGISTERS[1:2])] == [1001]
