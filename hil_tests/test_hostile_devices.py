"""Modbus devices that misbehave, met by ModbusDriver as the controller uses it: a wrong
transaction id, unit, function code or byte count, an MBAP length of 0xFFFF, an answer after
the timeout, one byte at a time, a flood of unsolicited frames (a raw hostile server on
127.0.0.1, hil_tests/hostile_modbus.py; RTU on a pty line where that is cheap).

Each is survived: a named driver error (or, for a slow but valid answer, the right value),
never a wrong value and never a write taken as confirmed; within timeout × (retries + 1)
(+ the guard's margin, × 3 + 1 s for a loaded machine); no traceback in the log; bounded
memory; and the driver serves again, unrestarted, once the device behaves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from cellctl.control.controller import CommandBlocked
from cellctl.control.events import SafeStateWritten, StepStarted, TripCleared, Tripped
from cellctl.control.machine import Command, State
from cellctl.testing import controller_for, held_or_ended, wait_event, wait_until
from drivers.base import HealthState
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.errors import BadResponse, DeviceTimeout, DriverError, NotConnected
from drivers.modbus import ModbusDriver, make_modbus_drivers
from drivers.points import Access, DataType, ModbusPoint, ModbusTable
from drivers.sim.pty_bridge import PtyBridge
from hil_tests.hostile_modbus import (
    HostileDevice,
    HostileRtu,
    HostileTcp,
    Misbehaviour,
)
from hil_tests.support import with_room

UNIT = 1
TIMEOUT = 0.15
LIMITS = RequestLimits(timeout=TIMEOUT, retries=1)
#: How long one request may take: its tries' budget and the bus's guard margin, with room.
BOUND = with_room(LIMITS.worst_case + 0.25)
VALUE = 1000
#: A writable holding register that holds VALUE (every write here writes VALUE back).
POINT = ModbusPoint("speed", ModbusTable.HOLDING_REGISTER, 100, DataType.UINT16, access=Access.RW)
#: 11 bytes of answer to a read of POINT: 10 gaps between them.
GAPS = 10
MODULE = pytest.mark.asyncio(loop_scope="module")


@dataclass
class Rig:
    """A hostile device, the server it speaks through, and the driver connected to it."""

    device: HostileDevice
    driver: ModbusDriver
    server: HostileTcp | None = None

    @property
    def prefix(self) -> str:
        """How a request's error begins: the device and its endpoint."""
        return f"press ({self.driver.endpoint}) "

    async def behave(self) -> None:
        """Back to a well-behaved device, with nothing of the misbehaviour still on its way."""
        self.device.set(Misbehaviour.NONE)
        await wait_until(lambda: self.device.idle, 5.0, "the device's late answers sent")


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def tcp() -> AsyncIterator[Rig]:
    """One hostile TCP device for the module, its behaviour switched per test."""
    device = HostileDevice(UNIT, {100: VALUE})
    server = HostileTcp(device)
    await server.start()
    config = ModbusTcpConfig("press", "127.0.0.1", server.port, UNIT, limits=LIMITS)
    driver = make_modbus_drivers([config])["press"]
    try:
        await driver.connect()
        yield Rig(device, driver, server)
    finally:
        await driver.close()
        await server.stop()
    assert not device.errors


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def rtu() -> AsyncIterator[Rig]:
    """One hostile RTU device on a pty line for the module."""
    line = PtyBridge()
    line.start()
    device = HostileDevice(UNIT, {100: VALUE})
    server = HostileRtu(device, line.device_path)
    server.start()
    config = ModbusRtuConfig("press", line.client_path, UNIT, limits=LIMITS)
    driver = make_modbus_drivers([config])["press"]
    try:
        await driver.connect()
        yield Rig(device, driver)
    finally:
        await driver.close()
        await server.stop()
        line.stop()
    assert not device.errors


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records that carry a traceback (asyncio's 'Fatal error', an unhandled exception)."""
    return [r.getMessage() for r in caplog.records if r.exc_info or r.stack_info]


async def timed(request: Callable[[], Awaitable[object]]) -> tuple[object, float]:
    """What a request returned or raised, and how long it took."""
    started = time.monotonic()
    try:
        result: object = await request()
    except Exception as err:  # the test asserts on what it was
        result = err
    return result, time.monotonic() - started


@dataclass(frozen=True)
class Case:
    """A misbehaviour, the error it must give and what that error must say; and what a write
    must say when one is tried too (a write's wrong answer must never confirm it)."""

    behaviour: Misbehaviour
    error: type[DriverError]
    says: str
    write_says: str | None = None


NO_ANSWER = f"no answer within {LIMITS.worst_case:g} s"
MISMATCH = "the answer does not match the request: "
UNDECODABLE = MISMATCH + "an answer that cannot be decoded "
CASES = [
    Case(Misbehaviour.WRONG_TID, DeviceTimeout, NO_ANSWER, NO_ANSWER),
    Case(
        Misbehaviour.TID_ZERO,
        BadResponse,
        MISMATCH + "an answer to transaction 0",
        MISMATCH + "an answer to transaction 0",
    ),
    Case(Misbehaviour.WRONG_UNIT, DeviceTimeout, NO_ANSWER),
    Case(
        Misbehaviour.WRONG_FC,
        BadResponse,
        MISMATCH + "a function 4 answer to a function 3 request",
        MISMATCH + "a function 3 answer to a function 6 request",
    ),
    Case(Misbehaviour.UNKNOWN_FC, BadResponse, UNDECODABLE + "(function 65, 4 bytes)", UNDECODABLE),
    Case(Misbehaviour.COUNT_TOO_LONG, BadResponse, UNDECODABLE + "(function 3, 4 bytes)"),
    Case(Misbehaviour.COUNT_TOO_SHORT, BadResponse, MISMATCH + "0 registers, expected 1"),
    Case(Misbehaviour.LENGTH_FFFF, DeviceTimeout, NO_ANSWER),
    Case(Misbehaviour.LENGTH_FFFF_FULL, DeviceTimeout, NO_ANSWER),
    # The right answer, after both tries' timeouts.
    Case(Misbehaviour.LATE, DeviceTimeout, NO_ANSWER),
]


@MODULE
@pytest.mark.parametrize("case", CASES, ids=[c.behaviour.value for c in CASES])
async def test_a_hostile_answer_is_a_named_error_in_bounded_time_then_served_again(
    tcp: Rig, case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    assert tcp.server is not None
    driver, accepted = tcp.driver, tcp.server.accepted
    tcp.device.set(case.behaviour, delay=LIMITS.worst_case + 0.05)
    requests: list[tuple[str, str, Callable[[], Awaitable[object]]]] = []
    if case.write_says is not None:
        requests.append(("write hr:100", case.write_says, lambda: driver.write(POINT, VALUE)))
    requests.append(("read hr:100", case.says, lambda: driver.read([POINT])))
    for what, says, request in requests:
        result, took = await timed(request)
        # Never a value, never a confirmed write, never a pymodbus exception: our error.
        assert isinstance(result, case.error), f"{what}: {result!r}"
        message = str(result)
        assert message.startswith(f"{tcp.prefix}{what}: "), message
        assert says in message, message
        assert took <= BOUND, f"{what} took {took:.2f} s"
        assert driver.health.state is HealthState.DEGRADED
    # The connection survived (no reconnect), the log has no traceback.
    assert tcp.server.accepted == accepted
    assert not tracebacks(caplog)
    await tcp.behave()
    assert [r.value for r in await driver.read([POINT])] == [VALUE]
    assert driver.health.state is HealthState.CONNECTED


@MODULE
async def test_a_device_that_keeps_answering_wrongly_is_lost_then_found_unrestarted(
    tcp: Rig,
) -> None:
    driver = tcp.driver
    tcp.device.set(Misbehaviour.TID_ZERO)
    states = []
    for _ in range(3):  # LOST_AFTER_FAILURES in a row
        with pytest.raises(BadResponse):
            await driver.read([POINT])
        states.append(driver.health.state)
    assert states == [HealthState.DEGRADED, HealthState.DEGRADED, HealthState.LOST]
    assert "an answer to transaction 0" in (driver.health.last_error or "")
    await tcp.behave()
    assert [r.value for r in await driver.read([POINT])] == [VALUE]
    assert driver.health.state is HealthState.CONNECTED


@MODULE
@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_an_answer_one_byte_at_a_time_within_the_timeout_is_read(
    tcp: Rig, rtu: Rig, transport: str
) -> None:
    rig = tcp if transport == "tcp" else rtu
    # The answer's bytes come apart, the whole in a quarter of the timeout (room for the
    # sleeps of a loaded machine to overrun).
    rig.device.set(Misbehaviour.TRICKLE, delay=0.25 * TIMEOUT / GAPS)
    try:
        sent = rig.driver.requests
        assert [r.value for r in await rig.driver.read([POINT])] == [VALUE]
        assert rig.driver.requests == sent + 1  # the first try, not a retry
    finally:
        await rig.behave()


@MODULE
async def test_an_answer_one_byte_at_a_time_past_the_timeout_is_a_timeout(tcp: Rig) -> None:
    tcp.device.set(Misbehaviour.TRICKLE, delay=1.5 * TIMEOUT / GAPS)
    result, took = await timed(lambda: tcp.driver.read([POINT]))
    assert isinstance(result, DeviceTimeout), repr(result)
    assert str(result) == f"{tcp.prefix}read hr:100: {NO_ANSWER}"
    assert took <= BOUND
    await tcp.behave()
    assert [r.value for r in await tcp.driver.read([POINT])] == [VALUE]


@MODULE
async def test_rtu_answers_from_another_unit_are_a_timeout_not_a_value(rtu: Rig) -> None:
    rtu.device.set(Misbehaviour.WRONG_UNIT)
    result, took = await timed(lambda: rtu.driver.read([POINT]))
    assert isinstance(result, DeviceTimeout), repr(result)
    assert str(result).startswith(f"{rtu.prefix}read hr:100: no answer within"), str(result)
    assert took <= BOUND
    await rtu.behave()
    assert [r.value for r in await rtu.driver.read([POINT])] == [VALUE]


def rss() -> int:
    """This process's resident memory, in bytes."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def flood_until(rig: Rig, sent: int, within: float) -> list[object]:
    """Keep reading while the device floods, until it has sent `sent` more bytes of frames
    (AssertionError after `within` s); what each read gave: the values, or the class of a
    driver error (not the error: its traceback would hold memory)."""
    results: list[object] = []
    counters = rig.device.counters
    until = counters.flooded + sent // FRAME
    end = time.monotonic() + within
    while counters.flooded < until:
        assert time.monotonic() < end, f"the flood sent under {sent} bytes in {within} s"
        result, took = await timed(lambda: rig.driver.read([POINT]))
        assert took <= BOUND, f"a read during the flood took {took:.2f} s"
        if isinstance(result, NotConnected):
            # pymodbus dropped the connection (a run of requests without an answer): a read
            # fails at once until the bus's connect loop has it back, so wait for that.
            results.append(type(result))
            await wait_until(lambda: rig.driver.bus.connected, within, "the bus connected")
        elif isinstance(result, DriverError):
            results.append(type(result))
        elif isinstance(result, list):
            results.append([reading.value for reading in result])
        else:
            raise AssertionError(f"a read during the flood gave {result!r}")
    return results


#: The bytes of one flooded frame.
FRAME = 11
#: The longest log record a flood may cause.
LONGEST_LINE = 2000
#: What memory may grow by while a flood goes on after its warm-up.
RSS_TOLERANCE = 8 * 1024 * 1024


async def check_flood(rig: Rig, sent: int, within: float) -> None:
    """A flood of `sent` bytes of unsolicited frames after a warm-up: every read a named error
    or the right value, memory flat; served again after."""
    rig.device.set(Misbehaviour.FLOOD)
    try:
        await flood_until(rig, 1_000_000, within)  # warm-up: buffers and caches grow
        before = rss()
        results = await flood_until(rig, sent, within)
        grown = rss() - before
    finally:
        await rig.behave()
    wrong = [r for r in results if isinstance(r, list) and r != [VALUE]]
    assert not wrong, wrong[:3]
    assert grown <= RSS_TOLERANCE, f"memory grew by {grown / 1e6:.1f} MB over {sent / 1e6} MB"
    # pymodbus drops a connection after a run of requests without an answer: the bus's own
    # connect loop has it back (its backoff stays under a second here).
    await wait_until(lambda: rig.driver.bus.connected, 10.0, "the bus connected again")
    assert [r.value for r in await rig.driver.read([POINT])] == [VALUE]
    assert rig.driver.health.state is HealthState.CONNECTED


@MODULE
async def test_a_flood_of_unsolicited_frames_is_survived_in_bounded_memory(
    tcp: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    await check_flood(tcp, 2 * RSS_TOLERANCE // 8, within=10.0)
    assert not tracebacks(caplog)
    # No record carries the flood (pymodbus would append the last chunks received, in hex).
    longest = max((len(r.getMessage()) for r in caplog.records), default=0)
    assert longest <= LONGEST_LINE, f"a log record of {longest} characters"


@pytest.mark.extended
@MODULE
async def test_a_long_flood_is_survived_in_bounded_memory(tcp: Rig) -> None:
    # Eight times the tolerance in unsolicited bytes: a buffer that kept them would show.
    await check_flood(tcp, 8 * RSS_TOLERANCE, within=40.0)


# --- the controller ---------------------------------------------------------------------------

CELL = """\
cell: hostile
devices:
  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {plc}, unit: 1, poll: 20ms, timeout: 150ms,
         retries: 1}}
  press: {{driver: modbus-tcp, host: 127.0.0.1, port: {press}, unit: 1, poll: 20ms,
           timeout: 150ms, retries: 1}}
