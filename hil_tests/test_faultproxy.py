"""The TCP fault proxy between a real pymodbus client and a real pymodbus server on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_asyncio
from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusIOException
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from cellctl.testing import wait_until
from drivers.sim.faultproxy import FaultProxy

REGISTERS = [7, 8, 9]
#: The raw client's timeout where a test waits for one to expire (freeze, garbage).
TIMEOUT = 0.2
#: Its timeout where an answer is expected: generous, so a loaded machine never fails a read.
PATIENT = 5.0


async def eventually(action: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    """Retry `action` until it returns True (errors count as False) within `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            if await action():
                return
        except (ConnectionException, ModbusIOException):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"action did not succeed within {within} s")
        await asyncio.sleep(0.02)


@pytest_asyncio.fixture
async def modbus_port() -> AsyncIterator[int]:
    """A pymodbus TCP server with separate tables; hr:0..2 hold 7, 8, 9."""

    def bits() -> list[SimData]:
        return [SimData(0, count=16, values=False, datatype=DataType.BITS)]

    def regs(values: list[int]) -> list[SimData]:
        padded = values + [0] * (16 - len(values))
        return [SimData(0, count=16, values=padded, datatype=DataType.REGISTERS)]

    device = SimDevice(id=1, simdata=(bits(), bits(), regs(REGISTERS), regs([])))
    server: Any = ModbusTcpServer(device, address=("127.0.0.1", 0))  # pymodbus is untyped
    await server.serve_forever(background=True)
    try:
        yield int(server.transport.sockets[0].getsockname()[1])
    finally:
        await server.shutdown()


@pytest_asyncio.fixture
async def proxy(modbus_port: int) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the Modbus server."""
    proxy = FaultProxy("127.0.0.1", modbus_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


@asynccontextmanager
async def connected(proxy: FaultProxy, patience: float) -> AsyncIterator[AsyncModbusTcpClient]:
    """A raw pymodbus client connected through the proxy, no retries, `patience` s timeout."""
    client = AsyncModbusTcpClient(
        "127.0.0.1",
        port=proxy.port,
        timeout=patience,
        retries=0,
        reconnect_delay=0.05,
        reconnect_delay_max=0.2,
    )
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


@pytest_asyncio.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[AsyncModbusTcpClient]:
    """A client through the proxy that waits long for an answer (PATIENT)."""
    async with connected(proxy, PATIENT) as client:
        yield client


@pytest_asyncio.fixture
async def quick_client(proxy: FaultProxy) -> AsyncIterator[AsyncModbusTcpClient]:
    """A client through the proxy whose requests time out after TIMEOUT."""
    async with connected(proxy, TIMEOUT) as client:
        yield client


async def read_ok(client: AsyncModbusTcpClient) -> bool:
    """True when hr:0..2 read back as the expected values."""
    response = await client.read_holding_registers(0, count=3, device_id=1)
    return not response.isError() and list(response.registers) == REGISTERS


@pytest.mark.asyncio
async def test_pass_through_read(proxy: FaultProxy, client: AsyncModbusTcpClient) -> None:
    assert await read_ok(client)
    assert proxy.stats.accepted == 1
    assert proxy.open_connections == 1
    # MBAP request 12 bytes, response 9 + 6 bytes.
    assert proxy.stats.bytes_to_server == 12
    assert proxy.stats.bytes_to_client == 15


@pytest.mark.asyncio
async def test_fragmented_response_still_reads(
    proxy: FaultProxy, client: AsyncModbusTcpClient
) -> None:
    proxy.fragment(3)
    for _ in range(3):
        assert await read_ok(client)


@pytest.mark.asyncio
async def test_latency_delays_each_answer(proxy: FaultProxy, client: AsyncModbusTcpClient) -> None:
    assert await read_ok(client)  # warm up
    proxy.latency(0.05)
    for _ in range(2):
        started = time.monotonic()
        assert await read_ok(client)
        # A lower bound only: a loaded machine may add any delay of its own.
        assert time.monotonic() - started >= 0.05


@pytest.mark.asyncio
async def test_freeze_times_out_and_swallows_requests(
    proxy: FaultProxy, quick_client: AsyncModbusTcpClient
) -> None:
    proxy.freeze(True)
    started = time.monotonic()
    with pytest.raises(ModbusIOException):
        await quick_client.write_register(0, 42, device_id=1)
    assert time.monotonic() - started < TIMEOUT * 3 + 1.0  # a bound with room (DESIGN §6)
    proxy.clear()
    # The write never reached the device; reads work again (after a reconnect if needed).
    await eventually(lambda: read_ok(quick_client))


@pytest.mark.asyncio
async def test_drop_and_refuse_lose_the_connection(
    proxy: FaultProxy, client: AsyncModbusTcpClient
) -> None:
    assert await read_ok(client)
    proxy.refuse(True)
    proxy.drop()
    await wait_until(lambda: not client.connected)
    with pytest.raises(ConnectionException):
        await client.read_holding_registers(0, count=3, device_id=1)
    await wait_until(lambda: proxy.stats.refused >= 1)  # the client tried to come back
    assert proxy.open_connections == 0
    proxy.clear()
    await eventually(lambda: read_ok(client))
    assert proxy.stats.accepted == 2


@pytest.mark.asyncio
async def test_drop_alone_makes_the_client_reconnect(
    proxy: FaultProxy, client: AsyncModbusTcpClient
) -> None:
    assert await read_ok(client)
    proxy.drop()
    # Only a client that saw the connection die opens a second one.
    await wait_until(lambda: proxy.stats.accepted == 2)
    await eventually(lambda: read_ok(client))


@pytest.mark.asyncio
async def test_garbage_gives_an_error_not_a_value(
    proxy: FaultProxy, quick_client: AsyncModbusTcpClient
) -> None:
    proxy.garbage(True)
    # pymodbus drops a frame with a wrong protocol id and times out waiting for a real one.
    for _ in range(2):
        try:
            response = await quick_client.read_holding_registers(0, count=3, device_id=1)
        except ModbusIOException:
            continue
        assert response.isError() or list(response.registers) != REGISTERS
    proxy.clear()
    await eventually(lambda: read_ok(quick_client))


# --- a plain echo server --------------------------------------------------------------------


@pytest_asyncio.fixture
async def echo_proxy() -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of an asyncio echo server that echoes until EOF."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionResetError:
            pass  # the proxy resets the link on drop() and stop()
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = FaultProxy("127.0.0.1", server.sockets[0].getsockname()[1])
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()
        server.close()
        await server.wait_closed()


async def echo_round_trip(proxy: FaultProxy, chunks: list[bytes]) -> bytes:
    """Send the chunks one by one, half-close, and return everything echoed until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        for chunk in chunks:
            writer.write(chunk)
            await writer.drain()
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), timeout=5.0)
    finally:
        writer.close()


@pytest.mark.asyncio
async def test_echo_round_trip_and_half_close(echo_proxy: FaultProxy) -> None:
    assert await echo_round_trip(echo_proxy, [b"hello ", b"world"]) == b"hello world"
    assert echo_proxy.stats.bytes_to_server == 11
    assert echo_proxy.stats.bytes_to_client == 11
    await wait_until(lambda: echo_proxy.open_connections == 0)


@pytest.mark.asyncio
async def test_jitter_and_fragments_keep_order(echo_proxy: FaultProxy) -> None:
    echo_proxy.latency(0.01, jitter=0.01)
    echo_proxy.fragment(4)
    chunks = [f"<{i:03d}>".encode() for i in range(40)]
    assert await echo_round_trip(echo_proxy, chunks) == b"".join(chunks)


@pytest.mark.asyncio
async def test_garbage_keeps_length(echo_proxy: FaultProxy) -> None:
    echo_proxy.garbage(True)
    sent = b"A" * 256
    echoed = await echo_round_trip(echo_proxy, [sent])
    assert len(echoed) == len(sent)
    assert echoed != sent


@pytest.mark.asyncio
async def test_drop_discards_delayed_answers_at_once(echo_proxy: FaultProxy) -> None:
    echo_proxy.latency(30.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    try:
        writer.write(b"late")
        await wait_until(lambda: echo_proxy.stats.bytes_to_server == 4)
        echo_proxy.drop()
        # "At once": well before the 30 s latency, with room for a loaded machine.
        await wait_until(lambda: echo_proxy.open_connections == 0, within=5.0)
        try:
            data = await asyncio.wait_for(reader.read(), timeout=5.0)
        except ConnectionResetError:
            data = b""
        assert data == b""
    finally:
        writer.close()
    assert echo_proxy.stats.bytes_to_client == 0


@pytest.mark.asyncio
async def test_refused_connection_is_reset(echo_proxy: FaultProxy) -> None:
    echo_proxy.refuse(True)
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    try:
        # A reset shows as ConnectionResetError, or as EOF if the reset beat our read.
        try:
            data = await asyncio.wait_for(reader.read(), timeout=5.0)
        except ConnectionResetError:
            data = b""
        assert data == b""
    finally:
        writer.close()
    assert echo_proxy.stats.refused == 1
    assert echo_proxy.stats.accepted == 0


@pytest.mark.asyncio
async def test_stop_drops_open_connections_and_restart_reuses_the_port(
    echo_proxy: FaultProxy,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", echo_proxy.port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), timeout=5.0) == b"ping"
    port = echo_proxy.port
    await echo_proxy.stop()
    try:
        try:
            data = await asyncio.wait_for(reader.read(), timeout=5.0)
        except ConnectionResetError:
            data = b""
        assert data == b""
    finally:
        writer.close()
    await echo_proxy.start()
    assert echo_proxy.port == port
    assert await echo_round_trip(echo_proxy, [b"again"]) == b"again"


def test_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("127.0.0.1", 502, host="0.0.0.0")
