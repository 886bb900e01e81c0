"""The one place cellctl imports drivers.sim: serve a cell's devices on simulators.

Used by `--sim`, `cellctl sim` and `cellctl demo`. Devices on one Modbus TCP host:port (a
gateway) or one serial line share one simulated bus; each OPC UA device gets its own server.
`cellctl serve`'s OPC UA server starts from the simulators' address-space cache too
(`init_opcua_server`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import re
import stat
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse, urlunparse

from asyncua.server.server import Server
from ruamel.yaml import YAML

from cellctl import exitcodes
from cellctl.cell import Cell, host_key
from cellctl.cell.tags import methods_by_device, points_by_device
from cellctl.errors import CellctlError
from cellctl.files import special_kind
from drivers.config import url_host
from drivers.sim.image import ProcessImage
from drivers.sim.modbus_server import ModbusRtuSimServer, ModbusSimServer
from drivers.sim.opcua_cache import default_cache_dir, init_with_cache
from drivers.sim.opcua_server import OpcuaSimServer
from drivers.sim.plant.base import PlantError, PlantModel, SimClock
from drivers.sim.plant.registry import create_model
from drivers.sim.runner import SimRunner
from drivers.sim.server import SimServer

log = logging.getLogger("cellctl.sim")


def check_cell_copy(source: Path, target: Path) -> None:
    """Raise SimulatorError (naming `target`) when a copy of the cell file `source` may not
    be written at `target` (see _cell_copy_problem)."""
    problem = _cell_copy_problem(source, target)
    if problem:
        raise SimulatorError(f"--write-cell {target}: {problem}")


def serve_host(text: str) -> str:
    """The address `--host` names ('[::1]' as in a URL is ::1); SimulatorError when it is
    empty (asyncio and pymodbus would serve every interface) or not an address or host name."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise SimulatorError(
            "--host '': name the address to serve on (127.0.0.1, ::1; 0.0.0.0 for every IPv4 "
            "interface)"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host):
            raise SimulatorError(
                f"--host {text}: not an address or a host name (e.g. 127.0.0.1, ::1)"
            ) from None
    return host


_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")


def _cell_copy_problem(source: Path, target: Path) -> str | None:
    """Why a copy of the cell file `source` cannot be written at `target`, or None.

    Only a regular file, or a new file in an existing folder, is written: never the source
    itself (under any name), a device, a FIFO or a folder.
    """
    real = Path(os.path.realpath(target))
    try:
        info = real.stat()
    except (FileNotFoundError, NotADirectoryError):
        if not real.parent.is_dir():
            return f"no folder {real.parent}"
        writable = os.access(real.parent, os.W_OK)
        return None if writable else f"the folder {real.parent} is not writable"
    except OSError as err:  # e.g. a symlink loop
        return err.strerror or str(err)
    kind = special_kind(info.st_mode)
    if kind is not None:
        return f"is {kind}: name a regular file"
    with contextlib.suppress(OSError):
        if os.path.samestat(info, source.stat()):
            return f"is the cell file being served ({source}): name another file"
    if not os.access(real.parent, os.W_OK) or not os.access(real, os.W_OK):
        return "not writable"
    return None


class SimulatorError(CellctlError):
    """The simulators for a cell cannot be built (an unknown plant model, a missing signal)."""


class SimulatorStartFailed(SimulatorError):
    """A simulator could not open its endpoint (a port in use, an address not on this host)."""

    exit_code = exitcodes.DEVICE_FAILURE


@dataclass
class _Bus:
    """Devices that one simulated server serves."""

    kind: str
    units: dict[int, ProcessImage] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ServedEndpoint:
    """What one device is served at, for people and for other processes."""

    device: str
    driver: str
    endpoint: str


