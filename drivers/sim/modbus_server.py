"""Modbus simulators: process images served by pymodbus over TCP (a gateway) or RTU (a pty)."""

from __future__ import annotations

import logging
import os
import secrets
import tempfile
from collections.abc import Awaitable, Callable
from typing import cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusBaseServer
from pymodbus.simulator import SimAction, SimDevice

from drivers.base import Value
from drivers.config import url_host
from drivers.points import ModbusTable
from drivers.sim.image import ProcessImage
from drivers.sim.modbus_protocol import (
    IDLE_TIMEOUT,
    MAX_CONNECTIONS,
    StrictRtuServer,
    StrictTcpServer,
    check_bounds,
)
from drivers.sim.modbus_unit import ModbusUnit, table_of
from drivers.sim.pty_bridge import PtyBridge

log = logging.getLogger("drivers.sim")


class _ModbusSimBase:
    """What the TCP and RTU simulators share: tables, hooks, publish, exception injection."""

    def __init__(self, devices: dict[int, ProcessImage]) -> None:
        if not devices:
            raise ValueError("a Modbus simulator needs at least one device")
        self._units = {unit: ModbusUnit(unit, image) for unit, image in devices.items()}
        self._by_device = {u.image.device: u for u in self._units.values()}
        self._exceptions: dict[tuple[int, ModbusTable | None], int] = {}
        self._server: ModbusBaseServer | None = None
        self._connections = 0
        # True while publish() writes the tables, so the hook neither faults nor copies back.
        # Nothing on that path suspends (the hook never awaits), so no request interleaves.
        self._publishing = False

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    @property
    def connections(self) -> int:
        """Client connections open now (TCP); the serial line counts as one while it runs."""
        return self._connections

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        raise NotImplementedError

    def _after_start(self, server: ModbusBaseServer) -> None:
        """Note what the server bound (the TCP port)."""

    def _after_stop(self) -> None:
        """Release what _create_server set up beyond the pymodbus server."""

    async def prepare(self) -> None:
        """Nothing to do ahead: a Modbus simulator starts in well under a millisecond."""

    async def start(self) -> None:
        """Build fresh tables from the images' current values and start serving."""
        if self._server is not None:
            return
        devices = [u.sim_device(self._action(u)) for u in self._units.values()]
        server = self._create_server(devices)
        self._server = server
        try:
            # Tables are filled before the endpoint opens, so no client sees power-on zeros.
            for unit in self._units.values():
                await self._write_values(unit, unit.image.snapshot())
            await server.serve_forever(background=True)
        except BaseException:
            self._server = None
            await _shutdown(server)
            self._after_stop()
            raise
        self._after_start(server)

    async def stop(self) -> None:
        """Stop serving and close every client connection (a killed device)."""
        server, self._server = self._server, None
        if server is not None:
            await _shutdown(server)
            self._after_stop()
        self._connections = 0

    async def publish(self, device: str, values: dict[str, Value]) -> None:
        """Encode model values into the device's tables (kept in the image while stopped)."""
        unit = self._by_device.get(device)
        if unit is None:
            raise KeyError(f"no Modbus device {device!r} in this simulator")
        unknown = sorted(set(values) - set(unit.points))
        if unknown:
            raise KeyError(f"{device}: no tags {', '.join(unknown)} on this Modbus device")
        if self._server is not None:
            await self._write_values(unit, values)

    def inject_exception(
        self, unit: int, code: int | None, table: ModbusTable | None = None
    ) -> None:
        """Answer every request to a unit (or a table of it) with an exception code; None clears."""
        if unit not in self._units:
            raise KeyError(f"no Modbus unit {unit} in this simulator")
        if code is None:
            self._exceptions.pop((unit, table), None)
            return
        ExcCodes(code)  # raises ValueError for a code pymodbus cannot send
        self._exceptions[(unit, table)] = code

    def _action(self, unit: ModbusUnit) -> SimAction:
        """The pymodbus `action` hook of one unit: injected exceptions, client writes → image.

        It never awaits: an action that suspends lets pymodbus match a late reply to the next
        request (libraries.md).
        """

        async def action(
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if self._publishing:
                return None
            table = table_of(function_code)
            span = (
                unit.bit_span(function_code, address, count, set_values)
                if table is not None and table.is_bit_table
                else None
            )
            code = self._injected(unit.unit, table)
            if code is not None:
                return ExcCodes(code)
            if span is not None and table is not None and not unit.bits[table].issuperset(span):
                # pymodbus stores bits in 16-bit words and answers for every bit of a word
                # it holds; a real device refuses addresses it does not have.
                return ExcCodes.ILLEGAL_ADDRESS
            if set_values is not None and table is not None:
                unit.copy_client_write(table, start_address, address, registers, set_values)
            return None

        return action

    def _injected(self, unit: int, table: ModbusTable | None) -> int | None:
        """The exception code injected for this unit and table, if any."""
        code = self._exceptions.get((unit, table)) if table is not None else None
        return code if code is not None else self._exceptions.get((unit, None))

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        # A request for a unit we do not simulate is dropped here, before pymodbus looks the
        # unit up (which answers exception 4 and logs a KeyError traceback): the request
        # handler only acts on a PDU when this hook returns one, so the unit stays silent like
        # a real RS-485 slave that is not addressed.
        if not sending and pdu.dev_id not in self._units:
            log.debug("ignoring a request for unit %d, which is not simulated", pdu.dev_id)
            return cast(ModbusPDU, None)
        if not sending:
            self._units[pdu.dev_id].note_request(pdu.function_code, pdu.address, pdu.count)
        return pdu

    def _trace_connect(self, connected: bool) -> None:
        self._connections += 1 if connected else -1

    async def _write_values(self, unit: ModbusUnit, values: dict[str, Value]) -> None:
        server = self._server
        if server is None:
            return
        self._publishing = True
        try:
            await unit.store(server, values)
        finally:
            self._publishing = False


async def _shutdown(server: ModbusBaseServer) -> None:
    """Close a pymodbus server's endpoint and its client connections."""
    # pymodbus leaves shutdown() unannotated.
    shutdown = cast(Callable[[], Awaitable[None]], server.shutdown)
    await shutdown()


class ModbusSimServer(_ModbusSimBase):
    """A Modbus TCP gateway serving several unit ids, each with four tables.

    It binds 127.0.0.1 unless the caller names another host (`cellctl sim --host`). A client
    that sends and is answered nothing for `idle_timeout` seconds is disconnected, and beyond
    `max_connections` open ones a new connection is closed at once (modbus_protocol.py).
    """

    def __init__(
        self,
        devices: dict[int, ProcessImage],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(devices)
        check_bounds(idle_timeout, max_connections)
        self._host = host
        self._port = port
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections

    @property
    def host(self) -> str:
        """The address it binds, as given (an IPv6 address without brackets)."""
        return self._host

    @property
    def port(self) -> int:
        """The TCP port; 0 until a server started with port 0 has bound one."""
        return self._port

    @property
    def endpoint(self) -> str:
        """'host:port' as a Modbus TCP client connects to it ('[::1]:502' for IPv6)."""
        return f"{url_host(self._host)}:{self._port}"

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        return StrictTcpServer(
            devices,
            address=(self._host, self._port),
            trace_pdu=self._trace_pdu,
            trace_connect=self._trace_connect,
            idle_timeout=self._idle_timeout,
            max_connections=self._max_connections,
        )

    def _after_start(self, server: ModbusBaseServer) -> None:
        # Remember the port that port 0 bound, so a restart binds the same one.
        sockets = getattr(server.transport, "sockets", None) or []
        if sockets:
            self._port = int(sockets[0].getsockname()[1])


class ModbusRtuSimServer(_ModbusSimBase):
    """Modbus RTU slaves on a pseudo-terminal line; clients open `client_path` with pyserial.

    `client_path` is a symlink that stays the same across stop/start while the ptys behind it
    are new each start (like a USB adaptor's stable /dev/serial/by-id link): stop() unplugs the
    line, so the client sees it hang up; freeze() keeps it plugged in but silent.
    """

    def __init__(self, devices: dict[int, ProcessImage], baudrate: int = 19200) -> None:
        super().__init__(devices)
        self._baudrate = baudrate
        self._bridge = PtyBridge()
        self._link = os.path.join(
            tempfile.gettempdir(), f"cellctl-modbus-rtu-{os.getpid()}-{secrets.token_hex(4)}"
        )

    @property
    def client_path(self) -> str:
        """The serial port path a client opens (exists only while the simulator runs)."""
        return self._link

    @property
    def endpoint(self) -> str:
        """The serial port path a client opens."""
        return self._link

    def freeze(self, frozen: bool) -> None:
        """Drop every byte on the line while frozen: the devices never answer."""
        self._bridge.freeze(frozen)

    def _create_server(self, devices: list[SimDevice]) -> ModbusBaseServer:
        self._bridge.start()
        # Replace the link atomically, so a client never sees a half-made path.
        temporary = f"{self._link}.{secrets.token_hex(4)}"
        os.symlink(self._bridge.client_path, temporary)
        os.replace(temporary, self._link)
        return StrictRtuServer(
            devices,
            port=self._bridge.device_path,
            baudrate=self._baudrate,
            trace_pdu=self._trace_pdu,
            trace_connect=self._trace_connect,
        )

    def _after_stop(self) -> None:
        if os.path.islink(self._link):
            os.unlink(self._link)
        self._bridge.stop()
