"""Helpers for the batch acceptance tests: the demo cell served on simulators, a Controller
built the way `cellctl run` builds it, and raw protocol clients that read what a device holds."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar, cast

from cellctl.cell import Cell, ModbusTcpDevice, OpcuaDevice, load_cell
from cellctl.cli.batch import RunOptions, prepare
from cellctl.control.controller import Controller
from cellctl.control.events import BatchEnded, Event, StateChanged
from cellctl.control.machine import State
from cellctl.control.operator import Operator, ScriptedOperator
from cellctl.io.drivers import build_drivers
from cellctl.io.heartbeat import Heartbeat
from cellctl.io.session import TagIO
from cellctl.io.sim import CellSimulator
from drivers.base import Value
from hil_tests.support import LoopThread

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"
DEMO_CELL = DEMO / "cell.yaml"
PRESS_FIT = DEMO / "press-fit.yaml"
#: Model time factor of every simulator here: short batches, same behaviour.
SPEED = 4.0

T = TypeVar("T")


@dataclass
class Served:
    """The demo cell on its simulators (on `loop`) and a cell file pointing at them."""

    simulator: CellSimulator
    cell_file: Path
    loop: LoopThread

    @property
    def cell(self) -> Cell:
        """The served cell (endpoints where the simulators listen)."""
        return self.simulator.served_cell

    def on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the simulators' loop (plant models are not thread-safe) and return it."""

        async def call() -> T:
            return fn()

        return self.loop.run(call())

    def model_value(self, device: str, signal: str) -> Value:
        """A plant model's signal, read on the simulators' loop."""
        return self.on_loop(lambda: self.simulator.models[device].get(signal))

    def image_value(self, device: str, tag: str) -> Value:
        """What the simulator of `device` holds for `tag` (client writes included)."""
        return self.on_loop(lambda: self.simulator.images[device].get(tag))


async def _start(cell_path: Path, folder: Path, speed: float) -> tuple[CellSimulator, Path]:
    """Start the cell's simulators (on the loop that keeps them); write the served cell file."""
    simulator = CellSimulator(load_cell(cell_path), speed=speed)
    await simulator.start()
    served = folder / "cell.yaml"
    simulator.write_cell(cell_path, served)
    return simulator, served


@contextlib.contextmanager
def serve(cell_path: Path, folder: Path, speed: float = 1.0) -> Iterator[Served]:
    """The cell on simulators in a loop thread of their own, its served file `folder`/cell.yaml;
    stopped afterwards, with the tasks they left behind."""
    loop = LoopThread()
    try:
        simulator, served = loop.run(_start(cell_path, folder, speed))
        try:
            yield Served(simulator, served, loop)
        finally:
            loop.run(simulator.stop())
            loop.run(_cancel_leftovers())
    finally:
        loop.close()


def serve_demo(folder: Path) -> contextlib.AbstractContextManager[Served]:
    """The demo cell on simulators at SPEED, as serve() does it."""
    return serve(DEMO_CELL, folder, SPEED)


async def _cancel_leftovers() -> None:
    """Cancel the tasks still pending on the simulators' loop.

    asyncua's Server.stop() closes only its own internal session: the session of a client that
    was connected when the server was killed keeps its timeout loop (and subscription loop)
    running for the session timeout, and would be destroyed pending with the loop.
    """
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


@dataclass
class Harness:
    """A Controller connected to the devices, every event it emitted kept in order."""

    controller: Controller
    io: TagIO
    events: list[Event] = field(default_factory=list)

    def of(self, kind: type[T]) -> list[T]:
        """The events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    async def run_batch(self) -> BatchEnded:
        """Reset, Start and wait for Complete, Stopped or Aborted (Held waits for the test)."""
        return await self.controller.run_batch(stop_when_held=lambda: False)


@contextlib.asynccontextmanager
async def controller_for(
    cell_file: Path,
    recipe: Path = PRESS_FIT,
    params: list[str] | None = None,
    answers: list[str] | None = None,
    operator: Callable[[ScriptedOperator], Operator] | None = None,
) -> AsyncIterator[Harness]:
    """A Controller built as `cellctl run` builds it (non-interactive, prompts answered by
    `answers`, "id=value" as --answer takes them; `operator` may wrap that scripted one),
    opened; closed after."""
    options = RunOptions(
        recipe=recipe, cell=cell_file, params=params or [], answers=answers or [], interactive=False
    )
    prepared = prepare(options)
    cell = prepared.loaded.cell
    io = TagIO(cell, build_drivers(cell, prepared.devices), prepared.tags)
    await io.connect()
    try:
        assert isinstance(prepared.operator, ScriptedOperator)  # non-interactive
        controller = Controller(
            prepared.loaded,
            prepared.parameters,
            io,
            operator(prepared.operator) if operator else prepared.operator,
            comm_devices=prepared.devices,
        )
        harness = Harness(controller, io)
        controller.listeners.append(harness.events.append)
        # As `cellctl run` does: the devices' watchdogs see a live controller all along.
        async with Heartbeat(io, cell.heartbeat):
            await controller.open()
            try:
                yield harness
            finally:
                await controller.close()
    finally:
        await io.close()


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


def entered(events: list[Event], state: State) -> StateChanged:
    """The first change into `state`."""
    return next(e for e in events if isinstance(e, StateChanged) and e.target is state)


async def wait_event(
    harness: Harness, predicate: Callable[[Event], bool], within: float, what: str
) -> Event:
    """The first event (already emitted or still to come) that satisfies `predicate`."""
    found: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

    def listen(event: Event) -> None:
        if predicate(event) and not found.done():
            found.set_result(event)

    for event in harness.events:
        listen(event)
    harness.controller.listeners.append(listen)
    try:
        return await asyncio.wait_for(found, within)
    except TimeoutError:
        raise AssertionError(f"timed out after {within} s waiting for {what}") from None
    finally:
        harness.controller.listeners.remove(listen)


def edit_cell(source: Path, target: Path, device: str, **fields: object) -> None:
    """Copy a cell file (comments kept), changing some fields of one device."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    data = yaml.load(source.read_text(encoding="utf-8"))
    for key, value in fields.items():
        data["devices"][device][key] = value
    with target.open("w", encoding="utf-8") as out:
        yaml.dump(data, out)


async def held_or_ended(harness: Harness, within: float) -> State:
    """Wait until the running batch reaches Held or ends; the state it is in then."""
    await wait_event(
        harness,
        lambda e: (
            isinstance(e, BatchEnded) or (isinstance(e, StateChanged) and e.target is State.HELD)
        ),
        within,
        "Held or the end of the batch",
    )
    return harness.controller.state
