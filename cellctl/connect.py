"""Drivers for a cell's devices: built from the cell file, connected with bounded retries."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlparse

from cellctl.cell import Cell
from cellctl.errors import CellctlError, UnknownTag
from cellctl.tags import device_config, from_raw, methods_by_device, point_for, to_raw
from drivers.base import Driver, Quality, Reading, Unsubscribe, Value
from drivers.config import MemoryConfig, ModbusRtuConfig, ModbusTcpConfig, OpcuaConfig
from drivers.errors import DriverError
from drivers.memory import MemoryDriver
from drivers.modbus import make_modbus_drivers
from drivers.opcua import OpcuaDriver
from drivers.points import OpcuaPoint, Point


class DevicesUnreachable(CellctlError):
    """One or more devices could not be connected; the message has one line per device."""


class DeviceFailed(CellctlError):
    """A device failed a request (timeout, exception answer, lost connection)."""


@dataclass(frozen=True)
class TagValue:
    """A tag's value in engineering units, with the reading's quality and age."""

    tag: str
    device: str
    value: Value | None
    quality: Quality
    timestamp: float
    error: str | None = None

    @property
    def age(self) -> float:
        """Seconds since the value was read."""
        return max(0.0, time.time() - self.timestamp)


def devices_for_tags(cell: Cell, tags: Iterable[str]) -> list[str]:
    """The devices the named tags live on, in cell-file order; unknown tags are refused."""
    needed: set[str] = set()
    for tag in tags:
        if tag not in cell.tags:
            raise UnknownTag(f"unknown tag {tag!r}: the cell file {cell.cell!r} has no such tag")
        needed.add(cell.tags[tag].device)
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
    drivers: dict[str, Driver] = dict(make_modbus_drivers(modbus))
    for name, config in configs.items():
        if isinstance(config, OpcuaConfig):
            points = [
                p
                for t, tag in cell.tags.items()
                if tag.device == name and isinstance(p := point_for(cell, t), OpcuaPoint)
            ]
            drivers[name] = OpcuaDriver(config, points, methods_by_device(cell).get(name, []))
        elif isinstance(config, MemoryConfig):
            drivers[name] = MemoryDriver(config)
    return {name: drivers[name] for name in device_names}


class CellSession:
    """Connected drivers for the devices some tags use; reads and writes in engineering units.

    It reaches devices over their protocols, so memory devices are refused.
    """

    def __init__(self, cell: Cell, tags: Sequence[str], *, partial: bool = False) -> None:
        self.cell = cell
        self.tags = list(tags)
        # partial: devices that cannot be reached read BAD instead of failing the session.
        self.partial = partial
        self.unreachable: dict[str, str] = {}
        devices = devices_for_tags(cell, self.tags)
        refuse_in_process_devices(cell, devices)
        self.drivers = build_drivers(cell, devices)
        self.points: dict[str, Point] = {t: point_for(cell, t) for t in self.tags}

    async def __aenter__(self) -> CellSession:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect every driver at once; each retries within its own bound."""
        names = list(self.drivers)
        results = await asyncio.gather(
            *(self.drivers[n].connect() for n in names), return_exceptions=True
        )
        failures = {
            n: r for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)
        }
        for failure in failures.values():
            if not isinstance(failure, Exception):
                await self.close()
                raise failure
        if failures and (not self.partial or len(failures) == len(names)):
            await self.close()
            raise DevicesUnreachable("\n".join(str(f) for f in failures.values()))
        for name, failure in failures.items():
            self.unreachable[name] = str(failure)
            await self.drivers[name].close()  # stops its reconnect loop

    async def close(self) -> None:
        """Close every driver; a failure to close one never stops the others."""
        await asyncio.gather(*(d.close() for d in self.drivers.values()), return_exceptions=True)

    def _value(self, tag: str, reading: Reading) -> TagValue:
        spec = self.cell.tags[tag]
        value = reading.value
        if value is not None and reading.quality is not Quality.BAD:
            value = from_raw(spec, value)
        return TagValue(tag, spec.device, value, reading.quality, reading.timestamp, reading.error)

    async def read(self, tags: Sequence[str] | None = None) -> list[TagValue]:
        """Read tags (default: all of the session's), batched per device, devices in parallel."""
        wanted = list(tags) if tags is not None else self.tags
        by_device: dict[str, list[str]] = {}
        for tag in wanted:
            by_device.setdefault(self.cell.tags[tag].device, []).append(tag)

        async def read_device(device: str, names: list[str]) -> list[TagValue]:
            if device in self.unreachable:
                now = time.time()
                why = self.unreachable[device]
                return [TagValue(t, device, None, Quality.BAD, now, why) for t in names]
            try:
                readings = await self.drivers[device].read([self.points[t] for t in names])
            except DriverError as err:
                # One device failing must not hide the others' values: its tags read BAD.
                now = time.time()
                return [TagValue(t, device, None, Quality.BAD, now, str(err)) for t in names]
            return [self._value(t, r) for t, r in zip(names, readings, strict=True)]

        groups = await asyncio.gather(*(read_device(d, n) for d, n in by_device.items()))
        found = {v.tag: v for group in groups for v in group}
        return [found[t] for t in wanted]

    def subscribe(self, callback: Callable[[TagValue], None]) -> Unsubscribe:
        """Call back with each tag's new value (polling or monitored items, per device)."""
        by_device: dict[str, list[Point]] = {}
        for tag in self.tags:
            by_device.setdefault(self.cell.tags[tag].device, []).append(self.points[tag])

        def deliver(readings: dict[str, Reading]) -> None:
            for tag, reading in readings.items():
                callback(self._value(tag, reading))

        stops = [self.drivers[d].subscribe(points, deliver) for d, points in by_device.items()]

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe

    async def write(self, tag: str, value: Value) -> None:
        """Write one engineering value; returns once the device confirmed it."""
        spec = self.cell.tags[tag]
        try:
            await self.drivers[spec.device].write(self.points[tag], to_raw(spec, value))
        except DriverError as err:
            raise DeviceFailed(str(err)) from err


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


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
        if serial or (host is not None and not _is_loopback(host)):
            remote.append(f"{device} ({host or getattr(config, 'port', '')})")
    return remote
