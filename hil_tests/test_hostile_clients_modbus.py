"""Our Modbus simulators as hostile clients see them: raw bytes on a socket or a pty (never
pymodbus's client, which would hide them). Each hostile client gets the protocol's answer
while a well-behaved client on its own connection keeps reading the right values, and the
server's sockets and memory stay bounded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
import tty
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from types import TracebackType

import pytest
from pymodbus.framer import FramerRTU

from drivers.sim.modbus_server import ModbusRtuSimServer, ModbusSimServer
from hil_tests.modbus_fixtures import (
    AFTER,
    BLOCK,
    RUN,
    no_tracebacks,
    press_image,
    stays_false,
    wait_until,
)
from hil_tests.support import with_room

ASYNC = pytest.mark.asyncio
UNIT = 1
IDLE = 0.3  # the tests' idle timeout: short, yet many times a bystander's poll period
BYSTANDER_PERIOD = 0.005
BLOCK_VALUES = [1000 + i for i in range(len(BLOCK))]  # press_image's hr:100…109
# Frames a Modbus TCP client sends: MBAP header (transaction, protocol 0, length, unit) + PDU.
MBAP = struct.Struct(">HHHB")


def mbap(transaction: int, pdu: bytes, unit: int = UNIT) -> bytes:
    """A Modbus TCP request frame."""
    return MBAP.pack(transaction, 0, len(pdu) + 1, unit) + pdu


def read_hr(address: int, count: int = 1) -> bytes:
    """The PDU of a holding register read."""
    return struct.pack(">BHH", 3, address, count)


def registers_answer(values: list[int]) -> bytes:
    """The PDU answering a holding register read with these values."""
    return struct.pack(f">BB{len(values)}H", 3, 2 * len(values), *values)


def refusal(function_code: int, code: int) -> bytes:
    """An exception response PDU."""
    return bytes([function_code | 0x80, code])


async def read_frame(reader: asyncio.StreamReader, within: float) -> tuple[int, int, bytes]:
    """The next Modbus TCP frame a server sends: (transaction, unit, PDU)."""
    async with asyncio.timeout(within):
        header = await reader.readexactly(MBAP.size)
        transaction, protocol, length, unit = MBAP.unpack(header)
        assert protocol == 0
        return transaction, unit, await reader.readexactly(length - 1)


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Wait for the server to close the connection; what it sent before (b'' for nothing)."""
    async with asyncio.timeout(within):
        return await reader.read()