tags:
  plc.run:     {{device: plc, address: "coil:0", access: rw}}
  press.speed: {{device: press, address: "hr:100", type: uint16, access: rw}}
safe_state: {{plc.run: false, press.speed: 0}}
"""
RECIPE = """\
recipe: dwell
version: 1
steps:
  - {id: start, set: {plc.run: true, press.speed: 300}}
  - {id: dwell, delay: 10s}
  - {id: stop, set: {plc.run: false}}
"""


@pytest.mark.asyncio
async def test_a_device_answering_wrongly_holds_the_batch_and_the_controller_still_serves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Answers under transaction id 0 carry a wrong value: taken, they would read as a device
    # that answers; refused, the device is lost: a comm-loss trip, Held, the safe state written
    # to the good device, and the controller answering commands all along.
    plc, press = HostileDevice(1, {}), HostileDevice(1, {100: 0})
    servers = [HostileTcp(plc), HostileTcp(press)]
    for server in servers:
        await server.start()
    try:
        cell = tmp_path / "cell.yaml"
        cell.write_text(CELL.format(plc=servers[0].port, press=servers[1].port))
        recipe = tmp_path / "dwell.yaml"
        recipe.write_text(RECIPE)
        async with controller_for(cell, recipe) as run:
            dwelling = False

            def misbehave(event: object) -> None:
                nonlocal dwelling
                if isinstance(event, StepStarted) and event.step_id == "dwell":
                    dwelling = True
                    press.set(Misbehaviour.TID_ZERO)

            run.controller.listeners.append(misbehave)
            task = asyncio.ensure_future(run.run_batch())
            try:
                assert await held_or_ended(run, 10.0) is State.HELD, run.events
                assert dwelling
                assert [t.interlock for t in run.of(Tripped)] == ["comm-loss:press"]
                assert plc.coils.get(0) is False, "the safe state is not on the good device"
                held = [e for e in run.of(SafeStateWritten) if "Holding" in e.reason]
                assert held, run.events
                failed = {w.tag for w in held[-1].results if w.error}
                assert failed == {"press.speed"}, held[-1]
                with pytest.raises(CommandBlocked, match="comm-loss:press"):
                    await run.controller.command(Command.UNHOLD)
                press.set(Misbehaviour.NONE)
                await wait_event(
                    run,
                    lambda e: isinstance(e, TripCleared) and e.interlock == "comm-loss:press",
                    5.0,
                    "the trip to clear once the press answers right",
                )
                await run.controller.command(Command.STOP, cause="test: done")
                async with asyncio.timeout(10.0):
                    ended = await task
            finally:
                task.cancel()
        assert ended.state is State.STOPPED, ended
        assert press.registers[100] == 0, "the safe state reached the press once it answered"
    finally:
        for server in servers:
            await server.stop()
    assert not tracebacks(caplog)
