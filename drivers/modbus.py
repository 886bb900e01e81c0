"""Modbus TCP and RTU driver: a client per bus, batched reads, confirmed writes, polling.

A late answer is never taken for another request's. pymodbus resends a retry with the same
TCP transaction id, and RTU answers carry nothing but the unit, so pymodbus's clients are
built with retries=0 and the bus retries itself: each try is a fresh request (a fresh
transaction id on TCP); on a serial line, after a try that got no answer or a wrong one, the
next request waits until the line has been quiet for a turnaround (see turnaround()); and every
answer must match its request's function code and size (or echo) — one that does not is a
failed try, never a value. Reads and absolute writes (fc 5, 6, 16) are retried; a bit of a
register is set by a read-modify-write, which is retried whole (a fresh read each time), never
by resending its write, since that word was computed from a read that may be stale by then.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType
from pymodbus.pdu import ModbusPDU

from drivers.base import (
    ConnectProgress,
    ConnectTry,
    HealthState,
    Quality,
    Reading,
    ReadingsCallback,
    Unsubscribe,
    Value,
)
from drivers.batching import ReadBlock, decode_point, plan_reads
from drivers.codecs import check_value, encode_registers, same_reading, set_bit
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
from drivers.tasks import cancel_and_wait

log = logging.getLogger("drivers.modbus")

#: The config of one Modbus device, TCP or RTU.
ModbusConfig = ModbusTcpConfig | ModbusRtuConfig
#: Told (connected, error) when the bus connects, loses its connection or fails to connect.
BusListener = Callable[[bool, str | None], None]
T = TypeVar("T")
#: What runs alone on the bus, once per try: one request, or a read-modify-write.
Job = Callable[[ModbusBaseClient], Coroutine[Any, Any, T]]

# A device whose connection is up but whose requests failed this many times in a row is LOST.
LOST_AFTER_FAILURES = 3
# The tries end by themselves within timeout × (retries + 1); this guard only catches a hang.
_GUARD_MARGIN = 0.25
# A request waits for the bus as long as one request ahead of it may take, plus this slack.
_WAIT_MARGIN = 0.25
# The shortest quiet a serial line needs after a failed try before the next request. The RTU
# frame gap is only 3.5 characters (2 ms at 19200 baud), but a USB–RS-485 adaptor hands bytes
# over in bursts up to its latency timer apart (16 ms by default on FTDI chips) and the OS adds
# its own delay: 50 ms covers both, and is spent only after a failure.
TURNAROUND_MIN = 0.05


def turnaround(config: ModbusRtuConfig) -> float:
    """How long a serial line must stay quiet after a failed try: max(3.5 characters, 50 ms)."""
    parity = 0 if config.parity == "N" else 1
    bits = 1 + config.bytesize + parity + config.stopbits  # start, data, parity, stop bits
    return max(3.5 * bits / config.baudrate, TURNAROUND_MIN)


class _Mismatch(Exception):
    """An answer that cannot be the answer to the request just sent (a failed try)."""


class _LineBusy(Exception):
    """A serial line did not stay quiet for a turnaround before the request's deadline."""


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass(frozen=True)
class Ask:
    """One Modbus request as the driver sends it: function code, address, count or values."""

    function: int
    address: int
    count: int = 1
    #: What a write sends: (0 or 1,) for fc 5, (word,) for fc 6, the words for fc 16.
    values: tuple[int, ...] = ()

    def send(self, client: ModbusBaseClient, unit: int) -> Awaitable[ModbusPDU]:
        """Send it as a new request (pymodbus gives it a fresh transaction id on TCP)."""
        a, n, fc = self.address, self.count, self.function
        if fc == 1:
            return client.read_coils(a, count=n, device_id=unit)
        if fc == 2:
            return client.read_discrete_inputs(a, count=n, device_id=unit)
        if fc == 3:
            return client.read_holding_registers(a, count=n, device_id=unit)
        if fc == 4:
            return client.read_input_registers(a, count=n, device_id=unit)
        if fc == 5:
            return client.write_coil(a, bool(self.values[0]), device_id=unit)
        if fc == 6:
            return client.write_register(a, self.values[0], device_id=unit)
        if fc == 16:
            return client.write_registers(a, list(self.values), device_id=unit)
        raise ValueError(f"function code {fc} is not one the driver sends")

    def mismatch(self, response: ModbusPDU) -> str | None:
        """Why `response` cannot answer this request (function, size or echo), or None."""
        fc = self.function
        got = int(response.function_code)
        if response.isError():
            got &= 0x7F
            return None if got == fc else f"an exception answer to function {got}, sent {fc}"
        if got != fc:
            return f"a function {got} answer to a function {fc} request"
        if fc in (1, 2):
            size = (self.count + 7) // 8  # bits come back packed in whole bytes
            if len(response.bits) != 8 * size:
                return f"{len(response.bits) // 8} bytes of bits, expected {size}"
        elif fc in (3, 4):
            if len(response.registers) != self.count:
                return f"{_plural(len(response.registers), 'register')}, expected {self.count}"
        elif fc in (5, 6):
            echo = response.bits[:1] if fc == 5 else response.registers[:1]
            if response.address != self.address or [int(v) for v in echo] != [self.values[0]]:
                return (
                    f"an echo of {response.address} = {[int(v) for v in echo]}, "
                    f"expected {self.address} = {self.values[0]}"
                )
        elif response.address != self.address or response.count != self.count:
            return f"an echo of {response.count} at {response.address}, expected {self.count}"
        return None


