"""Helpers for the batch acceptance tests: the demo cell and its recipe, served on simulators by
the testing kit (cellctl.testing), and raw protocol clients that read what a device holds."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from cellctl.cell import Cell, ModbusTcpDevice, OpcuaDevice
from cellctl.testing import Served, serve
from drivers.base import Value

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"
DEMO_CELL = DEMO / "cell.yaml"
PRESS_FIT = DEMO / "press-fit.yaml"
#: Model time factor of every simulator here: short batches, same behaviour.
SPEED = 4.0


def serve_demo(folder: Path) -> contextlib.AbstractContextManager[Served]:
    """The demo cell on simulators at SPEED, as the kit's serve() does it."""
    return serve(DEMO_CELL, folder, SPEED)


def heartbeat_quiet(served: Served) -> bool:
    """True when no plant model's watchdog is armed: no heartbeat trip is pending that would
    overwrite values written by hand (a controller that ended trips its devices after the
    heartbeat's timeout, as real PLCs do)."""
    return served.on_loop(
        lambda: not any(m.heartbeat_armed for m in served.simulator.models.values())
    )


@dataclass(frozen=True)
class ConveyorOutputs:
    """The conveyor's outputs as its Modbus server holds them."""

    run: bool  # coil 0
    speed_rpm: int  # hr 0


async def read_conveyor(cell: Cell) -> ConveyorOutputs:
    """Coil 0 and hr 0 of the conveyor, read by a raw pymodbus client of our own."""
    from pymodbus.client import AsyncModbusTcpClient

    device = cell.devices["conveyor"]
    assert isinstance(device, ModbusTcpDevice)
    client = AsyncModbusTcpClient(device.host, port=device.port, timeout=1.0, retries=0)
    try:
        assert await client.connect(), f"conveyor at {device.host}:{device.port}: no connection"
        coils = await client.read_coils(0, count=1, device_id=device.unit)
        registers = await client.read_holding_registers(0, count=1, device_id=device.unit)
        assert not coils.isError() and not registers.isError(), (coils, registers)
        return ConveyorOutputs(bool(coils.bits[0]), int(registers.registers[0]))
    finally:
        client.close()


async def opcua_value(cell: Cell, tag: str, write: Value | None = None) -> Value:
    """A tag of an OPC UA device read (after writing `write`, if given) by a raw asyncua
    client of our own."""
    from asyncua.client.client import Client

    spec = cell.tags[tag]
    device = cell.devices[spec.device]
    assert isinstance(device, OpcuaDevice) and spec.node is not None
    async with Client(device.endpoint, timeout=2) as client:
        node = client.get_node(str(spec.node))
        if write is not None:
            await node.write_value(write)
        return cast(Value, await node.read_value())


def edit_cell(source: Path, target: Path, device: str, **fields: object) -> None:
    """Copy a cell file (comments kept), changing some fields of one device."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    data = yaml.load(source.read_text(encoding="utf-8"))
    for key, value in fields.items():
        data["devices"][device][key] = value
    with target.open("w", encoding="utf-8") as out:
        yaml.dump(data, out)


def run_child(
    recipe: Path, cell: Path, parts: int, journal: Path, folder: Path
) -> subprocess.Popen[str]:
    """`cellctl run RECIPE --cell CELL -p parts=N --journal J` in a child process without a
    terminal: stdout and stderr on one pipe, its log file in `folder`."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cellctl",
            "run",
            str(recipe),
            "--cell",
            str(cell),
            "-p",
            f"parts={parts}",
            "--journal",
            str(journal),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, CELLCTL_LOG_FILE=str(folder / "run.log")),
    )
