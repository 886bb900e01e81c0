"""`cellctl check`: the commissioning check of every device of a cell."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from cellctl.cell import Cell
from cellctl.cell.tags import device_config, point_for
from cellctl.io.drivers import build_drivers, refuse_in_process_devices
from drivers.base import Driver, Quality, Value
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, OpcuaConfig
from drivers.errors import DriverError, PointMismatch


@dataclass
class DeviceCheck:
    """The outcome of checking one device."""

    device: str
    endpoint: str
    round_trip: float | None = None
    health: str = "not reached"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the device was reached and everything agreed with the cell file."""
        return self.round_trip is not None and not self.problems


def _endpoint(cell: Cell, device: str) -> str:
    config = device_config(cell, device)
    if isinstance(config, ModbusTcpConfig | ModbusRtuConfig):
        return config.endpoint
    if isinstance(config, OpcuaConfig):
        return config.endpoint
    return "memory"


async def _reach(driver: Driver) -> list[str]:
    """Connect; an OPC UA server whose nodes differ is still reached, and each difference listed."""
    try:
        await driver.connect()
    except PointMismatch:
        # asyncua is loaded already when an OPC UA server answered; a Modbus-only cell never
        # loads it.
        from drivers.opcua import OpcuaDriver

        if not isinstance(driver, OpcuaDriver):
            raise
        # verify() opens the session again without refusing it, so the read can be timed too.
        return await driver.verify()
    return []


async def _heartbeat_writable(cell: Cell, driver: Driver, tag: str, value: Value) -> list[str]:
    """Write a heartbeat tag's value back as just read: the device sees no change (its watchdog
    no beat), and a refusal shows the controller could not write its heartbeat.

    OPC UA servers state it instead: connecting checks every rw node's AccessLevel and
    UserAccessLevel, and a node the controller may not write is listed from there.
    """
    try:
        await driver.write(point_for(cell, tag), value)
    except DriverError as err:
        return [f"{tag}: heartbeat cannot be written on the device: {err}"]
    return []


async def _check_device(cell: Cell, device: str, driver: Driver) -> DeviceCheck:
    result = DeviceCheck(device, _endpoint(cell, device))
    tags = [t for t, spec in cell.tags.items() if spec.device == device]
    try:
        result.problems.extend(await _reach(driver))
        started = time.perf_counter()
        readings = await driver.read([point_for(cell, t) for t in tags])
        result.round_trip = time.perf_counter() - started
        # OPC UA nodes state whether they may be written (checked on connect); Modbus does not.
        opcua = isinstance(device_config(cell, device), OpcuaConfig)
        heartbeats = set() if opcua else set(cell.heartbeat_tags)
        for tag, reading in zip(tags, readings, strict=True):
            if reading.quality is Quality.BAD:
                result.problems.append(f"{tag}: {reading.error or 'bad quality'}")
            elif tag in heartbeats and reading.value is not None:
                result.problems.extend(await _heartbeat_writable(cell, driver, tag, reading.value))
        result.health = driver.health.state.value
    except DriverError as err:
        result.problems.append(str(err))
    finally:
        # Always: a driver whose connect failed still has a reconnect loop to stop.
        await driver.close()
    return result


async def check_cell(cell: Cell) -> list[DeviceCheck]:
    """Reach every device at once, time a read of all its tags, list every disagreement."""
    names = list(cell.devices)
    refuse_in_process_devices(cell, names)
    drivers = build_drivers(cell, names)
    return list(await asyncio.gather(*(_check_device(cell, n, drivers[n]) for n in names)))
