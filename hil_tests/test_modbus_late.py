"""Late and mismatched Modbus answers: a retry is a fresh request, and no answer is ever taken
for another request's (real pymodbus servers, TCP through the fault proxy, RTU on a pty line)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersResponse
from pymodbus.server import ModbusBaseServer, ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimData, SimDevice

from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.errors import BadResponse, DeviceTimeout
from drivers.modbus import ModbusDriver, make_modbus_drivers
from drivers.points import DataType, ModbusPoint, ModbusTable
from drivers.sim.faultproxy import FaultProxy
from drivers.sim.pty_bridge import PtyBridge

UNIT = 1
TIMEOUT = 0.2
LIMITS = RequestLimits(timeout=TIMEOUT, retries=1)
HR = ModbusTable.HOLDING_REGISTER
#: hr:0 of the TCP device counts its answers: the value read tells which answer it was.
COUNTER = ModbusPoint("counter", HR, 0, DataType.UINT16)
#: hr:100.. hold 1000.., so an answer taken for another register's request shows.
REGISTERS = [ModbusPoint(f"r{i}", HR, 100 + i, DataType.UINT16) for i in range(4)]
BLOCK = [ModbusPoint(f"b{i}", HR, 110 + i, DataType.UINT16) for i in range(3)]
INPUT = ModbusPoint("part_present", ModbusTable.DISCRETE_INPUT, 0, DataType.BOOL)


@dataclass
class Device:
    """What the server side saw and did: the requests (transaction id, function code)."""

    requests: list[tuple[int, int]] = field(default_factory=list)
    answers: int = 0
    #: Rewrites each answer before it is sent (a device that answers something else).
    rewrite: Callable[[ModbusPDU, int], ModbusPDU] | None = None

    def trace(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        """pymodbus's trace_pdu hook: record requests, number and rewrite answers."""
        if not sending:
            self.requests.append((pdu.transaction_id, pdu.function_code))
            return pdu
        self.answers += 1
        return self.rewrite(pdu, self.answers) if self.rewrite is not None else pdu


def _sim_device() -> SimDevice:
    # Separate tables (a 4-tuple): coils, discrete inputs, holding and input registers.
    bits = [SimData(0, values=[True] + [False] * 15, datatype=SimType.BITS)]
    registers = [
        SimData(0, values=[0], datatype=SimType.REGISTERS),
        SimData(100, values=[1000 + i for i in range(4)], datatype=SimType.REGISTERS),
        SimData(110, values=[1100 + i for i in range(3)], datatype=SimType.REGISTERS),
    ]
    return SimDevice(id=UNIT, simdata=(bits, bits, registers, registers))


def count_answers(pdu: ModbusPDU, number: int) -> ModbusPDU:
    """Every register answer carries its own number: answer 1 reads 1, answer 2 reads 2."""
    if pdu.function_code == 3:
        pdu.registers = [number] * len(pdu.registers)
    return pdu


def answer_otherwise(pdu: ModbusPDU, _number: int) -> ModbusPDU:
    """A discrete-input read gets a register answer; a register read gets one register."""
    if pdu.function_code == 2:
        return ReadHoldingRegistersResponse(
            registers=[7, 7], dev_id=pdu.dev_id, transaction_id=pdu.transaction_id
        )
    if pdu.function_code == 3:
        pdu.registers = list(pdu.registers)[:1]
    return pdu


@dataclass
class Rig:
    """A driver and the pymodbus server it talks to, with the link in between."""

    driver: ModbusDriver
    device: Device
    proxy: FaultProxy | None = None
    line: PtyBridge | None = None


async def _stop(server: ModbusBaseServer) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]


@asynccontextmanager
async def tcp_rig(device: Device) -> AsyncIterator[Rig]:
    """A pymodbus TCP server behind a fault proxy, and a connected driver."""
    server = ModbusTcpServer([_sim_device()], address=("127.0.0.1", 0), trace_pdu=device.trace)
    await server.serve_forever(background=True)
    try:
        sockets = getattr(server.transport, "sockets", None) or []
        port = int(sockets[0].getsockname()[1])
        proxy = FaultProxy("127.0.0.1", port)
        await proxy.start()
        try:
            config = ModbusTcpConfig("press", "127.0.0.1", proxy.port, UNIT, limits=LIMITS)
            driver = make_modbus_drivers([config])["press"]
            try:
                await driver.connect()
                yield Rig(driver, device, proxy=proxy)
            finally:
                await driver.close()
        finally:
            await proxy.stop()
    finally:
        await _stop(server)


