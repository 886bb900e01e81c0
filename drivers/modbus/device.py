"""One Modbus device on a shared bus: its requests (batched reads, confirmed writes) and health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any, TypeVar

from pymodbus.client import ModbusBaseClient
from pymodbus.pdu import ModbusPDU

from drivers.base import ConnectProgress, HealthState, Quality, Reading, Value
from drivers.batching import ReadBlock, ReadPlan, plan
from drivers.codecs import check_value, encode_registers, set_bit
from drivers.errors import (
    BadResponse,
    ConnectFailed,
    DriverError,
    ModbusExceptionResponse,
    NotConnected,
    NotSupported,
    PointMismatch,
    WriteRejected,
    modbus_exception_text,
)
from drivers.health import HealthTracker, TracksHealth
from drivers.modbus.ask import READ_FC, Ask
from drivers.modbus.bus import AnyModbusConfig, Job, ModbusBus
from drivers.modbus.subscription import Subscription
from drivers.points import Access, DataType, MethodSpec, ModbusPoint, ModbusTable, Point
from drivers.tasks import cancel_and_wait

T = TypeVar("T")

# A device whose connection is up but whose requests failed this many times in a row is LOST.
LOST_AFTER_FAILURES = 3


class ModbusDevice(TracksHealth):
    """One Modbus device (a unit id) on a shared bus: batched reads, confirmed writes, health.

    It holds the subscriptions that ModbusDriver polls: a fresh read and a reconnect tell them.
    """

    def __init__(self, config: AnyModbusConfig, bus: ModbusBus) -> None:
        self.name = config.name
        self.config = config
        self.bus = bus
        #: Requests this device has sent: every try of a read block, a write, or either half
        #: of a read-modify-write.
        self.requests = 0
        self._tracker = HealthTracker(config.name)
        self._failures = 0
        #: Why the last poll cycle raised (a bug, a codec error); the device is LOST meanwhile.
        self._poll_error: str | None = None
        self._attached = False
        self._subscriptions: list[Subscription] = []
        self._poller: asyncio.Task[None] | None = None
        #: The read plan of every subscribed point: planned when subscriptions change, not on
        #: every poll.
        self._poll_plan: ReadPlan | None = None
        self._retired: set[asyncio.Task[None]] = set()
        #: The number of the latest poll cycle to start: orders fresh reads against cycles.
        self._cycle = 0

    @property
    def endpoint(self) -> str:
        """Where the device is, as shown in messages: 'host:port unit N' or 'port unit N'."""
        return self.config.endpoint

    async def connect(self, progress: ConnectProgress | None = None) -> None:
        """Connect the bus within limits.worst_case (with backoff); raises ConnectFailed.
        `progress` hears of each try as it starts."""
        if not self._attached:
            self.bus.attach(self._bus_changed)
            self._attached = True
        try:
            await self.bus.connect(
                self.config.limits.worst_case,
                device=self.name,
                endpoint=self.endpoint,
                progress=progress,
            )
        except ConnectFailed as err:
            self._tracker.set(HealthState.LOST, str(err))
            raise
        self._update_health()

    async def close(self) -> None:
        """Stop polling, leave the bus (closing it if this was its last device)."""
        self._subscriptions.clear()
        tasks = [t for t in (self._poller, *self._retired) if t is not None]
        self._poller = None
        await cancel_and_wait(tasks)
        if self._attached:
            self._attached = False
            await self.bus.detach(self._bus_changed)
        self._tracker.set(HealthState.DISCONNECTED)

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """Read points in one request per block; exception answers give BAD readings."""
        modbus_points = [self._modbus_point(p) for p in points]
        read_plan = self._plan(modbus_points)
        readings: dict[ModbusPoint, Reading] = {}
        for block in read_plan.blocks:
            readings.update(zip(block.points, await self._read_block(block), strict=True))
        for subscription in self._subscriptions:
            subscription.heard_fresh(readings, self._cycle)
        return [readings[p] for p in modbus_points]

    async def write(self, point: Point, value: Value) -> None:
        """Write one value and wait for the device's confirmation (fc 5, 6 or 16)."""
        p = self._modbus_point(point)
        if not p.table.writable:
            raise WriteRejected(f"{self._where(p)}: {p.name} is in a read-only table")
        if p.access is not Access.RW:
            raise WriteRejected(f"{self._where(p)}: {p.name} is read-only")
        try:
            if p.table is ModbusTable.COIL or p.bit is not None:
                flag = bool(check_value(DataType.BOOL, value))
                if p.table is ModbusTable.COIL:
                    await self._write(p, Ask(5, p.address, values=(int(flag),)))
                else:
                    await self._write_bit(p, flag)
                return
            words = encode_registers(p.datatype, value, p.word_order, p.length)
        except WriteRejected as err:
            raise WriteRejected(f"{self._where(p)}: {err}") from err
        # Absolute values: sending one again after a lost answer changes nothing, so retried.
        if len(words) == 1:
            await self._write(p, Ask(6, p.address, values=(words[0],)))
        else:
            await self._write(p, Ask(16, p.address, len(words), tuple(words)))

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Modbus has no methods: always NotSupported."""
        raise NotSupported(f"{self.name}: Modbus devices have no methods (called {method.name})")

    # -- internals --

    def _modbus_point(self, point: Point) -> ModbusPoint:
        if not isinstance(point, ModbusPoint):
            raise PointMismatch(
                f"{self.name}: {point.name} ({point.describe()}) is not a Modbus point"
            )
        return point

    def _plan(self, points: Sequence[ModbusPoint]) -> ReadPlan:
        try:
            return plan(points, self.config.max_gap)
        except ValueError as err:
            raise PointMismatch(f"{self.name}: {err}") from err

    def _where(self, p: ModbusPoint) -> str:
        # Made only for a rejection's message, not on every write.
        return f"{self.name} {p.describe()}"

    def _what(self, action: str) -> str:
        return f"{self.name} ({self.endpoint}) {action}"

    async def _send(self, action: str, call: Job[T], *, steps: int = 1) -> T:
        """Run a job of `steps` requests alone on the bus (retried), tracking health."""
        sent = False

        async def job(client: ModbusBaseClient) -> T:
            nonlocal sent
            sent = True
            return await call(client)

        try:
            response = await self.bus.request(self._what(action), job, steps=steps)
        except DriverError as err:
            # Unsent (bus busy) or cut off by a lost connection says nothing about the device.
            if sent and self.bus.connected and not isinstance(err, NotConnected):
                self._failures += 1
            self._update_health(str(err))
            raise
        # Any answer, an exception answer too, shows the device is talking to us.
        self._failures = 0
        self._update_health()
        return response

    async def _exchange(self, client: ModbusBaseClient, ask: Ask) -> ModbusPDU:
        """One request of a job, counted in `requests`."""
        self.requests += 1
        return await self.bus.exchange(client, ask, self.config.unit)

    def _job(self, ask: Ask) -> Job[ModbusPDU]:
        """A job of one request."""

        async def job(client: ModbusBaseClient) -> ModbusPDU:
            return await self._exchange(client, ask)

        return job

    async def _read_block(self, block: ReadBlock) -> list[Reading]:
        """The block's readings, in the order of its points."""
        last = block.end - 1
        span = f"{block.table.value}:{block.start}" + (f"..{last}" if last > block.start else "")
        ask = Ask(READ_FC[block.table], block.start, block.count)
        response = await self._send(f"read {span}", self._job(ask))
        now = time.time()
        if response.isError():
            text = modbus_exception_text(response.exception_code)
            return [
                Reading(None, now, Quality.BAD, f"{self.name} {p.describe()}: {text}")
                for p in block.points
            ]
        data: Sequence[int] | Sequence[bool] = (
            response.bits if block.table.is_bit_table else response.registers
        )
        return [
            Reading(None, now, Quality.BAD, f"{self.name} {value}")
            if isinstance(value, BadResponse)
            else Reading(value, now)
            for value in block.decode(data)
        ]

    def _check_answer(self, p: ModbusPoint, response: ModbusPDU) -> None:
        if response.isError():
            code = int(response.exception_code)
            raise ModbusExceptionResponse(
                f"{self.name} {p.describe()}: {modbus_exception_text(code)}", code
            )

    async def _write(self, p: ModbusPoint, ask: Ask) -> None:
        self._check_answer(p, await self._send(f"write {p.describe()}", self._job(ask)))

    async def _write_bit(self, p: ModbusPoint, flag: bool) -> None:
        """Set one bit of a holding register by read-modify-write, alone on the bus.

        Nothing of ours runs on the bus between the read and the write, but this is not
        atomic on the device: another master, or the device itself, may change the register
        in between, and that change is then overwritten.
        A try whose read or write gets no answer is retried whole, from a fresh read: resending
        the write alone could put back a word that the device has changed meanwhile.
        """
        assert p.bit is not None
        bit = p.bit

        async def read_modify_write(client: ModbusBaseClient) -> ModbusPDU:
            response = await self._exchange(client, Ask(3, p.address))
            if response.isError():
                return response
            word = set_bit(response.registers[0], bit, flag)
            return await self._exchange(client, Ask(6, p.address, values=(word,)))

        response = await self._send(f"write {p.describe()}", read_modify_write, steps=2)
        self._check_answer(p, response)

    def _update_health(self, error: str | None = None) -> None:
        """CONNECTED, DEGRADED or LOST from the connection, consecutive failures and polling."""
        if not self.bus.connected or self._failures >= LOST_AFTER_FAILURES:
            state = HealthState.LOST
        elif self._poll_error is not None:
            state, error = HealthState.LOST, error or self._poll_error
        elif self._failures == 0:
            state = HealthState.CONNECTED
        elif self.health.state is HealthState.LOST:
            state = HealthState.LOST  # the way out of LOST is a request that succeeds
        else:
            state = HealthState.DEGRADED
        self._tracker.set(state, error)

    def _bus_changed(self, up: bool, error: str | None) -> None:
        if up:
            # After a reconnect every subscriber hears every value again.
            for subscription in self._subscriptions:
                subscription.forget()
            self._update_health()
        else:
            self._tracker.set(HealthState.LOST, f"{self.name} ({self.endpoint}): {error}")