class CellSimulator:
    """Every device of a cell on its simulator: plant models where named, generic otherwise.

    `keep_ports` serves at the cell file's own ports (for `cellctl sim`); otherwise every
    server takes a free port, and `served_cell` says where they are.
    """

    def __init__(
        self,
        cell: Cell,
        *,
        speed: float = 1.0,
        host: str = "127.0.0.1",
        keep_ports: bool = False,
    ) -> None:
        self.cell = cell
        self.host = serve_host(host)
        self.keep_ports = keep_ports
        self.clock = SimClock(speed)
        self.runner = SimRunner(self.clock)
        self.images: dict[str, ProcessImage] = {}
        self.models: dict[str, PlantModel] = {}
        self.servers: dict[str, SimServer] = {}  # by device name (shared servers repeat)
        self._unique: list[SimServer] = []
        self._build()

    def _build(self) -> None:
        points = points_by_device(self.cell)
        methods = methods_by_device(self.cell)
        buses: dict[str, _Bus] = {}
        problems: list[str] = []
        for name, device in self.cell.devices.items():
            image = ProcessImage(name, points.get(name, []))
            self.images[name] = image
            if device.sim is not None:
                try:
                    self.models[name] = create_model(
                        device.sim.model, image, self.clock, dict(device.sim.signals)
                    )
                except PlantError as err:
                    problems.append(f"device {name}: {err}")
            if device.driver == "modbus-tcp":
                # One bus per host:port as the cell file's rules see it (localhost = 127.0.0.1).
                key = f"tcp:{host_key(device.host)}:{device.port}"
                bus = buses.setdefault(key, _Bus("tcp"))
            elif device.driver == "modbus-rtu":
                bus = buses.setdefault(f"rtu:{device.port}", _Bus("rtu"))
            elif device.driver == "opcua":
                model = self.models.get(name)
                handlers = model.methods() if model is not None else {}
                server = OpcuaSimServer(
                    self._opcua_endpoint(device.endpoint),
                    image,
                    methods.get(name, []),
                    handlers,
                    host=self.host,
                )
                self.servers[name] = server
                self._unique.append(server)
                continue
            else:  # memory devices live in the controller's process; nothing to serve
                continue
            bus.units[device.unit] = image
            bus.devices.append(name)
        for beat in self.cell.heartbeat:
            # The plant model plays the device PLC's watchdog on the controller's heartbeat.
            watcher = self.models.get(self.cell.tags[beat.tag].device)
            if watcher is not None:
                watcher.watch_heartbeat(beat.tag, beat.timeout)
        if problems:
            raise SimulatorError("\n".join(problems))
        for key, bus in buses.items():
            modbus: SimServer
            if bus.kind == "tcp":
                port = int(key.rsplit(":", 1)[1]) if self.keep_ports else 0
                modbus = ModbusSimServer(bus.units, host=self.host, port=port)
            else:
                modbus = ModbusRtuSimServer(bus.units)
            self._unique.append(modbus)
            for name in bus.devices:
                self.servers[name] = modbus
        for name, model in self.models.items():
            if name in self.servers:
                self.runner.add(model, self.servers[name])

    def _opcua_endpoint(self, endpoint: str) -> str:
        url = urlparse(endpoint)
        port = url.port if self.keep_ports and url.port else 0
        return urlunparse(url._replace(netloc=f"{url_host(self.host)}:{port}"))

    async def start(self) -> None:
        """Start every server, then the plant models; on any failure stop what started."""
        # Every server is ready before the first endpoint opens: a client never finds half a
        # cell.
        for server in self._unique:
            await self._starting(server, server.prepare)
        for server in self._unique:
            await self._starting(server, server.start)
        await self.runner.start()

    async def _starting(self, server: SimServer, step: Callable[[], Awaitable[None]]) -> None:
        """Run one server's prepare or start; a failure stops everything, naming the devices."""
        try:
            await step()
        except (OSError, RuntimeError) as err:
            # pymodbus says RuntimeError("Could not start listen") for a port in use.
            await self.stop()
            devices = ", ".join(n for n, s in self.servers.items() if s is server)
            raise SimulatorStartFailed(
                f"cannot serve {devices} at {server.endpoint}: {err} (is the port in use?)"
            ) from err

    async def stop(self) -> None:
        """Stop the models and every server."""
        # Stop everything even when one part fails; a failure is logged, never hidden.
        parts = [self.runner.stop(), *(server.stop() for server in reversed(self._unique))]
        for part in parts:
            try:
                await part
            except Exception:
                log.warning("a simulator did not stop cleanly", exc_info=True)

    async def __aenter__(self) -> CellSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def endpoints(self) -> list[ServedEndpoint]:
        """Each device and the endpoint it is served at (a pty path for RTU)."""
        return [
            ServedEndpoint(name, self.cell.devices[name].driver, server.endpoint)
            for name, server in self.servers.items()
        ]

    def _device_updates(self) -> dict[str, dict[str, object]]:
        updates: dict[str, dict[str, object]] = {}
        for name, server in self.servers.items():
            driver = self.cell.devices[name].driver
            if isinstance(server, ModbusSimServer):
                updates[name] = {"host": server.host, "port": server.port}
            elif driver == "modbus-rtu":
                # A pseudo-terminal carries bytes, not a UART's framing: the kernel refuses
                # parity settings on it (EINVAL), so the copy that points at one says none.
                updates[name] = {"port": server.endpoint, "parity": "N"}
            elif driver == "opcua":
                updates[name] = {"endpoint": server.endpoint}
        return updates

    @property
    def served_cell(self) -> Cell:
        """A copy of the cell whose devices point at what is actually served."""
        updates = self._device_updates()
        devices = {
            name: device.model_copy(update=updates.get(name, {}))
            for name, device in self.cell.devices.items()
        }
        return self.cell.model_copy(update={"devices": devices})

    def write_cell(self, source: Path, target: Path, raw: bytes) -> None:
        """Write a copy of the cell file `source` (comments kept) pointing at what is served;
        `raw` is the file's bytes as loaded, not read again."""
        check_cell_copy(source, target)
        yaml = YAML(typ="rt")
        # Parsed again, not the loaded document's data: that keeps every quote as written,
        # and the copy is written as it always was.
        data = yaml.load(raw)
        for name, fields in self._device_updates().items():
            for key, value in fields.items():
                data["devices"][name][key] = value
        # Through a symlink to the file it names, as a shell's '>' would.
        real = Path(os.path.realpath(target))
        try:
            mode = stat.S_IMODE((real if real.exists() else source).stat().st_mode)
            # Write beside, then rename: a reader never sees a half-written cell file. A fresh
            # private name: an existing '.part' file (or FIFO) is never opened.
            fd, partial = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".part", dir=real.parent)
            try:
                with open(fd, "w", encoding="utf-8") as out:
                    yaml.dump(data, out)
                os.chmod(partial, mode)
                os.replace(partial, real)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(partial)
                raise
        except OSError as err:
            raise SimulatorError(f"cannot write {target}: {err.strerror or err}") from err

    def fault(self, device: str, name: str, on: bool = True) -> None:
        """Raise or clear a named plant-model fault (e.g. 'light-curtain' on the conveyor)."""
        model = self.models.get(device)
        faults: dict[str, Callable[[bool], None]] = model.faults() if model is not None else {}
        if name not in faults:
            known = ", ".join(f"{d}:{f}" for d, m in self.models.items() for f in m.faults())
            raise SimulatorError(f"no fault {name!r} on device {device!r}; known: {known}")
        faults[name](on)


async def init_opcua_server(server: Server) -> None:
    """`server.init()` from the per-user address-space cache the simulators share (built on
    first use): ≈50 ms instead of 1-2 s for asyncua's standard address space."""
    await init_with_cache(server, default_cache_dir())