@asynccontextmanager
async def rtu_rig(device: Device, limits: RequestLimits = LIMITS) -> AsyncIterator[Rig]:
    """A pymodbus RTU server on one end of a pty line, and a connected driver on the other."""
    line = PtyBridge()
    line.start()
    try:
        server = ModbusSerialServer(
            [_sim_device()],
            framer=FramerType.RTU,
            port=line.device_path,
            baudrate=19200,
            trace_pdu=device.trace,
        )
        await server.serve_forever(background=True)
        try:
            config = ModbusRtuConfig("press", line.client_path, UNIT, limits=limits)
            driver = make_modbus_drivers([config])["press"]
            try:
                await driver.connect()
                yield Rig(driver, device, line=line)
            finally:
                await driver.close()
        finally:
            await _stop(server)
    finally:
        line.stop()


@pytest.mark.asyncio
async def test_a_retry_is_a_fresh_request_and_takes_its_own_answer() -> None:
    # The first answer comes after the timeout, while the retry waits: with the retry's
    # transaction id the late answer is skipped, and the read returns the answer to the retry.
    async with tcp_rig(Device(rewrite=count_answers)) as rig:
        assert rig.proxy is not None
        rig.proxy.hold_next(TIMEOUT + 0.02)  # late for try 1; the retry keeps 0.18 s to spare
        sent = rig.driver.requests
        (reading,) = await rig.driver.read([COUNTER])
        assert reading.value == 2, "the late answer to the first try was taken for the retry"
        assert rig.driver.requests - sent == 2
        (first_tid, _), (retry_tid, _) = rig.device.requests[-2:]
        assert retry_tid != first_tid
        # Every later read gets its own answer.
        rig.device.rewrite = None
        assert [r.value for r in await rig.driver.read(REGISTERS)] == [1000, 1001, 1002, 1003]


@pytest.mark.asyncio
async def test_rtu_late_answers_never_become_another_requests_value() -> None:
    # Every answer arrives 10 ms after the timeout: inside the turnaround the driver waits
    # after a timeout, so each is drained, never taken as the answer to the next request
    # (on RTU nothing but the unit tells answers apart). Without retries, the request right
    # after a timeout is the one a late answer would hit.
    async with rtu_rig(Device(), RequestLimits(timeout=TIMEOUT, retries=0)) as rig:
        assert rig.line is not None
        rig.line.latency(TIMEOUT + 0.01)
        for point in REGISTERS[:3]:
            try:
                (reading,) = await rig.driver.read([point])
            except DeviceTimeout:
                continue
            assert reading.value == 1000 + point.address - 100, f"{point.name} got another value"
        rig.line.latency(0)
        # The answers still on their way are drained: each read gets its own value at once.
        for point in reversed(REGISTERS):
            assert (await rig.driver.read([point]))[0].value == 1000 + point.address - 100


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_an_answer_that_does_not_match_its_request_is_a_failure(transport: str) -> None:
    # A register answer to a discrete-input read, and 1 register for 3: a failed request
    # naming device and address, never a value or a half-decoded block.
    rig_for = tcp_rig if transport == "tcp" else rtu_rig
    async with rig_for(Device(rewrite=answer_otherwise)) as rig:
        driver = rig.driver
        with pytest.raises(BadResponse) as caught:
            await driver.read([INPUT])
        message = str(caught.value)
        assert message.startswith(f"press ({driver.endpoint}) read di:0: ")
        assert "function 3" in message and "function 2" in message
        with pytest.raises(BadResponse) as caught:
            await driver.read(BLOCK)
        message = str(caught.value)
        assert message.startswith(f"press ({driver.endpoint}) read hr:110..112: ")
        assert "1 register, expected 3" in message
        rig.device.rewrite = None
        assert [r.value for r in await driver.read(BLOCK)] == [1100, 1101, 1102]


@pytest.mark.asyncio
async def test_the_quiet_after_a_late_answer_does_not_shorten_the_next_request() -> None:
    # After a late answer the line must be quiet before the next request: that wait is the
    # bus's, not the next request's. A device that then answers within its timeout is read.
    async with rtu_rig(Device(), RequestLimits(timeout=TIMEOUT, retries=0)) as rig:
        assert rig.line is not None
        rig.line.latency(TIMEOUT + 0.01)
        with pytest.raises(DeviceTimeout):
            await rig.driver.read([REGISTERS[0]])
        rig.line.latency(TIMEOUT * 0.8)  # slow, but within the timeout
        assert (await rig.driver.read([REGISTERS[1]]))[0].value == 1001
