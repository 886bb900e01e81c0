"""The Modbus protocol as a conformant device speaks it, on top of pymodbus's servers.

pymodbus's request handler decodes one frame from each chunk a connection delivers and drops
the rest (pipelined requests go unanswered), answers a count beyond the protocol's limit with
exception 1 under function code 0, takes any non-zero coil value as ON, loses an RTU line to a
half frame, and keeps every TCP connection open for ever. The handler here frames the byte
stream itself, checks each request as the Modbus specification (V1.1b3, §6–7) says before the
tables see it, and bounds what a client can hold: an idle timeout and a cap on connections.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerRTU
from pymodbus.pdu import ExceptionResponse, ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.server.requesthandler import ServerRequestHandler
from pymodbus.simulator import SimDevice

from drivers.sim.modbus_unit import table_of

log = logging.getLogger("drivers.sim")

#: Defaults of the TCP simulator: a client silent this long is disconnected (a PLC polls far
#: more often), and connections beyond this many are refused (a cell has a handful of clients).
IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 100

# The largest quantity each function code may ask for (Modbus spec §6): beyond it exception 3.
_READ_LIMIT = {1: 2000, 2: 2000, 3: 125, 4: 125}
_WRITE_LIMIT = {15: 1968, 16: 123}
_COIL_ON, _COIL_OFF = 0xFF00, 0x0000
# Modbus TCP: MBAP header (transaction, protocol 0, length, unit); the length counts the unit
# byte and the PDU, which is 253 bytes at most.
_MBAP = struct.Struct(">HHHB")
_MAX_LENGTH = 1 + 253
# Unparsed bytes a TCP connection may have waiting before it stops reading (backpressure).
_MAX_PENDING = 4096
# RTU: a frame is at most 256 bytes; a line holding more than two frames' worth of unparsed
# bytes keeps only the newest frame's worth (a serial port cannot be told to stop sending).
_MAX_RTU_FRAME = 256
_MIN_RTU_FRAME = 4  # unit, function code, CRC
# A pty delivers bytes with the scheduler's jitter, not at the line's pace: a silence this
# long (or 3.5 characters at the baud rate, whichever is longer) ends a frame.
_RTU_SILENCE_FLOOR = 0.01


def check_bounds(idle_timeout: float, max_connections: int) -> None:
    """ValueError for an idle timeout or a connection cap a server cannot work with."""
    if not idle_timeout > 0:
        raise ValueError(f"idle_timeout must be positive seconds, not {idle_timeout}")
    if max_connections < 1:
        raise ValueError(f"max_connections must be at least 1, not {max_connections}")


def request_error(pdu: bytes) -> ExcCodes | None:
    """The exception a device answers a request PDU with before its tables see it (None: none).

    Exception 1 for a function code the simulator does not serve, 3 for a quantity beyond the
    protocol's limit, a coil value other than 0xFF00/0x0000, or a length that does not match.
    """
    if not pdu or table_of(pdu[0]) is None:
        return ExcCodes.ILLEGAL_FUNCTION
    fc, body = pdu[0], pdu[1:]
    if fc in (1, 2, 3, 4, 5, 6):
        if len(body) != 4:
            return ExcCodes.ILLEGAL_VALUE
        _address, value = struct.unpack(">HH", body)
        if fc in _READ_LIMIT and not 1 <= value <= _READ_LIMIT[fc]:
            return ExcCodes.ILLEGAL_VALUE
        if fc == 5 and value not in (_COIL_ON, _COIL_OFF):
            return ExcCodes.ILLEGAL_VALUE
        return None
    if fc == 22:  # mask write: address, AND mask, OR mask
        return None if len(body) == 6 else ExcCodes.ILLEGAL_VALUE
    if fc in (15, 16):
        if len(body) < 5:
            return ExcCodes.ILLEGAL_VALUE
        _address, count, byte_count = struct.unpack_from(">HHB", body)
        needed = (count + 7) // 8 if fc == 15 else 2 * count
        valid = 1 <= count <= _WRITE_LIMIT[fc] and byte_count == needed == len(body) - 5
        return None if valid else ExcCodes.ILLEGAL_VALUE
    # 23, read/write multiple registers: read address and count, write address and count.
    if len(body) < 9:
        return ExcCodes.ILLEGAL_VALUE
    _read, reads, _write, writes, byte_count = struct.unpack_from(">HHHHB", body)
    valid = 1 <= reads <= 125 and 1 <= writes <= 121 and byte_count == 2 * writes
    return None if valid and len(body) == 9 + byte_count else ExcCodes.ILLEGAL_VALUE


def _rtu_request_size(data: bytearray, start: int) -> int | None:
    """The size of the RTU request frame at `start` (0: not known yet; None: a function code
    the simulator does not serve, whose size only the silence after it tells)."""
    fc = data[start + 1]
    if fc in (1, 2, 3, 4, 5, 6):
        return 8
    if fc == 22:
        return 10
    if fc in (15, 16):
        return data[start + 6] + 9 if len(data) > start + 6 else 0
    if fc == 23:
        return data[start + 10] + 13 if len(data) > start + 10 else 0
    return None


def _crc_ok(frame: bytes | bytearray) -> bool:
    """True when an RTU frame ends with the CRC of what precedes it."""
    crc = FramerRTU.compute_CRC(bytes(frame[:-2]))
    return bool(crc == int.from_bytes(frame[-2:], "big"))


@dataclass(frozen=True)
class _Frame:
    """One request as framed off the wire."""

    transaction: int  # 0 on RTU
    unit: int
    pdu: bytes


class _NotModbus(Exception):
    """The bytes on a TCP connection cannot be Modbus TCP: framing is lost for good."""


class _Handler(ServerRequestHandler):
    """One client connection (TCP) or the serial line (RTU): every complete frame is answered,
    one after the other, in the order it came.

    Requests are taken off the byte stream by one task per connection, alive only while
    frames wait (started by the bytes that bring one); pymodbus answers each through
    `handle_request`, which only looks at `last_pdu`, so it never sees two requests at once.
    """

    def __init__(self, owner: StrictTcpServer | StrictRtuServer) -> None:
        # pymodbus leaves this __init__ unannotated.
        super().__init__(  # type: ignore[no-untyped-call]
            owner, owner.trace_packet, owner.trace_pdu, owner.trace_connect
        )
        self._owner = owner
        self._pending = bytearray()
        self._worker: asyncio.Task[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._paused = False
        self._last_received = self.loop.time()
        #: When a request last arrived or was answered: a connection is idle when neither
        #: happened for the idle timeout (a client working through a backlog is not idle).
        self._last_active = self._last_received

    # -- asyncio's protocol callbacks -------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int] | None) -> None:
        """Queue the bytes (TCP's data_received lands here too) and answer what they complete."""
        self._take(data)
        self._last_received = self._last_active = self.loop.time()
        if self._worker is None and self.transport is not None:
            self._worker = self.loop.create_task(self._serve())
            self._worker.add_done_callback(self._served)

    def pause_writing(self) -> None:
        """The client does not read its answers: stop answering and reading until it does."""
        self._writable.clear()
        self._pause_reading()

    def resume_writing(self) -> None:
        """The client reads again."""
        self._writable.set()
        self._resume_reading()

    def callback_disconnected(self, exc: Exception | None) -> None:
        """The connection ended (the client left or the server closed it): nothing more to do."""
        self._stop()
        super().callback_disconnected(exc)

    def close(self, reconnect: bool = False) -> None:
        """Close the connection (the server shuts down, or drops this client)."""
        self._stop()
        super().close(reconnect)

    # -- framing, per transport ---------------------------------------------------------------

    def _take(self, data: bytes) -> None:
        """Add received bytes to those waiting to be framed."""
        self._pending += data
        if len(self._pending) > _MAX_PENDING:
            self._pause_reading()

    def _next_frame(self) -> _Frame | None:
        """The next complete request in the pending bytes (None: wait for more)."""
        raise NotImplementedError

    # -- answering ------------------------------------------------------------------------------

    async def _serve(self) -> None:
        """Answer every complete frame waiting, in order; end when none is left."""
        while self.transport is not None:
            await self._writable.wait()
            try:
                frame = self._next_frame()
            except _NotModbus as err:
                log.info("Modbus simulator: closing a client connection: %s", err)
                self._drop()
                return
            if frame is None:
                break
            await self._answer(frame)
            self._last_active = self.loop.time()
            # pymodbus's answer never suspends: without this a client pipelining thousands of
            # requests would hold the loop, and every other client, until all are answered.
            await asyncio.sleep(0)
        if len(self._pending) <= _MAX_PENDING:
            self._resume_reading()
        self._worker = None

    def _served(self, task: asyncio.Task[None]) -> None:
        """A request loop must not die unseen: log what broke it and close its connection."""
        if task.cancelled() or task.exception() is None:
            return
        log.error(
            "Modbus simulator: answering a client failed; closing its connection",
            exc_info=task.exception(),
        )
        self._worker = None
        self._drop()

    async def _answer(self, frame: _Frame) -> None:
        """Answer one request: a protocol exception, or pymodbus's answer from the tables."""
        if not self._owner.serves(frame.unit):
            # Like an RS-485 slave that is not addressed: no answer (and no pymodbus traceback).
            log.debug("ignoring a request for unit %d, which is not simulated", frame.unit)
            return
        code = request_error(frame.pdu)
        # A request that passed the checks and still fails pymodbus's decoding is malformed.
        request = None if code is not None else self.framer.decoder.decode(frame.pdu)
        if request is None:
            refusal = ExceptionResponse(
                frame.pdu[0],
                code or ExcCodes.ILLEGAL_VALUE,
                device_id=frame.unit,
                transaction=frame.transaction,
            )
            self.pdu_send(refusal)
            return
        request.dev_id = frame.unit
        request.transaction_id = frame.transaction
        traced = self.trace_pdu(False, request)
        if traced is None:
            return
        self.last_pdu, self.last_addr = traced, None
        handle = cast(Callable[[], Awaitable[None]], self.handle_request)
        await handle()

    # -- connection state ---------------------------------------------------------------------

    def _pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            cast(asyncio.ReadTransport, self.transport).pause_reading()

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None and self._writable.is_set():
            self._paused = False
            cast(asyncio.ReadTransport, self.transport).resume_reading()

    def _drop(self) -> None:
        """Close this connection from the server's side, counted as a disconnect."""
        if self.transport is None:
            return
        # abort, not close: close() waits to flush the answers, which a client that does not
        # read never takes, and the socket would stay open for ever.
        cast(asyncio.Transport, self.transport).abort()
        # pymodbus's close() skips the disconnect callback that a client's close runs.
        self.callback_disconnected(None)
        self.close()

    def _stop(self) -> None:
        """Cancel what runs for this connection (not the request loop calling this, if it is)."""
        worker, self._worker = self._worker, None
        if worker is not None and worker is not asyncio.current_task():
            worker.cancel()
        self._pending.clear()


class _TcpHandler(_Handler):
    """A Modbus TCP client connection: MBAP framing, an idle timeout, the server's cap."""

    def __init__(self, owner: StrictTcpServer) -> None:
        super().__init__(owner)
        self._tcp_owner = owner
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit the client, or close at once when the server has its fill of connections."""
        if not self._tcp_owner.admit():
            if self.listener is not None:
                self.listener.active_connections.pop(self.unique_id, None)
                self.listener = None
            transport.close()
            return
        super().connection_made(transport)
        self._last_active = self.loop.time()
        self._idle = self.loop.call_at(
            self._last_active + self._tcp_owner.idle_timeout, self._check_idle
        )

    def _check_idle(self, confirmed: bool = False) -> None:
        self._idle = None
        due = self._last_active + self._tcp_owner.idle_timeout
        if self.loop.time() < due:
            self._idle = self.loop.call_at(due, self._check_idle)
            return
        if not confirmed:
            # Idle means nothing arrived, not nothing read yet: after a stall of the loop,
            # bytes may wait on the socket. A timer set now runs after the loop's next poll of
            # the sockets, which delivers them first.
            self._idle = self.loop.call_later(0, self._check_idle, True)
            return
        log.info(
            "Modbus simulator: closing a client connection idle for %g s (the idle timeout)",
            self._tcp_owner.idle_timeout,
        )
        self._drop()

    def _stop(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        super()._stop()

    def _next_frame(self) -> _Frame | None:
        data = self._pending
        if len(data) >= 4 and data[2:4] != b"\x00\x00":
            raise _NotModbus(f"protocol id {int.from_bytes(data[2:4], 'big')} is not Modbus (0)")
        if len(data) < _MBAP.size:
            return None
        transaction, _protocol, length, unit = _MBAP.unpack_from(data)
        if not 2 <= length <= _MAX_LENGTH:
            raise _NotModbus(f"MBAP length {length} is not 2…{_MAX_LENGTH}")
        end = 6 + length
        if len(data) < end:
            return None
        frame = _Frame(transaction, unit, bytes(data[_MBAP.size : end]))
        del data[:end]
        return frame


class _RtuHandler(_Handler):
    """The RTU line: frames found by their CRC; line noise and half frames are skipped."""

    def __init__(self, owner: StrictRtuServer) -> None:
        super().__init__(owner)
        self._silence = max(3.5 * 11 / owner.comm_params.baudrate, _RTU_SILENCE_FLOOR)

    def _take(self, data: bytes) -> None:
        if self._pending and self.loop.time() - self._last_received > self._silence:
            # A silence ends a frame: what waited is a half frame or noise, never to complete.
            log.debug("RTU line: dropping %d bytes that were no frame", len(self._pending))
            self._pending.clear()
        self._pending += data
        if len(self._pending) > 2 * _MAX_RTU_FRAME:
            del self._pending[:-_MAX_RTU_FRAME]

    def _next_frame(self) -> _Frame | None:
        data = self._pending
        keep: int | None = None  # where a frame still arriving may start
        for start in range(len(data) - _MIN_RTU_FRAME + 1):
            size = _rtu_request_size(data, start)
            if size is None:
                # A function code we do not serve: its frame is all that came before the
                # silence, so only at the start of the bytes (else it is noise).
                size = len(data) if start == 0 else -1
            elif size == 0 or start + size > len(data):
                keep = start if keep is None else keep
                continue
            if size >= _MIN_RTU_FRAME and _crc_ok(data[start : start + size]):
                frame = _Frame(0, data[start], bytes(data[start + 1 : start + size - 2]))
                del data[: start + size]
                return frame
        # Nothing complete: keep from where a frame may still be arriving (the last bytes
        # may begin one too); what lies before it is noise.
        last = max(0, len(data) - _MIN_RTU_FRAME + 1)
        del data[: min(keep, last) if keep is not None else last]
        return None


class StrictTcpServer(ModbusTcpServer):
    """pymodbus's Modbus TCP server with conformant framing and requests, an idle timeout and
    a cap on open connections (beyond it a new connection is closed at once, and logged)."""

    def __init__(
        self,
        devices: list[SimDevice],
        *,
        address: tuple[str, int],
        trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU],
        trace_connect: Callable[[bool], None],
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        check_bounds(idle_timeout, max_connections)
        super().__init__(devices, address=address, trace_pdu=trace_pdu, trace_connect=trace_connect)
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._units = frozenset(d.id for d in devices)
        self._refused = 0

    def callback_new_connection(self) -> _TcpHandler:
        """pymodbus's factory for a new connection's protocol."""
        return _TcpHandler(self)

    def serves(self, unit: int) -> bool:
        """True for a unit id this server simulates."""
        return unit in self._units

    def admit(self) -> bool:
        """Whether a connection just accepted may stay (it is already counted as open)."""
        if len(self.active_connections) <= self.max_connections:
            if self._refused:
                log.info(
                    "Modbus simulator at %s: accepting connections again (%d refused)",
                    _where(self),
                    self._refused,
                )
                self._refused = 0
            return True
        if not self._refused:
            log.warning(
                "Modbus simulator at %s: %d client connections open, the limit; refusing more "
                "until one closes (idle ones close after %g s)",
                _where(self),
                self.max_connections,
                self.idle_timeout,
            )
        self._refused += 1
        return False


class StrictRtuServer(ModbusSerialServer):
    """pymodbus's Modbus RTU server with conformant framing and requests: noise and half
    frames on the line never keep it from answering the next good frame."""

    def __init__(
        self,
        devices: list[SimDevice],
        *,
        port: str,
        baudrate: int,
        trace_pdu: Callable[[bool, ModbusPDU], ModbusPDU],
        trace_connect: Callable[[bool], None],
    ) -> None:
        super().__init__(
            devices,
            port=port,
            baudrate=baudrate,
            trace_pdu=trace_pdu,
            trace_connect=trace_connect,
        )
        self._units = frozenset(d.id for d in devices)

    def callback_new_connection(self) -> _RtuHandler:
        """pymodbus's factory for the line's protocol."""
        return _RtuHandler(self)

    def serves(self, unit: int) -> bool:
        """True for a unit id this server simulates."""
        return unit in self._units


def _where(server: StrictTcpServer) -> str:
    """host:port a server listens on, for log lines."""
    sockets = getattr(server.transport, "sockets", None) or []
    if not sockets:
        return "?"
    host, port = sockets[0].getsockname()[:2]
    return f"{host}:{port}"
