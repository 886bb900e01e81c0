"""Drivers for a cell's devices: built from the cell file, connected with bounded retries."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from urllib.parse import urlparse

from rich.console import Console
from rich.live import Live
from rich.text import Text

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.cell.tags import device_config, get_tag, methods_by_device, point_for
from cellctl.errors import CellctlError
from drivers.base import ConnectTry, Driver
from drivers.config import MemoryConfig, ModbusRtuConfig, ModbusTcpConfig, OpcuaConfig, is_loopback
from drivers.memory import MemoryDriver
from drivers.points import OpcuaPoint


class DevicesUnreachable(CellctlError):
    """One or more devices could not be connected; `failures` says why for each, and the
    message has one line per device."""

    exit_code = exitcodes.DEVICE_FAILURE

    def __init__(self, failures: Mapping[str, str]) -> None:
        super().__init__("\n".join(failures.values()))
        self.failures = dict(failures)


class DeviceFailed(CellctlError):
    """A device failed a request (timeout, exception answer, lost connection)."""

    exit_code = exitcodes.DEVICE_FAILURE

    def __init__(self, message: str, *, device: str) -> None:
        super().__init__(message)
        self.device = device


def devices_for_tags(cell: Cell, tags: Iterable[str]) -> list[str]:
    """The devices the named tags live on, in cell-file order; unknown tags are refused."""
    needed = {get_tag(cell, tag).device for tag in tags}
    return [name for name in cell.devices if name in needed]


class InProcessDevice(CellctlError):
    """A memory device exists only inside the process that runs it; nothing else can reach it."""


def refuse_in_process_devices(cell: Cell, devices: Iterable[str]) -> None:
    """Raise InProcessDevice naming each memory device among `devices`."""
    memory = [d for d in devices if cell.devices[d].driver == "memory"]
    if memory:
        raise InProcessDevice(
            f"{', '.join(memory)}: a memory device lives inside the process that runs it "
            "(a controller or a test); this command cannot reach it"
        )


def build_drivers(cell: Cell, device_names: Sequence[str]) -> dict[str, Driver]:
    """One driver per named device; Modbus devices on one bus share one connection."""
    configs = {name: device_config(cell, name) for name in device_names}
    modbus = [c for c in configs.values() if isinstance(c, ModbusTcpConfig | ModbusRtuConfig)]
    drivers: dict[str, Driver] = {}
    # pymodbus and asyncua (≈0.4 s together) load only for a cell that has such devices.
    if modbus:
        from drivers.modbus import make_modbus_drivers

        drivers.update(make_modbus_drivers(modbus))
    for name, config in configs.items():
        if isinstance(config, OpcuaConfig):
            from drivers.opcua import OpcuaDriver

            points = [
                p
                for t, tag in cell.tags.items()
                if tag.device == name and isinstance(p := point_for(cell, t), OpcuaPoint)
            ]
            drivers[name] = OpcuaDriver(config, points, methods_by_device(cell).get(name, []))
        elif isinstance(config, MemoryConfig):
            drivers[name] = MemoryDriver(config)
    return {name: drivers[name] for name in device_names}


def device_host(cell: Cell, device: str) -> str | None:
    """The network host a device is reached at (None for serial and memory devices)."""
    config = device_config(cell, device)
    if isinstance(config, ModbusTcpConfig):
        return config.host
    if isinstance(config, OpcuaConfig):
        return urlparse(config.endpoint).hostname or ""
    return None


def non_loopback_endpoints(cell: Cell, tags: Iterable[str]) -> list[str]:
    """Devices of these tags that are not on this machine (serial lines count as real)."""
    remote: list[str] = []
    for device in devices_for_tags(cell, tags):
        host = device_host(cell, device)
        config = device_config(cell, device)
        # A serial line is a real machine, unless it is a simulator's pseudo-terminal.
        serial = isinstance(config, ModbusRtuConfig) and not os.path.realpath(
            config.port
        ).startswith("/dev/pts/")
        if serial or (host is not None and not is_loopback(host)):
            remote.append(f"{device} ({host or getattr(config, 'port', '')})")
    return remote


#: Seconds a connect may take before it is shown: a quick one shows nothing.
CONNECT_QUIET = 0.5
#: Seconds between two redraws of the lines in place: their time left counts down while a
#: try lasts (one try may last the whole connect against a host that does not answer).
CONNECT_REDRAW = 0.5


def try_line(attempt: ConnectTry) -> str:
    """One try of a connect, for the operator: device, endpoint, try, time left, last error."""
    why = f": {attempt.error}" if attempt.error else ""
    return (
        f"connecting to {attempt.device} ({attempt.endpoint}) … try {attempt.number}, "
        f"gives up in {attempt.left:.1f} s{why}"
    )


class ConnectReport:
    """Tells which device is being reached and which try this is, for a connect that takes
    longer than CONNECT_QUIET: in place on a terminal (gone once connected), one plain line
    per device and try elsewhere. Use it around the connect: `with ConnectReport() as r:`.

    The number of tries is not known in advance (each waits a jittered, growing delay until
    the deadline), so the line tells the time left instead.
    """

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)
        #: Each device still connecting, and its latest try.
        self.connecting: dict[str, ConnectTry] = {}
        self._shown = False
        self._timer: asyncio.TimerHandle | None = None
        self._live: Live | None = None

    def __call__(self, attempt: ConnectTry) -> None:
        """A driver starts a try (drivers.base.ConnectProgress)."""
        self.connecting[attempt.device] = attempt
        if self._shown:
            self._show([attempt])

    def reached(self, device: str) -> None:
        """The device's connect ended (connected or given up): it is no longer shown."""
        if self.connecting.pop(device, None) is not None and self._live is not None:
            self._live.update(self._lines(), refresh=True)

    def __enter__(self) -> ConnectReport:
        self._timer = asyncio.get_running_loop().call_later(CONNECT_QUIET, self._start)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._live is not None:
            self._live.stop()  # transient: the lines go
            self._live = None

    def _start(self) -> None:
        self._shown = True
        if self.console.is_terminal:
            # Redrawn by the loop (not rich's refresh thread, which would read `connecting`
            # while drivers change it).
            self._live = Live(
                self._lines(), console=self.console, transient=True, auto_refresh=False
            )
            self._live.start(refresh=True)
            self._redraw_later()
        else:
            self._show(list(self.connecting.values()))

    def _redraw_later(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(CONNECT_REDRAW, self._redraw)

    def _redraw(self) -> None:
        if self._live is not None:
            self._live.update(self._lines(), refresh=True)
            self._redraw_later()

    def _lines(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append("\n".join(try_line(a) for a in self.connecting.values()))
        return text

    def _show(self, attempts: list[ConnectTry]) -> None:
        if self._live is not None:
            self._live.update(self._lines(), refresh=True)
            return
        for attempt in attempts:
            self.console.print(try_line(attempt), markup=False)
