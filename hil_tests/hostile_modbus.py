"""A hostile Modbus TCP/RTU device: a raw asyncio server that parses requests itself and
answers as one chosen misbehaviour says (a wrong transaction id, unit, function code or byte
count, an MBAP length of 0xFFFF, a late answer, one byte at a time, a flood of unsolicited
frames). pymodbus's own server cannot misbehave like this: it frames every answer right.

The device holds holding registers and coils and applies every write it is sent, whatever
its answer then says: a firmware bug in the answer does not undo the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import struct
import tty
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from pymodbus.framer import FramerRTU


class Misbehaviour(enum.Enum):
    """How the device answers a request."""

    NONE = "none"
    #: The answer carries another transaction id (one the client never sent).
    WRONG_TID = "wrong_tid"
    #: The answer carries transaction id 0 (never one pymodbus sends on TCP) and a wrong value.
    TID_ZERO = "tid_zero"
    #: The answer comes from another unit.
    WRONG_UNIT = "wrong_unit"
    #: A register answer to every request (fc 3 for a write, fc 4 for a read of fc 3).
    WRONG_FC = "wrong_fc"
    #: An answer with a function code no Modbus client knows (0x41).
    UNKNOWN_FC = "unknown_fc"
    #: A register answer whose byte count says more bytes than follow.
    COUNT_TOO_LONG = "count_too_long"
    #: A register answer whose byte count says fewer bytes than follow.
    COUNT_TOO_SHORT = "count_too_short"
    #: An MBAP header with length 0xFFFF and nothing after it.
    LENGTH_FFFF = "length_ffff"
    #: An MBAP header with length 0xFFFF and that many bytes following.
    LENGTH_FFFF_FULL = "length_ffff_full"
    #: The right answer, `delay` s late.
    LATE = "late"
    #: The right answer, one byte every `delay` s.
    TRICKLE = "trickle"
    #: The right answer, and a continuous stream of unsolicited frames (stale transaction
    #: ids, and transaction id 0 with a wrong value) until the behaviour changes.
    FLOOD = "flood"
    #: No answer at all.
    SILENT = "silent"


#: The value a hostile answer carries where it carries one: never a register's real value.
WRONG_VALUE = 0xDEAD
#: The function code of UNKNOWN_FC.
UNKNOWN_FUNCTION = 0x41
#: Frames a flood writes at a time (11 bytes each).
FLOOD_BURST = 512


@dataclass
class Counters:
    """What the device saw: requests by function code, frames it flooded."""

    requests: dict[int, int] = field(default_factory=dict)
    flooded: int = 0

    def saw(self, function: int) -> None:
        """Count one request."""
        self.requests[function] = self.requests.get(function, 0) + 1

    @property
    def total(self) -> int:
        """Every request seen."""
        return sum(self.requests.values())


class HostileDevice:
    """The device's memory and answers, shared by its TCP server and its RTU line."""

    def __init__(self, unit: int, registers: dict[int, int]) -> None:
        self.unit = unit
        self.registers = dict(registers)
        self.coils: dict[int, bool] = {}
        self.behaviour = Misbehaviour.NONE
        #: LATE: how late the answer is; TRICKLE: the time between two bytes.
        self.delay = 0.0
        self.counters = Counters()
        #: Errors of the device's own tasks (a test asserts there are none).
        self.errors: list[BaseException] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def set(self, behaviour: Misbehaviour, delay: float = 0.0) -> None:
        """Misbehave this way from the next request on (NONE: behave)."""
        self.behaviour = behaviour
        self.delay = delay

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run `work` as a task whose failure is kept in `errors`, cancelled by cancel_all()."""
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            error = task.exception()
            if not isinstance(error, ConnectionError):  # the client went away: not ours
                assert error is not None
                self.errors.append(error)

    @property
    def idle(self) -> bool:
        """True when no answer is on its way (late, trickling) and no flood runs."""
        return not self._tasks

    async def cancel_all(self) -> None:
        """Cancel every task of the device and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def answer(self, pdu: bytes) -> bytes:
        """The right answer PDU to a request PDU (an exception answer for what it lacks);
        applies writes."""
        fc = pdu[0]
        self.counters.saw(fc)
        if fc in (3, 4) and len(pdu) >= 5:
            address, count = struct.unpack(">HH", pdu[1:5])
            words = [self.registers.get(address + i) for i in range(count)]
            if None in words or not 1 <= count <= 125:
                return bytes([fc | 0x80, 2])
            return bytes([fc, 2 * count]) + b"".join(struct.pack(">H", w or 0) for w in words)
        if fc == 6 and len(pdu) >= 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            self.registers[address] = value
            return pdu[:5]
        if fc == 16 and len(pdu) >= 6:
            address, count = struct.unpack(">HH", pdu[1:5])
            for i in range(count):
                self.registers[address + i] = struct.unpack(">H", pdu[6 + 2 * i : 8 + 2 * i])[0]
            return pdu[:5]
        if fc == 5 and len(pdu) >= 5:
            address, value = struct.unpack(">HH", pdu[1:5])
            self.coils[address] = value == 0xFF00
            return pdu[:5]
        if fc == 1 and len(pdu) >= 5:
            address, count = struct.unpack(">HH", pdu[1:5])
            bits = [self.coils.get(address + i, False) for i in range(count)]
            packed = bytearray((count + 7) // 8)
            for i, bit in enumerate(bits):
                packed[i // 8] |= int(bit) << (i % 8)
            return bytes([fc, len(packed)]) + bytes(packed)
        return bytes([(fc & 0x7F) | 0x80, 1])

    def hostile(self, right: bytes) -> bytes:
        """The answer PDU as the behaviour rewrites it (the function code, the byte count)."""
        fc = right[0]
        if self.behaviour is Misbehaviour.WRONG_FC:
            # A register answer of the same size, under the other register function code.
            other = 4 if fc == 3 else 3
            return bytes([other, 2]) + struct.pack(">H", WRONG_VALUE)
        if self.behaviour is Misbehaviour.UNKNOWN_FC:
            return bytes([UNKNOWN_FUNCTION, 2]) + struct.pack(">H", WRONG_VALUE)
        if self.behaviour is Misbehaviour.COUNT_TOO_LONG and fc in (3, 4):
            return bytes([fc, right[1] + 2]) + right[2:]
        if self.behaviour is Misbehaviour.COUNT_TOO_SHORT and fc in (3, 4) and right[1] >= 2:
            # One register fewer said than sent, and the first one's value wrong.
            return bytes([fc, right[1] - 2]) + struct.pack(">H", WRONG_VALUE) + right[4:]
        return right


def mbap(tid: int, unit: int, pdu: bytes, length: int | None = None) -> bytes:
    """A Modbus TCP frame: the MBAP header (length: what it says, by default the true one)."""
    said = len(pdu) + 1 if length is None else length
    return struct.pack(">HHHB", tid, 0, said, unit) + pdu


def rtu(unit: int, pdu: bytes) -> bytes:
    """A Modbus RTU frame: unit, PDU and CRC."""
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


class _Outbox:
    """One connection's answers, written in order as a device's TCP stack sends them: an answer
    late or sent byte by byte holds back the ones after it, never interleaves with them."""

    def __init__(self, device: HostileDevice, writer: asyncio.StreamWriter) -> None:
        self.device = device
        self.writer = writer
        self._turn = asyncio.Lock()  # FIFO: the order answers were queued in
        self.flooding = False

    def send(self, frame: bytes, *, delay: float = 0.0, gap: float = 0.0) -> None:
        """Queue `frame`: `delay` s after its turn comes, one byte every `gap` s if gap > 0."""
        self.device.spawn(self._send(frame, delay, gap), "hostile answer")

    async def _send(self, frame: bytes, delay: float, gap: float) -> None:
        async with self._turn:
            if delay:
                await asyncio.sleep(delay)  # the device's own lateness, not synchronisation
            pieces = [frame[i : i + 1] for i in range(len(frame))] if gap else [frame]
            for i, piece in enumerate(pieces):
                if self.writer.is_closing():
                    return
                self.writer.write(piece)
                await self.writer.drain()
                if gap and i < len(pieces) - 1:
                    await asyncio.sleep(gap)  # the device's pace, not synchronisation

    async def flood(self, unit: int, last_tid: Callable[[], int]) -> None:
        """Unsolicited frames as fast as the link takes them while the behaviour is FLOOD:
        answers under the previous transaction id, and a wrong value under id 0."""
        zero = mbap(0, unit, bytes([3, 2]) + struct.pack(">H", WRONG_VALUE))
        try:
            while self.device.behaviour is Misbehaviour.FLOOD and not self.writer.is_closing():
                stale = (last_tid() - 1) % 0x10000
                burst = b"".join(
                    mbap(stale, unit, bytes([3, 2]) + struct.pack(">H", i)) + zero
                    for i in range(FLOOD_BURST // 2)
                )
                async with self._turn:
                    self.writer.write(burst)
                    await self.writer.drain()
                self.device.counters.flooded += FLOOD_BURST
                await asyncio.sleep(0)  # the client's loop turn: a flood, not a hang
        finally:
            self.flooding = False


class HostileTcp:
    """The device as a Modbus TCP server on 127.0.0.1 (port 0)."""

    def __init__(self, device: HostileDevice) -> None:
        self.device = device
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.StreamWriter, asyncio.Task[Any]] = {}
        #: Connections accepted so far: a client that reconnects shows here.
        self.accepted = 0

    @property
    def port(self) -> int:
        """The port the server listens on."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self._connections)

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        """Stop listening, drop every connection, end every task."""
        if self._server is not None:
            self._server.close()
        handlers = list(self._connections.values())
        for writer in list(self._connections):
            writer.transport.abort()
        await self.device.cancel_all()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[writer] = task
        self.accepted += 1
        outbox = _Outbox(self.device, writer)
        last = 0

        def last_tid() -> int:
            return last

        try:
            while True:
                header = await reader.readexactly(7)
                tid, _protocol, length, unit = struct.unpack(">HHHB", header)
                pdu = await reader.readexactly(length - 1)
                last = tid
                self._answer(outbox, tid, unit, pdu, last_tid)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client went away
        finally:
            del self._connections[writer]
            writer.transport.abort()

    def _answer(
        self, outbox: _Outbox, tid: int, unit: int, pdu: bytes, last: Callable[[], int]
    ) -> None:
        device = self.device
        right = device.answer(pdu)
        how = device.behaviour
        if how is Misbehaviour.SILENT:
            return
        if how is Misbehaviour.WRONG_TID:
            outbox.send(mbap((tid + 1000) % 0x10000 or 1, unit, right))
        elif how is Misbehaviour.TID_ZERO:
            # A read answered with a wrong value; a write with its very echo.
            wrong = bytes([right[0], 2]) + struct.pack(">H", WRONG_VALUE)
            outbox.send(mbap(0, unit, wrong if right[0] in (3, 4) else right))
        elif how is Misbehaviour.WRONG_UNIT:
            outbox.send(mbap(tid, (unit + 1) % 256, right))
        elif how is Misbehaviour.LENGTH_FFFF:
            outbox.send(mbap(tid, unit, right, length=0xFFFF))
        elif how is Misbehaviour.LENGTH_FFFF_FULL:
            outbox.send(mbap(tid, unit, right + bytes(0xFFFF - 1 - len(right)), length=0xFFFF))
        elif how is Misbehaviour.LATE:
            outbox.send(mbap(tid, unit, right), delay=device.delay)
        elif how is Misbehaviour.TRICKLE:
            outbox.send(mbap(tid, unit, right), gap=device.delay)
        elif how is Misbehaviour.FLOOD:
            outbox.send(mbap(tid, unit, right))
            if not outbox.flooding:
                outbox.flooding = True
                device.spawn(outbox.flood(unit, last), "hostile flood")
        else:
            outbox.send(mbap(tid, unit, device.hostile(right)))


class HostileRtu:
    """The device on the device end of a serial line (a pty of drivers.sim.PtyBridge)."""

    def __init__(self, device: HostileDevice, path: str) -> None:
        self.device = device
        self._path = path
        self._fd: int | None = None
        self._buffer = b""

    def start(self) -> None:
        """Open the line and answer what arrives (inside the running loop)."""
        fd = os.open(self._path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(fd)
        self._fd = fd
        asyncio.get_running_loop().add_reader(fd, self._readable)

    async def stop(self) -> None:
        """Stop answering and close the line."""
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        await self.device.cancel_all()

    def _readable(self) -> None:
        assert self._fd is not None
        try:
            self._buffer += os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        # The driver sends only 8-byte requests in these tests (fc 3, 5, 6): one frame each.
        while len(self._buffer) >= 8:
            frame, self._buffer = self._buffer[:8], self._buffer[8:]
            unit, pdu = frame[0], frame[1:6]
            if unit != self.device.unit:
                continue
            self._answer(unit, pdu)

    def _answer(self, unit: int, pdu: bytes) -> None:
        device = self.device
        right = device.answer(pdu)
        how = device.behaviour
        if how is Misbehaviour.SILENT:
            return
        if how is Misbehaviour.WRONG_UNIT:
            self._write(rtu((unit + 1) % 256, right))
        elif how is Misbehaviour.TRICKLE:
            device.spawn(self._trickle(rtu(unit, right), device.delay), "hostile rtu trickle")
        elif how is Misbehaviour.LATE:
            device.spawn(self._later(rtu(unit, right), device.delay), "hostile rtu late")
        else:
            self._write(rtu(unit, device.hostile(right)))

    def _write(self, data: bytes) -> None:
        if self._fd is not None:
            with contextlib.suppress(BlockingIOError):
                os.write(self._fd, data)

    async def _later(self, frame: bytes, delay: float) -> None:
        await asyncio.sleep(delay)  # the device's own lateness
        self._write(frame)

    async def _trickle(self, frame: bytes, gap: float) -> None:
        for i in range(len(frame)):
            self._write(frame[i : i + 1])
            if i < len(frame) - 1:
                await asyncio.sleep(gap)  # the device's pace
