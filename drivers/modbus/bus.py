"""The bus: one pymodbus client per TCP gateway or serial line, its connect loop and requests.

A late answer is never taken for another request's. pymodbus resends a retry with the same
TCP transaction id, and RTU answers carry nothing but the unit, so pymodbus's clients are
built with retries=0 and the bus retries itself: each try is a fresh request (a fresh
transaction id on TCP); on a serial line, after a try that got no answer or a wrong one, the
next request waits until the line has been quiet for a turnaround (see line.turnaround()); and every
answer must match its request's function code and size (or echo) — one that does not is a
failed try, never a value. Reads and absolute writes (fc 5, 6, 16) are retried; a bit of a
register is set by a read-modify-write, which is retried whole (a fresh read each time), never
by resending its write, since that word was computed from a read that may be stale by then.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pymodbus.client import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.pdu import ModbusPDU

from drivers.base import ConnectProgress, ConnectTry
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.errors import BadResponse, ConnectFailed, DeviceTimeout, NotConnected
from drivers.health import Backoff, connect_with_backoff
from drivers.modbus.ask import AnswerDecoder, Ask
from drivers.modbus.line import LineBusy, SerialQuiet, make_client, turnaround
from drivers.tasks import cancel_and_wait

#: The config of one Modbus device, TCP or RTU.
AnyModbusConfig = ModbusTcpConfig | ModbusRtuConfig
#: Told (connected, error) when the bus connects, loses its connection or fails to connect.
BusListener = Callable[[bool, str | None], None]
T = TypeVar("T")
#: What runs alone on the bus, once per try: one request, or a read-modify-write.
Job = Callable[[ModbusBaseClient], Coroutine[Any, Any, T]]

# The tries end by themselves within timeout × (retries + 1); this guard only catches a hang.
_GUARD_MARGIN = 0.25
# A request waits for the bus as long as one request ahead of it may take, plus this slack.
_WAIT_MARGIN = 0.25


class _Mismatch(Exception):
    """An answer that cannot be the answer to the request just sent (a failed try)."""


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

    def __init__(self, config: AnyModbusConfig, limits: RequestLimits | None = None) -> None:
        self.key = config.bus_key
        self.endpoint = (
            f"{config.host}:{config.port}" if isinstance(config, ModbusTcpConfig) else config.port
        )
        self.limits = limits or config.limits
        self._config = config
        self._client: ModbusBaseClient | None = None
        #: Held while a job is on the wire: one request, or both halves of a read-modify-write.
        self._lock = asyncio.Lock()
        self._listeners: list[BusListener] = []
        #: Who hears of each try of the connect loop: (try number, why the last one failed).
        self._try_listeners: list[Callable[[int, str | None], None]] = []
        #: The number of the connect loop's try under way (0 before the first).
        self._try = 0
        self._up = asyncio.Event()
        self._down = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[Any]] = set()
        # Requests waiting for the lock: with none, a free lock is taken without waiting.
        self._queued = 0
        #: Why the last connect attempt failed or the connection dropped.
        self.last_error: str | None = None
        # The quiet a serial line needs after a failed try (none on TCP: transaction ids).
        quiet = turnaround(config) if isinstance(config, ModbusRtuConfig) else 0.0
        self._quiet = SerialQuiet(quiet, self.limits.timeout)
        # On TCP an answer carries its request's transaction id (RTU ones carry none).
        self._numbered = isinstance(config, ModbusTcpConfig)

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
        off. (The caller awaits a future the task settles as it ends, not the task itself, so
        that its cancellation never reaches the task; the bus is freed before that.)
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
        await self._take_bus(what, sent_by, wait)
        outcome: asyncio.Future[T] = loop.create_future()
        task, deadline = await self._start_tries(what, call, steps * worst, sent_by, wait, outcome)
        # Only a failure's message needs `within`: its text is made then, not per request.
        waited = loop.time() - asked
        return await self._outcome(what, task, outcome, deadline, steps * worst, waited)

    async def _take_bus(self, what: str, sent_by: float, wait: float) -> None:
        """Take the bus's lock by `sent_by`, else DeviceTimeout "not sent"."""
        if not self._lock.locked() and not self._queued:
            # Free and nobody queued (every acquire of the private lock comes through here):
            # acquire() returns at once, so no timer is needed.
            await self._lock.acquire()
            return
        self._queued += 1
        try:
            async with asyncio.timeout_at(sent_by):
                await self._lock.acquire()
        except TimeoutError as err:
            raise DeviceTimeout(
                f"{what}: not sent: the bus to {self.endpoint} stayed busy for {wait:g} s"
            ) from err
        finally:
            self._queued -= 1

    async def _start_tries(
        self,
        what: str,
        call: Job[T],
        budget: float,
        sent_by: float,
        wait: float,
        outcome: asyncio.Future[T],
    ) -> tuple[asyncio.Task[T], float]:
        """With the bus taken: wait for the line's quiet, then start the tries in a task that
        holds the bus until it ends and settles `outcome`; the task and the tries' deadline.
        Frees the bus when nothing is sent."""
        loop = asyncio.get_running_loop()
        try:
            await self._quiet.wait(sent_by)
            client = self._check_connected(what)
            # min(): a sleep that ends late in the quiet wait cannot stretch the bound.
            deadline = min(loop.time(), sent_by) + budget
            held = [True]

            def free(_task: object = None) -> None:
                if held[0]:
                    held[0] = False
                    self._lock.release()

            task = loop.create_task(
                self._settle(self._tries(client, call, deadline), free, outcome),
                name=f"modbus {what}",
            )
        except LineBusy as err:
            self._lock.release()
            raise DeviceTimeout(
                f"{what}: not sent: the line {self.endpoint} did not stay quiet for "
                f"{self._quiet.turnaround * 1000:.0f} ms within {wait:g} s"
            ) from err
        except BaseException:
            self._lock.release()
            raise
        # A done-callback frees the bus, and settles the outcome, even when close() cancels
        # the task before it ran (its coroutine then never starts).
        task.add_done_callback(free)
        task.add_done_callback(lambda _task: outcome.cancel())
        self._inflight.add(task)
        task.add_done_callback(_forget(self._inflight))
        return task, deadline

    @staticmethod
    async def _settle(
        tries: Coroutine[Any, Any, T], free: Callable[[], None], outcome: asyncio.Future[T]
    ) -> T:
        """Run the tries; as they end, free the bus, then settle `outcome` (if the caller still
        waits) in this same step: the caller resumes on the next turn of the loop, with the bus
        free for its next request."""
        try:
            result = await tries
        except asyncio.CancelledError:
            free()
            outcome.cancel()
            raise
        except BaseException as err:
            free()
            if not outcome.done():
                outcome.set_exception(err)
            raise
        free()
        if not outcome.done():
            outcome.set_result(result)
        return result

    async def _outcome(
        self,
        what: str,
        task: asyncio.Task[T],
        outcome: asyncio.Future[T],
        deadline: float,
        budget: float,
        waited: float,
    ) -> T:
        """The tries' result, awaited on `outcome` (a caller's cancellation never reaches the
        task) until a guard after `deadline`; a failure as a driver error (saying how long the
        tries had: `budget`, sent after `waited` s)."""
        try:
            async with asyncio.timeout_at(deadline + _GUARD_MARGIN):
                return await outcome
        except asyncio.CancelledError as err:
            current = asyncio.current_task()
            if task.cancelled() and current is not None and not current.cancelling():
                # close() cancelled the request, not our caller: to the caller it failed.
                raise NotConnected(f"{what}: driver closed") from err
            raise
        except TimeoutError as err:
            # The budget ran out (the tries raise it), or the guard fired on a hang: free the bus.
            task.cancel()
            raise DeviceTimeout(f"{what}: no answer within {_within(budget, waited)}") from err
        except _Mismatch as err:
            raise BadResponse(f"{what}: the answer does not match the request: {err}") from err
        except ConnectionException as err:
            raise NotConnected(f"{what}: connection lost") from err
        except ModbusIOException as err:
            raise DeviceTimeout(
                f"{what}: no valid answer within {_within(budget, waited)}"
            ) from err
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
            self._quiet.answer_may_come(sent)
            raise
        problem = ask.mismatch(response)
        if problem is None and self._numbered:
            # pymodbus skips an answer with another transaction id, but takes one with id 0
            # (which it never sends on TCP) for any request's.
            sent_id = client.ctx.request_transaction_id
            if response.transaction_id != sent_id:
                problem = f"an answer to transaction {response.transaction_id}, sent {sent_id}"
        if problem is not None:
            # Likely a late answer to an earlier try; this try's own may still come.
            self._quiet.answer_may_come(sent)
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
                    await self._quiet.wait(deadline)
                except LineBusy:
                    raise failed from None  # no time left for another try: its failure
            try:
                async with asyncio.timeout_at(deadline):
                    return await call(client)
            except (ModbusIOException, _Mismatch) as err:
                failed = err
        assert failed is not None
        raise failed

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

    def _on_connection(self, up: bool) -> None:
        # pymodbus calls this from its protocol callbacks; a loss wakes the connect loop.
        if not up:
            self.last_error = f"connection to {self.endpoint} lost"
            self._down.set()
            # pymodbus leaves a request in flight waiting out its whole timeout for an answer
            # that cannot come, holding the bus: the reconnect's first request would wait too.
            client = self._client
            pending = client.ctx.response_future if client is not None else None
            if pending is not None and not pending.done():
                pending.set_exception(ConnectionException(self.last_error))

    def _notify(self, up: bool, error: str | None) -> None:
        for listener in list(self._listeners):
            listener(up, error)

    async def _attempt(self) -> None:
        # Cleared before connecting, so a loss right after connecting is not missed.
        self._down.clear()
        if self._client is None:
            self._client = make_client(
                self._config,
                self.limits,
                self._on_connection,
                self._quiet.on_packet,
                AnswerDecoder(),
            )
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


def _within(budget: float, waited: float) -> str:
    """How long a request's tries had, for its timeout message, with any wait for the bus."""
    within = f"{budget:g} s"
    if waited >= 0.01:
        within += f" (sent after {waited:.2f} s waiting for the bus)"
    return within


def _forget(tasks: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    """A done-callback that drops a request task and retrieves its outcome (no warnings)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done
