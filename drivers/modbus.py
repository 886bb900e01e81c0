"""Modbus TCP and RTU driver: a client per bus, batched reads, confirmed writes, polling."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.base import (
    HealthState,
    Quality,
    Reading,
    ReadingsCallback,
    Unsubscribe,
    Value,
)
from drivers.batching import ReadBlock, decode_point, plan_reads
from drivers.codecs import check_value, encode_registers, same_value, set_bit
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.errors import (
    BadResponse,
    ConnectFailed,
    DeviceTimeout,
    DriverError,
    ModbusExceptionResponse,
    NotConnected,
    NotSupported,
    PointMismatch,
    WriteRejected,
    modbus_exception_text,
)
from drivers.health import Backoff, HealthTracker, TracksHealth, connect_with_backoff
from drivers.points import Access, DataType, MethodSpec, ModbusPoint, ModbusTable, Point

log = logging.getLogger("drivers.modbus")

#: The config of one Modbus device, TCP or RTU.
ModbusConfig = ModbusTcpConfig | ModbusRtuConfig
#: Told (connected, error) when the bus connects, loses its connection or fails to connect.
BusListener = Callable[[bool, str | None], None]
#: One pymodbus request, made on the bus's client when the bus sends it.
Request = Callable[[ModbusBaseClient], Awaitable[ModbusPDU]]
T = TypeVar("T")
#: What runs alone on the bus: one request, or a read-modify-write.
Job = Callable[[ModbusBaseClient], Coroutine[Any, Any, T]]

# A device whose connection is up but whose requests failed this many times in a row is LOST.
LOST_AFTER_FAILURES = 3
# pymodbus itself gives up after timeout × (retries + 1); this guard only catches a hang.
_GUARD_MARGIN = 0.25
# A request waits for the bus as long as one request ahead of it may take, plus this slack.
_WAIT_MARGIN = 0.25


class ModbusBus:
    """One pymodbus client shared by every unit on one TCP gateway or one serial line.

    Requests are serialised (one at a time on the wire, as RS-485 requires); a request is
    bounded even behind others on a busy bus (see request()). The bus runs its
    own connect loop with exponential backoff and jitter, from the first connect() until
    close(): it keeps trying after a failed first connect and reconnects after a lost
    connection (pymodbus's own reconnect is disabled: it has no jitter and never retries a
    failed first connect).
    """

    def __init__(self, config: ModbusConfig, limits: RequestLimits | None = None) -> None:
        self.key = config.bus_key
        self.endpoint = (
            f"{config.host}:{config.port}" if isinstance(config, ModbusTcpConfig) else config.port
        )
        self.limits = limits or config.limits
        self._config = config
        self._client: ModbusBaseClient | None = None
        #: Held while a job is on the wire: one request, or both halves of a read-modify-write.
        self.lock = asyncio.Lock()
        self._listeners: list[BusListener] = []
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        #: Why the last connect attempt failed or the connection dropped.
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """True while the client holds an open connection (TCP) or an open port (RTU)."""
        return self._client is not None and self._client.connected and self._up.is_set()

    def attach(self, listener: BusListener) -> None:
        """Register a device that uses the bus; it hears of connects and losses."""
        if listener not in self._listeners:
            self._listeners.append(listener)

    async def detach(self, listener: BusListener) -> None:
        """Unregister a device; the last one to leave closes the bus."""
        if listener in self._listeners:
            self._listeners.remove(listener)
        if not self._listeners:
            await self.close()

    async def connect(self, deadline: float, *, device: str, endpoint: str) -> None:
        """Start the connect loop if needed and wait up to `deadline` s; else ConnectFailed.

        The loop keeps trying in the background after ConnectFailed, until close().
        """
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.get_running_loop().create_task(
                self._supervise(), name=f"modbus connect {self.key}"
            )
        try:
            await asyncio.wait_for(self._up.wait(), deadline)
        except TimeoutError as err:
            raise ConnectFailed(
                f"{device}: cannot connect to {endpoint} within {deadline:g} s: "
                f"{self.last_error or 'no connection'}"
            ) from err

    async def request(self, what: str, call: Job[T], *, steps: int = 1) -> T:
        """Run `call` (`steps` exchanges) alone on the bus; `what` names device and request.

        Bound: at most one worst case (+ 0.25 s) waiting for the bus (DeviceTimeout "not
        sent"), then at most `steps` worst cases on the wire, where worst case is timeout ×
        (retries + 1): (1 + steps) worst cases + 0.25 s in all.
        The lock is taken in the caller's task, so a caller that gives up while waiting sends
        nothing. Once taken, it belongs to a shielded task that holds it until the exchange
        on the wire has ended: a cancelled caller never lets the next request start while an
        answer is still due, and a request once sent is never cut off.
        """
        worst = self.limits.worst_case
        wait = worst + _WAIT_MARGIN
        self._check_connected(what)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        try:
            async with asyncio.timeout(wait):
                await self.lock.acquire()
        except TimeoutError as err:
            raise DeviceTimeout(
                f"{what}: not sent: the bus to {self.endpoint} stayed busy for {wait:g} s"
            ) from err
        try:
            client = self._check_connected(what)
            task = loop.create_task(call(client), name=f"modbus {what}")
        except BaseException:
            self.lock.release()
            raise
        # A done-callback releases the lock even when close() cancels the task before it ran.
        task.add_done_callback(lambda _task: self.lock.release())
        self._inflight.add(task)
        task.add_done_callback(_forget(self._inflight))
        waited = loop.time() - asked
        within = f"{steps * worst:g} s"
        if waited >= 0.01:
            within += f" (sent after {waited:.2f} s waiting for the bus)"
        try:
            async with asyncio.timeout(steps * worst + _GUARD_MARGIN):
                return await asyncio.shield(task)
        except asyncio.CancelledError as err:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the request, not our caller: to the caller it failed.
                raise NotConnected(f"{what}: driver closed") from err
            raise
        except TimeoutError as err:
            # pymodbus gives up by itself before this guard: it hangs, so free the bus.
            task.cancel()
            raise DeviceTimeout(f"{what}: no answer within {within}") from err
        except ConnectionException as err:
            raise NotConnected(f"{what}: connection lost") from err
        except ModbusIOException as err:
            raise DeviceTimeout(f"{what}: no valid answer within {within}") from err
        except ModbusException as err:
            raise BadResponse(f"{what}: {err}") from err

    def _check_connected(self, what: str) -> ModbusBaseClient:
        client = self._client
        if client is None or not self.connected:
            raise NotConnected(f"{what}: not connected")
        return client

    async def close(self) -> None:
        """Stop the connect loop, close the connection and wait for every request task."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        # Requests first, so their callers hear "driver closed", not a lost connection.
        inflight = list(self._inflight)
        for task in inflight:
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._up.clear()
        await asyncio.gather(*inflight, return_exceptions=True)

    def _make_client(self) -> ModbusBaseClient:
        # reconnect_delay=0 turns pymodbus's reconnect off: _supervise does it, with jitter.
        config, limits = self._config, self.limits
        if isinstance(config, ModbusTcpConfig):
            return AsyncModbusTcpClient(
                config.host,
                port=config.port,
                timeout=limits.timeout,
                retries=limits.retries,
                reconnect_delay=0,
                trace_connect=self._on_connection,
            )
        return AsyncModbusSerialClient(
            config.port,
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
            timeout=limits.timeout,
            retries=limits.retries,
            reconnect_delay=0,
            trace_connect=self._on_connection,
        )

    def _on_connection(self, up: bool) -> None:
        # pymodbus calls this from its protocol callbacks; a loss wakes the connect loop.
        if not up:
            self.last_error = f"connection to {self.endpoint} lost"
            self._down.set()

    def _notify(self, up: bool, error: str | None) -> None:
        for listener in list(self._listeners):
            listener(up, error)

    async def _attempt(self) -> None:
        # Cleared before connecting, so a loss right after connecting is not missed.
        self._down.clear()
        if self._client is None:
            self._client = self._make_client()  # inside the running loop, as pymodbus needs
        if await self._client.connect():
            return
        self.last_error = f"cannot open {self.endpoint}"
        self._notify(False, self.last_error)
        raise ConnectFailed(self.last_error)

    async def _supervise(self) -> None:
        backoff = Backoff()
        while True:
            await connect_with_backoff(
                self._attempt,
                device=self.key,
                endpoint=self.endpoint,
                deadline=math.inf,
                backoff=backoff,
            )
            backoff.reset()
            self.last_error = None
            self._up.set()
            self._notify(True, None)
            await self._down.wait()
            self._up.clear()
            self._notify(False, self.last_error)


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback that drops a request task and retrieves its outcome (no warnings)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


class _Subscription:
    """One subscriber: its points, its callback and what it was last told."""

    def __init__(self, points: tuple[ModbusPoint, ...], callback: ReadingsCallback) -> None:
        self.points = points
        self.callback = callback
        self.last: dict[str, Reading] = {}

    def deliver(self, readings: dict[ModbusPoint, Reading]) -> None:
        """Call back with the readings whose value or quality changed since last time."""
        changed: dict[str, Reading] = {}
        for point in self.points:
            reading = readings[point]
            previous = self.last.get(point.name)
            if previous is None or not _same(previous, reading):
                changed[point.name] = reading
                self.last[point.name] = reading
        if not changed:
            return
        try:
            self.callback(changed)
        except Exception:
            # A faulty subscriber must not stop the polling that others depend on.
            log.exception("subscriber callback failed for %s", ", ".join(changed))


def _same(a: Reading, b: Reading) -> bool:
    """Same quality and the same value of the same type (NaN equals NaN)."""
    return a.quality is b.quality and same_value(a.value, b.value)


_READERS: dict[ModbusTable, Callable[[ModbusBaseClient, int, int, int], Awaitable[ModbusPDU]]] = {
    ModbusTable.COIL: lambda c, a, n, u: c.read_coils(a, count=n, device_id=u),
    ModbusTable.DISCRETE_INPUT: lambda c, a, n, u: c.read_discrete_inputs(a, count=n, device_id=u),
    ModbusTable.HOLDING_REGISTER: lambda c, a, n, u: c.read_holding_registers(
        a, count=n, device_id=u
    ),
    ModbusTable.INPUT_REGISTER: lambda c, a, n, u: c.read_input_registers(a, count=n, device_id=u),
}


class ModbusDriver(TracksHealth):
    """One Modbus device (a unit id) on a shared bus: batched reads, confirmed writes, polling."""

    def __init__(self, config: ModbusConfig, bus: ModbusBus) -> None:
        self.name = config.name
        self.config = config
        self.bus = bus
        #: Requests this device has sent (each read block, write or read-modify-write step).
        self.requests = 0
        self._tracker = HealthTracker(config.name)
        self._failures = 0
        self._attached = False
        self._subscriptions: list[_Subscription] = []
        self._poller: asyncio.Task[None] | None = None
        #: Every subscribed point and its read blocks: planned when subscriptions change, not
        #: on every poll.
        self._poll_plan: tuple[list[ModbusPoint], list[ReadBlock]] | None = None
        self._retired: set[asyncio.Task[None]] = set()

    @property
    def endpoint(self) -> str:
        """Where the device is, as shown in messages: 'host:port unit N' or 'port unit N'."""
        return self.config.endpoint

    async def connect(self) -> None:
        """Connect the bus within limits.worst_case (with backoff); raises ConnectFailed."""
        if not self._attached:
            self.bus.attach(self._bus_changed)
            self._attached = True
        try:
            await self.bus.connect(
                self.config.limits.worst_case, device=self.name, endpoint=self.endpoint
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
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._attached:
            self._attached = False
            await self.bus.detach(self._bus_changed)
        self._tracker.set(HealthState.DISCONNECTED)

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """Read points in one request per block; exception answers give BAD readings."""
        modbus_points = [self._modbus_point(p) for p in points]
        readings: dict[ModbusPoint, Reading] = {}
        for block in self._plan(modbus_points):
            readings.update(await self._read_block(block))
        return [readings[p] for p in modbus_points]

    async def write(self, point: Point, value: Value) -> None:
        """Write one value and wait for the device's confirmation (fc 5, 6 or 16)."""
        p = self._modbus_point(point)
        where = f"{self.name} {p.describe()}"
        if not p.table.writable:
            raise WriteRejected(f"{where}: {p.name} is in a read-only table")
        if p.access is not Access.RW:
            raise WriteRejected(f"{where}: {p.name} is read-only")
        unit = self.config.unit
        try:
            if p.table is ModbusTable.COIL or p.bit is not None:
                flag = bool(check_value(DataType.BOOL, value))
                if p.table is ModbusTable.COIL:
                    await self._write(p, lambda c: c.write_coil(p.address, flag, device_id=unit))
                else:
                    await self._write_bit(p, flag)
                return
            words = encode_registers(p.datatype, value, p.word_order, p.length)
        except WriteRejected as err:
            raise WriteRejected(f"{where}: {err}") from err
        if len(words) == 1:
            await self._write(p, lambda c: c.write_register(p.address, words[0], device_id=unit))
        else:
            await self._write(p, lambda c: c.write_registers(p.address, words, device_id=unit))

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Modbus has no methods: always NotSupported."""
        raise NotSupported(f"{self.name}: Modbus devices have no methods (called {method.name})")

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Poll the points every config.poll s (one batched read for all subscribers)."""
        modbus_points = tuple(self._modbus_point(p) for p in points)
        self._plan(modbus_points)  # a point no request can read fails here, not in the poller
        subscription = _Subscription(modbus_points, callback)
        self._subscriptions.append(subscription)
        self._poll_plan = None
        if self._poller is None:
            self._poller = asyncio.get_running_loop().create_task(
                self._poll(), name=f"modbus poll {self.name}"
            )

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._poll_plan = None
            if not self._subscriptions and self._poller is not None:
                # A shielded request in flight finishes on its own; close() awaits the task.
                self._poller.cancel()
                self._retired.add(self._poller)
                self._poller.add_done_callback(self._retired.discard)
                self._poller = None

        return unsubscribe

    # -- internals --

    def _modbus_point(self, point: Point) -> ModbusPoint:
        if not isinstance(point, ModbusPoint):
            raise PointMismatch(
                f"{self.name}: {point.name} ({point.describe()}) is not a Modbus point"
            )
        return point

    def _plan(self, points: Sequence[ModbusPoint]) -> list[ReadBlock]:
        try:
            return plan_reads(points, self.config.max_gap)
        except ValueError as err:
            raise PointMismatch(f"{self.name}: {err}") from err

    def _what(self, action: str) -> str:
        return f"{self.name} ({self.endpoint}) {action}"

    async def _send(self, action: str, call: Job[T], *, steps: int = 1) -> T:
        """Run a job of `steps` requests alone on the bus, tracking health."""
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

    def _request(self, call: Request) -> Job[ModbusPDU]:
        """A job of one pymodbus request, counted in `requests`."""

        async def job(client: ModbusBaseClient) -> ModbusPDU:
            self.requests += 1
            return await call(client)

        return job

    async def _read_block(self, block: ReadBlock) -> dict[ModbusPoint, Reading]:
        last = block.end - 1
        span = f"{block.table.value}:{block.start}" + (f"..{last}" if last > block.start else "")
        reader = _READERS[block.table]
        unit = self.config.unit
        response = await self._send(
            f"read {span}", self._request(lambda c: reader(c, block.start, block.count, unit))
        )
        now = time.time()
        if response.isError():
            text = modbus_exception_text(response.exception_code)
            return {
                p: Reading(None, now, Quality.BAD, f"{self.name} {p.describe()}: {text}")
                for p in block.points
            }
        data: Sequence[int] | Sequence[bool] = (
            response.bits if block.table.is_bit_table else response.registers
        )
        readings: dict[ModbusPoint, Reading] = {}
        for p in block.points:
            try:
                readings[p] = Reading(decode_point(p, block, data), now)
            except BadResponse as err:
                readings[p] = Reading(None, now, Quality.BAD, f"{self.name} {err}")
        return readings

    def _check_answer(self, p: ModbusPoint, response: ModbusPDU) -> None:
        if response.isError():
            code = int(response.exception_code)
            raise ModbusExceptionResponse(
                f"{self.name} {p.describe()}: {modbus_exception_text(code)}", code
            )

    async def _write(self, p: ModbusPoint, call: Request) -> None:
        self._check_answer(p, await self._send(f"write {p.describe()}", self._request(call)))

    async def _write_bit(self, p: ModbusPoint, flag: bool) -> None:
        """Set one bit of a holding register by read-modify-write, alone on the bus.

        Nothing of ours runs on the bus between the read and the write, but this is not
        atomic on the device: another master, or the device itself, may change the register
        in between, and that change is then overwritten.
        """
        assert p.bit is not None
        bit, unit = p.bit, self.config.unit
        read = self._request(lambda c: c.read_holding_registers(p.address, count=1, device_id=unit))

        async def read_modify_write(client: ModbusBaseClient) -> ModbusPDU:
            response = await read(client)
            if response.isError():
                return response
            if len(response.registers) != 1:
                raise BadResponse(f"{self.name} {p.describe()}: expected 1 register back")
            word = set_bit(response.registers[0], bit, flag)
            write = self._request(lambda c: c.write_register(p.address, word, device_id=unit))
            return await write(client)

        response = await self._send(f"write {p.describe()}", read_modify_write, steps=2)
        self._check_answer(p, response)

    def _update_health(self, error: str | None = None) -> None:
        """CONNECTED, DEGRADED or LOST from the connection and consecutive failures."""
        if not self.bus.connected or self._failures >= LOST_AFTER_FAILURES:
            state = HealthState.LOST
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
                subscription.last.clear()
            self._update_health()
        else:
            self._tracker.set(HealthState.LOST, f"{self.name} ({self.endpoint}): {error}")

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._subscriptions:
            if self._poll_plan is None:
                merged = list(dict.fromkeys(p for s in self._subscriptions for p in s.points))
                self._poll_plan = (merged, self._plan(merged))
            points, blocks = self._poll_plan
            try:
                readings: dict[ModbusPoint, Reading] = {}
                for block in blocks:
                    readings.update(await self._read_block(block))
            except DriverError as err:
                now = time.time()
                readings = {p: Reading(None, now, Quality.BAD, str(err)) for p in points}
            for subscription in list(self._subscriptions):
                subscription.deliver(readings)
            # Fixed rate; after an overrun (a slow or silent device) start again from now.
            due = max(due + self.config.poll, loop.time())
            await asyncio.sleep(due - loop.time())


def make_modbus_drivers(configs: Sequence[ModbusConfig]) -> dict[str, ModbusDriver]:
    """One driver per device; devices with the same bus_key share one ModbusBus.

    A shared bus uses the line settings of its first device and the largest timeout and
    retries of its devices (pymodbus sets them per client, not per request).
    """
    groups: dict[str, list[ModbusConfig]] = {}
    for config in configs:
        groups.setdefault(config.bus_key, []).append(config)
    drivers: dict[str, ModbusDriver] = {}
    for members in groups.values():
        limits = RequestLimits(
            timeout=max(m.limits.timeout for m in members),
            retries=max(m.limits.retries for m in members),
        )
        bus = ModbusBus(members[0], limits)
        for member in members:
            if member.name in drivers:
                raise ValueError(f"two Modbus devices are named {member.name!r}")
            drivers[member.name] = ModbusDriver(member, bus)
    return drivers