class ModbusBus:
    """One pymodbus client shared by every unit on one TCP gateway or one serial line.

    Requests are serialised (one at a time on the wire, as RS-485 requires); a request is
    bounded even behind others on a busy bus (see request()), and retried by the bus, not by
    pymodbus (see the module docstring). The bus runs its
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
        #: Who hears of each try of the connect loop: (try number, why the last one failed).
        self._try_listeners: list[Callable[[int, str | None], None]] = []
        #: The number of the connect loop's try under way (0 before the first).
        self._try = 0
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        #: Why the last connect attempt failed or the connection dropped.
        self.last_error: str | None = None
        #: The quiet a serial line needs after a failed try (0 on TCP: transaction ids).
        self.turnaround = turnaround(config) if isinstance(config, ModbusRtuConfig) else 0.0
        # Serial line: after a failed try, the loop time from which it must stay quiet for
        # a turnaround before the next request (None: nothing can be on its way).
        self._answer_due: float | None = None
        self._heard = -math.inf  # loop time of the last bytes received

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

    async def connect(
        self,
        deadline: float,
        *,
        device: str,
        endpoint: str,
        progress: ConnectProgress | None = None,
    ) -> None:
        """Start the connect loop if needed and wait up to `deadline` s; else ConnectFailed.
        `progress` hears of each try of the loop while this waits.

        The loop keeps trying in the background after ConnectFailed, until close().
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline

        def tell(number: int, error: str | None) -> None:
            if progress is not None:
                progress(ConnectTry(device, endpoint, number, end, error))

        if self._supervisor is None or self._supervisor.done():
            self._supervisor = loop.create_task(
                self._supervise(), name=f"modbus connect {self.key}"
            )
        elif self._try and not self._up.is_set():
            tell(self._try, self.last_error)  # a loop already trying: the try under way
        self._try_listeners.append(tell)
        try:
            async with asyncio.timeout(deadline):
                await self._up.wait()
        except TimeoutError as err:
            raise ConnectFailed(
                f"{device}: cannot connect to {endpoint} within {deadline:g} s: "
                f"{self.last_error or 'no connection'}"
            ) from err
        finally:
            self._try_listeners.remove(tell)

    async def request(self, what: str, call: Job[T], *, steps: int = 1) -> T:
        """Run `call` (`steps` exchanges) alone on the bus; `what` names device and request.

        A try that gets no answer, or one that does not match its request, is tried again
        (fresh requests) up to limits.retries times, so a job must be safe to run again (the
        driver's are: reads, absolute writes, a read-modify-write); the tries share one budget
        of `steps` worst cases, where worst case is timeout × (retries + 1), and each exchange
        waits at most `timeout` (a serial line's turnaround after a failed try comes out of
        the budget, so the last try may wait less).
        Bound: at most one worst case (+ 0.25 s) waiting for the bus, a serial line's quiet
        owed by an earlier request's failure included (DeviceTimeout "not sent"), then at most
        `steps` worst cases on the wire: (1 + steps) worst cases + 0.25 s in all. A job that
        hangs past that deadline is cut off by a guard 0.25 s later (DeviceTimeout).
        The lock is taken, and the line's quiet awaited, in the caller's task, so a caller that
        gives up while waiting sends nothing. Then the lock belongs to a shielded task that
        holds it until the exchange on the wire has ended: a cancelled caller never lets the
        next request start while an answer is still due, and a request once sent is never cut
        off.
        """
        worst = self.limits.worst_case
        wait = worst + _WAIT_MARGIN
        self._check_connected(what)
        loop = asyncio.get_running_loop()
        asked = loop.time()
        # One clock for the whole request: the bus, and the line quiet, by `sent_by`; the
        # tries' budget from then, so the quiet never shortens it; the guard a margin after
        # the tries' own deadline, so it fires on a hang only, never on a try still in time.
        sent_by = asked + wait
        try:
            async with asyncio.timeout_at(sent_by):
                await self.lock.acquire()
        except TimeoutError as err:
            raise DeviceTimeout(
                f"{what}: not sent: the bus to {self.endpoint} stayed busy for {wait:g} s"
            ) from err
        try:
            await self._drain(sent_by)
            client = self._check_connected(what)
            # min(): a sleep that ends late in the quiet wait cannot stretch the bound.
            deadline = min(loop.time(), sent_by) + steps * worst
            task = loop.create_task(self._tries(client, call, deadline), name=f"modbus {what}")
        except _LineBusy as err:
            self.lock.release()
            raise DeviceTimeout(
                f"{what}: not sent: the line {self.endpoint} did not stay quiet for "
                f"{self.turnaround * 1000:.0f} ms within {wait:g} s"
            ) from err
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
            async with asyncio.timeout_at(deadline + _GUARD_MARGIN):
                return await asyncio.shield(task)
        except asyncio.CancelledError as err:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the request, not our caller: to the caller it failed.
                raise NotConnected(f"{what}: driver closed") from err
            raise
        except TimeoutError as err:
            # The budget ran out (the tries raise it), or the guard fired on a hang: free the bus.
            task.cancel()
            raise DeviceTimeout(f"{what}: no answer within {within}") from err
        except _Mismatch as err:
            raise BadResponse(f"{what}: the answer does not match the request: {err}") from err
        except ConnectionException as err:
            raise NotConnected(f"{what}: connection lost") from err
        except ModbusIOException as err:
            raise DeviceTimeout(f"{what}: no valid answer within {within}") from err
        except ModbusException as err:
            raise BadResponse(f"{what}: {err}") from err

    async def exchange(self, client: ModbusBaseClient, ask: Ask, unit: int) -> ModbusPDU:
        """One request and its answer (inside a job); raises if the answer is not its own."""
        sent = asyncio.get_running_loop().time()
        try:
            response = await ask.send(client, unit)
        except ConnectionException:
            raise
        except BaseException:
            # No answer yet (timed out, or cut off): it may still come.
            self._answer_may_come(sent)
            raise
        problem = ask.mismatch(response)
        if problem is not None:
            # Likely a late answer to an earlier try; this try's own may still come.
            self._answer_may_come(sent)
            raise _Mismatch(problem)
        return response

    async def _tries(self, client: ModbusBaseClient, call: Job[T], deadline: float) -> T:
        """Run the job, again after a try without a (matching) answer, until `deadline`.

        The line is quiet when this starts (request() waited for that, out of the bus's time)."""
        tries = self.limits.retries + 1
        failed: ModbusIOException | _Mismatch | None = None
        for _ in range(tries):
            if failed is not None:
                try:
                    await self._drain(deadline)
                except _LineBusy:
                    raise failed from None  # no time left for another try: its failure
            try:
                async with asyncio.timeout_at(deadline):
                    return await call(client)
            except (ModbusIOException, _Mismatch) as err:
                failed = err
        assert failed is not None
        raise failed

    def _answer_may_come(self, sent: float) -> None:
        if self.turnaround > 0:
            # pymodbus would have given up on the answer at sent + timeout: the line must be
            # quiet for a turnaround after that (or after the last byte heard, if later).
            due = sent + self.limits.timeout
            self._answer_due = max(due, self._answer_due or due)

    async def _drain(self, deadline: float) -> None:
        """On a serial line after a failed try: wait until it was quiet for a turnaround.

        What arrives meanwhile is a late answer to the failed try: pymodbus drops it, as no
        request is waiting. Raises _LineBusy when the line cannot be quiet before `deadline`.
        """
        loop = asyncio.get_running_loop()
        while self._answer_due is not None:
            quiet_at = max(self._answer_due, self._heard) + self.turnaround
            now = loop.time()
            if now >= quiet_at:
                self._answer_due = None
                return
            if quiet_at > deadline:
                raise _LineBusy
            await asyncio.sleep(quiet_at - now)

    def _on_packet(self, sending: bool, data: bytes) -> bytes:
        # pymodbus's trace_packet hook, called in the loop for every chunk received.
        if not sending:
            self._heard = asyncio.get_running_loop().time()
        return data

    def _check_connected(self, what: str) -> ModbusBaseClient:
        client = self._client
        if client is None or not self.connected:
            raise NotConnected(f"{what}: not connected")
        return client

    async def close(self) -> None:
        """Stop the connect loop, close the connection and wait for every request task."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await cancel_and_wait([supervisor])
        # Requests first, so their callers hear "driver closed", not a lost connection.
        inflight = list(self._inflight)
        for task in inflight:
            task.cancel()
        client, self._client = self._client, None
        if client is not None:
            client.close()
        self._up.clear()
        await cancel_and_wait(inflight)

    def _make_client(self) -> ModbusBaseClient:
        # reconnect_delay=0 turns pymodbus's reconnect off: _supervise does it, with jitter.
        # retries=0: pymodbus would resend the same request (same transaction id); the bus
        # retries itself with fresh requests (_tries).
        config, limits = self._config, self.limits
        client: ModbusBaseClient
        if isinstance(config, ModbusTcpConfig):
            client = AsyncModbusTcpClient(
                config.host,
                port=config.port,
                timeout=limits.timeout,
                retries=0,
                reconnect_delay=0,
                trace_connect=self._on_connection,
            )
        else:
            client = AsyncModbusSerialClient(
                config.port,
                framer=FramerType.RTU,
                baudrate=config.baudrate,
                bytesize=config.bytesize,
                parity=config.parity,
                stopbits=config.stopbits,
                timeout=limits.timeout,
                retries=0,
                reconnect_delay=0,
                trace_packet=self._on_packet,
                trace_connect=self._on_connection,
            )
        # pymodbus drops a TCP connection after a run of unanswered requests (retries + 3 by
        # default); counted in tries now, so keep that run as long in requests.
        client.set_max_no_responses((limits.retries + 1) * (limits.retries + 3))
        return client

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

    def _trying(self, number: int, error: str | None) -> None:
        self._try = number
        for listener in list(self._try_listeners):
            listener(number, error)

    async def _supervise(self) -> None:
        backoff = Backoff()
        while True:
            await connect_with_backoff(
                self._attempt,
                device=self.key,
                endpoint=self.endpoint,
                deadline=math.inf,
                backoff=backoff,
                on_try=self._trying,
            )
            self._try = 0
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

    def __init__(
        self, device: str, points: tuple[ModbusPoint, ...], callback: ReadingsCallback
    ) -> None:
        self.device = device
        self.points = points
        self.callback = callback
        self.last: dict[str, Reading] = {}
        self.failing = False
        #: Points a fresh read saw differ from what this subscriber was last told, each with
        #: the number of the poll cycle under way (or last run) when that read ended.
        self.recheck: dict[str, int] = {}
        self._members = frozenset(points)

    def heard_fresh(self, readings: dict[ModbusPoint, Reading], cycle: int) -> None:
        """Note the points where a fresh read differs from what this subscriber was told.

        A value that the read caught in a short pulse may be back before the next poll, which
        would then see no change and report nothing: whoever took the read as its newest value
        (a wait) would never hear it go back. So the next cycle that starts after this read
        reports these points whatever it reads.
        """
        for point, reading in readings.items():
            if point in self._members:
                told = self.last.get(point.name)
                if told is not None and not same_reading(told, reading):
                    self.recheck[point.name] = cycle

    def deliver(self, readings: dict[ModbusPoint, Reading], cycle: int) -> None:
        """Call back with the readings whose value or quality changed since it was last told,
        and those of points a fresh read saw differ before this cycle (`cycle`) started.

        A callback that raises is logged (once until it succeeds again) and told the same
        changes on the next cycle; it never stops the poller or the other subscribers.
        """
        if any(point not in readings for point in self.points):
            return  # subscribed while this cycle was reading: the next cycle serves it
        due = {n for n, mark in self.recheck.items() if cycle > mark} if self.recheck else set()
        changed: dict[str, Reading] = {}
        for point in self.points:
            reading = readings[point]
            previous = self.last.get(point.name)
            if previous is None or not same_reading(previous, reading) or point.name in due:
                changed[point.name] = reading
        if not changed:
            return
        try:
            self.callback(changed)
        except (Exception, asyncio.CancelledError) as err:
            task = asyncio.current_task()
            if isinstance(err, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # the poller itself is being stopped
            # A CancelledError from a callback that is not our cancellation (a cancelled
            # future's result(), say) is the callback's failure like any other.
            if not self.failing:
                log.error(
                    "device %s: a subscriber callback failed on %s; it is offered the same "
                    "changes every poll until it succeeds",
                    self.device,
                    ", ".join(changed),
                    exc_info=err,
                )
            self.failing = True
            return
        if self.failing:
            log.info(
                "device %s: the subscriber callback on %s works again",
                self.device,
                ", ".join(changed),
            )
            self.failing = False
        self.last.update(changed)
        for name in due:
            del self.recheck[name]


# The function code that reads each table.
_READ_FC: dict[ModbusTable, int] = {
    ModbusTable.COIL: 1,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}


class ModbusDriver(TracksHealth):
    """One Modbus device (a unit id) on a shared bus: batched reads, confirmed writes, polling."""

    def __init__(self, config: ModbusConfig, bus: ModbusBus) -> None:
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
        self._subscriptions: list[_Subscription] = []
        self._poller: asyncio.Task[None] | None = None
        #: Every subscribed point and its read blocks: planned when subscriptions change, not
        #: on every poll.
        self._poll_plan: tuple[list[ModbusPoint], list[ReadBlock]] | None = None
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
        readings: dict[ModbusPoint, Reading] = {}
        for block in self._plan(modbus_points):
            readings.update(await self._read_block(block))
        for subscription in self._subscriptions:
            subscription.heard_fresh(readings, self._cycle)
        return [readings[p] for p in modbus_points]

    async def write(self, point: Point, value: Value) -> None:
        """Write one value and wait for the device's confirmation (fc 5, 6 or 16)."""
        p = self._modbus_point(point)
        where = f"{self.name} {p.describe()}"
        if not p.table.writable:
            raise WriteRejected(f"{where}: {p.name} is in a read-only table")
        if p.access is not Access.RW:
            raise WriteRejected(f"{where}: {p.name} is read-only")
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
            raise WriteRejected(f"{where}: {err}") from err
        # Absolute values: sending one again after a lost answer changes nothing, so retried.
        if len(words) == 1:
            await self._write(p, Ask(6, p.address, values=(words[0],)))
        else:
            await self._write(p, Ask(16, p.address, len(words), tuple(words)))

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Modbus has no methods: always NotSupported."""
        raise NotSupported(f"{self.name}: Modbus devices have no methods (called {method.name})")

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Poll the points every config.poll s (one batched read for all subscribers)."""
        modbus_points = tuple(self._modbus_point(p) for p in points)
        self._plan(modbus_points)  # a point no request can read fails here, not in the poller
        subscription = _Subscription(self.name, modbus_points, callback)
        self._subscriptions.append(subscription)
        self._poll_plan = None
        if self._poller is None:
            self._start_poller()

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

    async def _read_block(self, block: ReadBlock) -> dict[ModbusPoint, Reading]:
        last = block.end - 1
        span = f"{block.table.value}:{block.start}" + (f"..{last}" if last > block.start else "")
        ask = Ask(_READ_FC[block.table], block.start, block.count)
        response = await self._send(f"read {span}", self._job(ask))
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
                subscription.last.clear()
            self._update_health()
        else:
            self._tracker.set(HealthState.LOST, f"{self.name} ({self.endpoint}): {error}")

    def _start_poller(self) -> None:
        task = asyncio.get_running_loop().create_task(self._poll(), name=f"modbus poll {self.name}")
        task.add_done_callback(self._poller_ended)
        self._poller = task

    def _poller_ended(self, task: asyncio.Task[None]) -> None:
        """A poller that ended while still wanted (its cycles catch every Exception, so only
        something else ends it) is reported and the device is LOST; the controller's watchdog
        sees its silence too."""
        if task is not self._poller:
            return  # stopped by unsubscribe() or close()
        self._poller = None
        if not self._subscriptions or task.cancelled():
            return  # cancelled from outside (the loop shutting down): not a failure
        error = task.exception()
        text = f"{self.name} ({self.endpoint}): polling stopped: {error!r}"
        log.error("device %s: %s", self.name, text, exc_info=error)
        self._poll_error = text
        self._update_health(text)

    async def _poll(self) -> None:
        """Poll until no subscription is left; a cycle that raises is reported, not fatal."""
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self._subscriptions:
            try:
                await self._poll_once()
            except Exception as err:
                self._poll_failed(err)
            now = loop.time()
            # Fixed rate; after an overrun (a cycle longer than the period: a slow or silent
            # unit) a whole period of rest, so that one unit cannot hold a shared line.
            due += self.config.poll
            if due <= now:
                due = now + self.config.poll
            await asyncio.sleep(due - now)

    async def _poll_once(self) -> None:
        """One cycle: read every subscribed block, tell each subscriber what changed."""
        self._cycle += 1
        cycle = self._cycle
        if self._poll_plan is None:
            merged = list(dict.fromkeys(p for s in self._subscriptions for p in s.points))
            self._poll_plan = (merged, self._plan(merged))
        points, blocks = self._poll_plan
        answered = True
        try:
            readings: dict[ModbusPoint, Reading] = {}
            for block in blocks:
                readings.update(await self._read_block(block))
        except DriverError as err:
            answered = False
            now = time.time()
            readings = {p: Reading(None, now, Quality.BAD, str(err)) for p in points}
        if answered:
            # A whole cycle answered: what the controller's watchdog looks for (only the
            # poller's own cycles, so other requests cannot hide a stalled poller). Before the
            # readings go out: a listener that judges them sees the device answering.
            self._tracker.answered()
        self._deliver(readings, cycle)
        if answered and self._poll_error is not None:
            # Only a whole cycle without an exception shows the fault has gone.
            log.info("device %s: polling works again", self.name)
            self._poll_error = None
            self._update_health()

    def _deliver(self, readings: dict[ModbusPoint, Reading], cycle: int) -> None:
        for subscription in list(self._subscriptions):
            subscription.deliver(readings, cycle)

    def _poll_failed(self, err: Exception) -> None:
        """A cycle raised (a bug, a codec error): LOST, logged, subscribers told BAD."""
        text = f"{self.name} ({self.endpoint}): polling failed: {err!r}"
        if text != self._poll_error:
            # Once per distinct error: the cycle is retried every period.
            log.error("device %s: a poll cycle failed; polling goes on", self.name, exc_info=err)
        self._poll_error = text
        self._update_health(text)
        now = time.time()
        points = {p for s in self._subscriptions for p in s.points}
        self._deliver({p: Reading(None, now, Quality.BAD, text) for p in points}, self._cycle)


def make_modbus_drivers(configs: Sequence[ModbusConfig]) -> dict[str, ModbusDriver]:
    """One driver per device; devices with the same bus_key share one ModbusBus.

    A shared bus uses the line settings of its first device and the largest timeout and
    retries of its devices (pymodbus sets the timeout per client, and one worst case per bus
    bounds how long a request waits for the bus).
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