@asynccontextmanager
async def tcp_sim(
    idle_timeout: float = IDLE, max_connections: int = 100
) -> AsyncIterator[ModbusSimServer]:
    """A running TCP simulator of the press at unit 1, with the tests' idle timeout."""
    server = ModbusSimServer(
        {UNIT: press_image()}, idle_timeout=idle_timeout, max_connections=max_connections
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@asynccontextmanager
async def connection(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A raw TCP connection to the simulator, closed on exit."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class Bystander:
    """A well-behaved client on its own connection: reads hr:100…109 over and over and checks
    every answer (transaction id, unit, values); `more()` shows it is still being served."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.reads = 0
        self._task: asyncio.Task[None] | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Bystander:
        reader, self._writer = await asyncio.open_connection("127.0.0.1", self._port)
        self._task = asyncio.create_task(self._poll(reader, self._writer))
        await self.more(1)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, writer = self._task, self._writer
        assert task is not None and writer is not None
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task  # a failure of the bystander fails the test here
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def _poll(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transaction = 0
        expected = registers_answer(BLOCK_VALUES)
        while True:
            transaction = transaction % 0xFFFF + 1
            writer.write(mbap(transaction, read_hr(BLOCK[0].address, len(BLOCK))))
            await writer.drain()
            # A poll answered within a loaded machine's room, always the right values.
            assert await read_frame(reader, with_room(0.5)) == (transaction, UNIT, expected)
            self.reads += 1
            await asyncio.sleep(BYSTANDER_PERIOD)  # its poll period (not synchronisation)

    async def more(self, reads: int = 3) -> None:
        """Wait until it has had `reads` more right answers (its failure, if it failed)."""
        task = self._task
        assert task is not None
        target = self.reads + reads
        await wait_until(lambda: self.reads >= target or task.done(), 10.0, "the bystander")
        if task.done():
            task.result()  # raises what stopped it
            raise AssertionError("the bystander stopped")


def server_sockets(port: int) -> int:
    """This process's open sockets that a server on `port` accepted (the listener not counted):
    the simulator's file descriptors for client connections."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].split(":")[1], 16)
            if local_port == port and fields[3] != "0A" and fields[9] in inodes:
                count += 1
    return count


def rss_kib() -> int:
    """This process's resident memory (KiB)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


# -- requests the protocol refuses --------------------------------------------------------

# (what, request PDU, the exception code a conformant device answers with)
REFUSED: list[tuple[str, bytes, int]] = [
    ("hr read of 126 registers", read_hr(100, 126), 3),
    ("ir read of 126 registers", struct.pack(">BHH", 4, 0, 126), 3),
    ("coil read of 2001 bits", struct.pack(">BHH", 1, 0, 2001), 3),
    ("di read of 2001 bits", struct.pack(">BHH", 2, 0, 2001), 3),
    ("hr read of 0 registers", read_hr(100, 0), 3),
    ("coil write of 0x1234", struct.pack(">BHH", 5, RUN.address, 0x1234), 3),
    ("hr read with 2 bytes too many", read_hr(100) + b"\x00\x05", 3),
    ("write of 124 registers", struct.pack(">BHHBH", 16, 0, 124, 2, 5), 3),
    ("write whose byte count is wrong", struct.pack(">BHHBH", 16, 0, 1, 4, 5), 3),
    ("write of 1969 coils", struct.pack(">BHHB", 15, 0, 1969, 247) + bytes(247), 3),
    ("unknown function code 0x41", bytes([0x41, 0, 0]), 1),
    ("diagnostics (fc 8), not simulated", bytes([8, 0, 0, 0x12, 0x34]), 1),
    ("device identification (fc 43)", bytes([0x2B, 0x0E, 1, 0]), 1),
    ("an exception code as a request", bytes([0x83, 2]), 1),
]


@ASYNC
async def test_bad_requests_get_the_protocols_exception(caplog: pytest.LogCaptureFixture) -> None:
    """Over-long reads, a coil value that is not ON/OFF, a wrong length: exception 3; an
    unknown function code: exception 1; each under its own function code, transaction id and
    unit, while a good client on another connection reads right values throughout."""
    caplog.set_level(logging.DEBUG, logger="pymodbus")
    image = press_image()
    server = ModbusSimServer({UNIT: image}, idle_timeout=IDLE)
    await server.start()
    try:
        async with Bystander(server.port) as good, connection(server.port) as (reader, writer):
            answers = []
            for transaction, (_what, pdu, _code) in enumerate(REFUSED, start=1):
                writer.write(mbap(transaction, pdu))
                answers.append(await read_frame(reader, with_room(0.5)))
            expected = [
                (t, UNIT, refusal(pdu[0], code)) for t, (_, pdu, code) in enumerate(REFUSED, 1)
            ]
            assert answers == expected
            await good.more()
            # The refused coil write changed nothing; a legal ON does.
            assert image.get(RUN.name) is False
            writer.write(mbap(99, struct.pack(">BHH", 5, RUN.address, 0xFF00)))
            assert await read_frame(reader, 1.0) == (99, UNIT, bytes([5, 0, 0, 0xFF, 0]))
            assert image.get(RUN.name) is True
    finally:
        await server.stop()
    assert no_tracebacks(caplog.records) == []


# -- pipelining ---------------------------------------------------------------------------


@ASYNC
async def test_pipelined_requests_are_all_answered_in_order() -> None:
    """Requests sent in one segment are each answered, in order (30 of them: more bytes than
    pymodbus's own receive buffer), an exception among them in its place; a frame split over
    several segments is answered once it is whole."""
    async with tcp_sim() as server, connection(server.port) as (reader, writer):
        requests = [mbap(t, read_hr(100 + t % 10)) for t in range(1, 31)]
        requests[14] = mbap(15, bytes([0x41]))  # an unknown function code in the middle
        requests[20] = mbap(21, struct.pack(">BHH", 6, AFTER.address, 77))  # a write…
        requests[21] = mbap(22, read_hr(AFTER.address))  # …read back by the next one
        writer.write(b"".join(requests))
        answers = [await read_frame(reader, with_room(0.5)) for _ in requests]
        expected = [(t, UNIT, registers_answer([1000 + t % 10])) for t in range(1, 31)]
        expected[14] = (15, UNIT, refusal(0x41, 1))
        expected[20] = (21, UNIT, struct.pack(">BHH", 6, AFTER.address, 77))
        expected[21] = (22, UNIT, registers_answer([77]))
        assert answers == expected

        # Two whole frames and the first 5 bytes of a third, then the rest of it.
        first, second, third = (mbap(40 + i, read_hr(100 + i)) for i in range(3))
        writer.write(first + second + third[:5])
        assert [await read_frame(reader, 1.0) for _ in range(2)] == [
            (40, UNIT, registers_answer([1000])),
            (41, UNIT, registers_answer([1001])),
        ]
        writer.write(third[5:])
        assert await read_frame(reader, 1.0) == (42, UNIT, registers_answer([1002]))
        # One byte per segment.
        for byte in mbap(50, read_hr(109)):
            writer.write(bytes([byte]))
            await writer.drain()
        assert await read_frame(reader, 1.0) == (50, UNIT, registers_answer([1009]))


# -- garbage and half frames --------------------------------------------------------------


@ASYNC
async def test_garbage_closes_that_connection_only(caplog: pytest.LogCaptureFixture) -> None:
    """Bytes that cannot be Modbus TCP (an HTTP request, a length of 0xFFFF) close the
    connection that sent them, with no answer and no traceback; a request for a unit nobody
    simulates gets no answer; a good client is served throughout; no socket is left behind."""
    caplog.set_level(logging.DEBUG)
    async with tcp_sim() as server, Bystander(server.port) as good:
        garbage = [
            b"GET / HTTP/1.1\r\nHost: plc\r\n\r\n",
            MBAP.pack(7, 0, 0xFFFF, UNIT) + bytes(100),
            MBAP.pack(8, 0, 0, UNIT),  # a length that leaves no room for a function code
            os.urandom(64).replace(b"\x00", b"\x01"),  # protocol id is never 0
        ]
        for junk in garbage:
            async with connection(server.port) as (reader, writer):
                writer.write(junk)
                assert await closed_by_server(reader, with_room(0.5)) == b""
            await good.more()
        async with connection(server.port) as (reader, writer):
            writer.write(mbap(1, read_hr(100), unit=9))  # not simulated: silence, as on RS-485
            writer.write(mbap(2, read_hr(100)))
            assert await read_frame(reader, 1.0) == (2, UNIT, registers_answer([1000]))
        await wait_until(lambda: server.connections == 1, 2.0, "only the bystander connected")
        assert server_sockets(server.port) == 1
        await good.more()
    assert no_tracebacks(caplog.records) == []


@ASYNC
async def test_half_frame_then_silence_is_dropped_at_the_idle_timeout() -> None:
    """A client that sends half a frame and falls silent is disconnected after the idle
    timeout (not before, not never); an idle client too; a client polling is kept."""
    async with tcp_sim() as server, Bystander(server.port) as good:
        async with (
            connection(server.port) as (half, half_writer),
            connection(server.port) as (
                idle,
                _,
            ),
        ):
            start = time.monotonic()
            half_writer.write(mbap(1, read_hr(100))[:5])
            assert await closed_by_server(half, with_room(IDLE)) == b""
            assert await closed_by_server(idle, with_room(IDLE)) == b""
            elapsed = time.monotonic() - start
        assert IDLE * 0.9 <= elapsed <= with_room(IDLE)
        await good.more()  # polling keeps its connection open: reads go on
        assert server.connections == 1


@ASYNC
async def test_a_client_that_never_reads_is_pushed_back_then_dropped() -> None:
    """A client that pipelines reads and never reads the answers: the server stops reading
    it (the kernel's buffers fill, not the server's memory), drops it at the idle timeout and
    keeps its socket no longer; a good client is served throughout."""
    loop = asyncio.get_running_loop()
    # 12 kB of requests for 183 kB of answers (hr:0…88 are defined).
    burst = b"".join(mbap(t, read_hr(0, 89)) for t in range(1, 1001))
    async with tcp_sim() as server, Bystander(server.port) as good:
        rss = rss_kib()
        with socket.socket() as hostile:
            hostile.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            hostile.setblocking(False)
            await loop.sock_connect(hostile, ("127.0.0.1", server.port))
            sent, deadline = 0, time.monotonic() + with_room(IDLE) + 5
            with contextlib.suppress(ConnectionError):  # the server dropped it: the end
                while sent < 64_000_000 and time.monotonic() < deadline:
                    try:
                        sent += hostile.send(burst)
                    except BlockingIOError:
                        await asyncio.sleep(0.001)  # the send buffer is full: let others run
            # Without pushing back the server would take requests for as long as they come.
            assert sent < 16_000_000, f"the server took {sent} bytes of requests"
            await wait_until(lambda: server.connections == 1, with_room(IDLE), "it dropped")
            # Its socket closed although answers wait for it (the client is still there).
            await wait_until(lambda: server_sockets(server.port) == 1, 2.0, "its socket closed")
        await good.more()
        assert server_sockets(server.port) == 1
        assert rss_kib() - rss < 8192


def stall_the_loop(seconds: float) -> None:
    """Block the running loop, as a loaded machine stalls a server (a fault, not a wait)."""
    time.sleep(seconds)


@ASYNC
async def test_a_request_sent_during_a_stall_is_not_taken_for_silence() -> None:
    """Idle means nothing arrived, not nothing read yet: a request that reached the socket
    while the server's loop stalled past the idle timeout is answered, not cut off."""
    loop = asyncio.get_running_loop()
    async with tcp_sim() as server, connection(server.port) as (reader, writer):
        writer.write(mbap(1, read_hr(100)))
        assert await read_frame(reader, 1.0) == (1, UNIT, registers_answer([1000]))
        # The next request leaves halfway to the server's idle deadline…
        loop.call_at(loop.time() + IDLE / 2, writer.write, mbap(2, read_hr(101)))
        # …while the loop stalls past it (the fault injected: a loaded machine), so that the
        # request is on the socket, unread, when the idle timer runs.
        stall_the_loop(IDLE * 1.5)
        assert await read_frame(reader, with_room(0.5)) == (2, UNIT, registers_answer([1001]))
        assert server.connections == 1


# -- many connections ---------------------------------------------------------------------


async def open_many(port: int, count: int, batch: int = 50) -> list[socket.socket]:
    """`count` raw connections to the port, opened `batch` at a time: within the listen
    backlog (100), so that none waits a second for a SYN retry; the caller closes them."""
    loop = asyncio.get_running_loop()
    opened: list[socket.socket] = []
    try:
        for first in range(0, count, batch):
            group = [socket.socket() for _ in range(min(batch, count - first))]
            opened += group
            for sock in group:
                sock.setblocking(False)
            await asyncio.gather(*(loop.sock_connect(s, ("127.0.0.1", port)) for s in group))
    except BaseException:
        close_all(opened)
        raise
    return opened


def close_all(sockets: list[socket.socket]) -> None:
    """Close the test's ends of raw connections."""
    for sock in sockets:
        sock.close()


@contextlib.contextmanager
def closing_all(sockets: list[socket.socket]) -> Iterator[list[socket.socket]]:
    """Close the sockets on exit."""
    try:
        yield sockets
    finally:
        close_all(sockets)


async def check_connection_flood(
    count: int, cap: int, idle_timeout: float, rss_tolerance_kib: int
) -> None:
    """`count` connections opened and left idle, twice: the server never holds more than `cap`
    (the rest closed at once, one warning per burst), closes the idle ones after the idle
    timeout, serves a good client throughout, and its sockets and memory come back."""
    fds_before = len(os.listdir("/proc/self/fd"))
    async with (
        tcp_sim(idle_timeout, max_connections=cap) as server,
        Bystander(server.port) as good,
    ):
        rss: list[int] = []  # after each round
        peak: list[int] = []  # while each round's connections are open
        for _round in range(2):  # the first round warms up (caches, allocator arenas)
            with closing_all(await open_many(server.port, count)):
                # Two round trips of the bystander: the loop has accepted the last of them and
                # closed those beyond the cap (a transport's socket closes a turn later).
                await good.more(2)
                assert server.connections <= cap
                # A connection refused at the cap is accepted, then aborted: its socket closes a
                # loop turn later, and under a 10,000-connect burst a few may still be closing.
                await wait_until(
                    lambda: server_sockets(server.port) <= cap,
                    with_room(0.5),
                    f"at most the cap ({cap}) of sockets held",
                )
                peak.append(rss_kib())
                await wait_until(
                    lambda: server.connections == 1, with_room(idle_timeout), "idle ones closed"
                )
                await good.more()
                assert server_sockets(server.port) == 1  # the bystander's
            rss.append(rss_kib())
        # Held connections cost no more than the tolerance (the test's own sockets included),
        # and what they cost comes back.
        assert peak[1] - rss[0] <= rss_tolerance_kib, f"RSS grew {peak[1] - rss[0]} KiB"
        assert rss[1] - rss[0] <= rss_tolerance_kib, f"RSS grew {rss[1] - rss[0]} KiB"
    # The loop closes a transport's socket on its next turn: wait for it, bounded.
    await wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before, 2.0, "fds back")


@ASYNC
async def test_connection_flood_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """300 idle connections against a cap of 50 (the extended tier opens 10,000)."""
    caplog.set_level(logging.INFO, logger="drivers.sim")
    # An idle timeout of 1 s, not IDLE: the flood shares the test's loop with the bystander,
    # and on a loaded machine 300 connects can keep the bystander from its turn for 0.3 s
    # (the server then rightly drops it as idle; a real client has a process of its own).
    await check_connection_flood(300, cap=50, idle_timeout=1.0, rss_tolerance_kib=2048)
    limit = [r for r in caplog.records if "the limit; refusing more" in r.getMessage()]
    # Once per burst of refusals (a slot freed by the idle timeout ends one), not once for
    # each of the 500 connections refused.
    assert 1 <= len(limit) <= 10
    assert limit[0].levelno == logging.WARNING


@pytest.mark.extended
@ASYNC
async def test_ten_thousand_connections_are_bounded() -> None:
    """10,000 idle connections: the server holds at most its cap and gives everything back."""
    await check_connection_flood(10_000, cap=100, idle_timeout=1.0, rss_tolerance_kib=8192)


# -- RTU over the pty ---------------------------------------------------------------------


def rtu(pdu: bytes, unit: int = UNIT) -> bytes:
    """A Modbus RTU frame: unit, PDU, CRC."""
    frame = bytes([unit]) + pdu
    return frame + FramerRTU.compute_CRC(frame).to_bytes(2, "big")


class RawLine:
    """The client end of the simulator's serial line, opened as a plain tty (no pyserial)."""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self._fd)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self._read)
        self.received = bytearray()

    def _read(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.received += os.read(self._fd, 4096)

    def send(self, data: bytes) -> None:
        """Write bytes on the line."""
        os.write(self._fd, data)

    def _answer_size(self) -> int:
        data = self.received
        if len(data) < 3:
            return 0
        if data[1] & 0x80:
            return 5
        return 5 + data[2] if data[1] in (1, 2, 3, 4, 23) else 8

    async def answer(self, within: float = 2.0) -> bytes:
        """The next frame the slave sends (its CRC checked)."""
        await wait_until(
            lambda: 0 < self._answer_size() <= len(self.received), within, "an RTU answer"
        )
        size = self._answer_size()
        frame = bytes(self.received[:size])
        del self.received[:size]
        assert frame == rtu(frame[1:-2], frame[0]), f"bad CRC in {frame.hex()}"
        return frame

    def close(self) -> None:
        """Close the tty."""
        self._loop.remove_reader(self._fd)
        os.close(self._fd)


@ASYNC
async def test_rtu_line_answers_the_next_good_frame_after_noise() -> None:
    """Noise, half frames, a bad CRC, a header announcing 200 bytes that never come: the next
    good frame is answered each time (written at once after it, so that noise and frame may
    arrive together); bad requests get exception 3 or 1; noise itself is never answered."""
    server = ModbusRtuSimServer({UNIT: press_image()})
    await server.start()
    line = RawLine(server.client_path)
    try:
        good = rtu(read_hr(AFTER.address))
        answer = rtu(registers_answer([4242]))
        noise = [
            b"\x55\xaa\x13\x07\x99",
            good[:4],  # half a frame
            good[:-1] + bytes([good[-1] ^ 0xFF]),  # a bad CRC
            bytes([UNIT, 0x10, 0, 0, 0, 100, 200]),  # a write announcing 200 bytes
            bytes([UNIT, 0x03]),
            os.urandom(300),
        ]
        for junk in noise:
            line.send(junk)
            line.send(good)
            assert await line.answer() == answer, f"after {junk.hex()}"
        refused = [
            (read_hr(100, 126), 3),
            (struct.pack(">BHH", 5, RUN.address, 0x1234), 3),
            (bytes([0x41, 0, 0]), 1),
        ]
        for pdu, code in refused:
            line.send(rtu(pdu))
            assert await line.answer() == rtu(refusal(pdu[0], code))
        line.send(good)
        assert await line.answer() == answer
        assert await stays_false(lambda: bool(line.received), 0.05)  # nothing else was answered
    finally:
        line.close()
        await server.stop()
