"""Figure 5: interlock reaction seen from outside over Modbus TCP, beside a raw pymodbus loop
with the same polls and rule.

One device on a drivers.sim Modbus TCP simulator: coils dev.run (0), dev.ok (1), dev.done (2).
The controller (`ours`, in a child process, built as `cellctl run` builds it) runs a recipe that
waits on dev.done; its interlock `not dev.ok` holds, and its safe state writes dev.run = false.
The parent trips it with a raw client (ok = false) and stamps, in the simulator's write hook,
when that write and then the safe state's write of dev.run landed: the reaction is the time
between the two, on one clock. Between trips it writes ok = true and the child Unholds once the
trip cleared, then says "armed". The reference (`raw`, also a child) polls the same coils at the
same period on the same fixed-rate schedule, and writes run = false when it reads ok false.
"""

from __future__ import annotations

import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.childproc import quiet_pymodbus, running, say, stdin_closed
from bench.figure import Figure, percentile
from drivers.base import Value
from drivers.points import Point
from drivers.sim.image import ProcessImage
from drivers.sim.modbus_server import ModbusSimServer

#: Poll periods (s), in the full run and in --quick (with fewer trips).
PERIODS = (0.005, 0.010, 0.020)
#: Trips per poll period, full and quick.
TRIPS = 200
QUICK_TRIPS = 20
#: Seconds one trip's reaction (or re-arming after it) may take before the run fails.
TRIP_WAIT = 10.0
#: Seconds a child has to connect and arm the first time (imports, connect, Reset, Start).
START_WAIT = 60.0
#: Coils of the device (what both sides poll: run, ok and done, one read of three coils).
RUN, OK, DONE = 0, 1, 2
#: p99 of ours may be at most this many times the raw loop's.
GOAL = 1.1

CELL = """\
cell: bench-reaction
devices:
  dev: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, unit: 1, poll: {poll_ms}ms,
        timeout: 1s, retries: 1}}
tags:
  dev.run:  {{device: dev, address: "coil:{run}", access: rw}}
  dev.ok:   {{device: dev, address: "coil:{ok}", access: rw}}
  dev.done: {{device: dev, address: "coil:{done}"}}
interlocks:
  - {{name: dev-ok, when: "not dev.ok", action: hold}}
safe_state: {{dev.run: false}}
"""

RECIPE = """\
recipe: bench-reaction
version: 1
steps:
  - {id: go, set: {dev.run: true}}
  - {id: idle, wait: "dev.done", timeout: 1h}
"""


def write_cell(path: Path, port: int, period: float) -> None:
    """The reaction cell file, its device at `port` polled every `period` s."""
    poll_ms = f"{period * 1000:g}"
    path.write_text(CELL.format(port=port, poll_ms=poll_ms, run=RUN, ok=OK, done=DONE))


class StampedImage(ProcessImage):
    """A process image that stamps the client writes it takes, on the simulator's clock."""

    def __init__(self, device: str, points: list[Point]) -> None:
        super().__init__(device, points)
        self.heard: Callable[[str, Value, float], None] | None = None

    def accept_client_write(self, tag: str, value: Value) -> None:
        """Record the write, and tell `heard` when it landed (called in the server's hook)."""
        super().accept_client_write(tag, value)
        if self.heard is not None:
            self.heard(tag, value, time.perf_counter())


class Trips:
    """What the simulator saw of one trip: when ok went false, when run was then set false."""

    def __init__(self) -> None:
        self.tripped_at: float | None = None
        self.reacted: asyncio.Future[float] | None = None

    def arm(self) -> asyncio.Future[float]:
        """Expect a new trip; the future is the time run = false landed after it."""
        self.tripped_at = None
        self.reacted = asyncio.get_running_loop().create_future()
        return self.reacted

    def heard(self, tag: str, value: Value, at: float) -> None:
        """A client write landed in the simulator."""
        if tag == "dev.ok" and value is False and self.tripped_at is None:
            self.tripped_at = at
        elif (
            tag == "dev.run"
            and value is False
            and self.tripped_at is not None
            and self.reacted is not None
            and not self.reacted.done()
        ):
            self.reacted.set_result(at)


def _points(folder: Path) -> list[Point]:
    """The device's driver points, from the cell file as cellctl reads it."""
    from cellctl.cell import load_cell
    from cellctl.cell.tags import points_by_device

    template = folder / "template.yaml"
    write_cell(template, 502, 0.02)
    return points_by_device(load_cell(template))["dev"]


async def _series(kind: str, period: float, trips: int, folder: Path) -> list[float]:
    """`trips` reaction times (s) of `kind` ('ours' or 'raw') at one poll period."""
    from pymodbus.client import AsyncModbusTcpClient

    image = StampedImage("dev", _points(folder))
    image.set("dev.ok", True)  # a healthy cell to start with
    seen = Trips()
    image.heard = seen.heard
    server = ModbusSimServer({1: image})
    await server.start()
    tripper = AsyncModbusTcpClient("127.0.0.1", port=server.port, timeout=2.0, retries=0)
    try:
        cell = folder / f"cell-{kind}-{period * 1000:g}.yaml"
        write_cell(cell, server.port, period)
        recipe = folder / "bench-reaction.yaml"
        recipe.write_text(RECIPE)
        args = [kind, str(cell), str(recipe), str(folder / f"{kind}.log")]
        errors = folder / f"{kind}-{period * 1000:g}.stderr"
        if not await tripper.connect():
            raise RuntimeError(f"the tripper cannot reach the simulator at {server.endpoint}")
        times: list[float] = []
        async with running("bench.reaction", args, errors) as child:
            await child.expect("armed", START_WAIT)
            for _ in range(trips):
                # A random phase against the poll, as a real trip has.
                await asyncio.sleep(random.uniform(0.0, period))
                reacted = seen.arm()
                await tripper.write_coil(OK, False, device_id=1)
                try:
                    async with asyncio.timeout(TRIP_WAIT):
                        landed = await reacted
                except TimeoutError:
                    raise RuntimeError(
                        f"{kind}: no safe-state write within {TRIP_WAIT} s"
                    ) from None
                assert seen.tripped_at is not None
                times.append(landed - seen.tripped_at)
                await tripper.write_coil(OK, True, device_id=1)
                await child.expect("armed", TRIP_WAIT)
            await child.finish()
        return times
    finally:
        tripper.close()
        await server.stop()


def _figure(period: float, ours: list[float], raw: list[float]) -> Figure:
    ms = period * 1000
    p50, p99 = percentile(ours, 50) * 1000, percentile(ours, 99) * 1000
    r50, r99 = percentile(raw, 50) * 1000, percentile(raw, 99) * 1000
    return Figure(
        5,
        f"interlock reaction, {ms:g} ms poll, p99",
        p99,
        "ms",
        r99,
        "raw pymodbus loop p99",
        r99 / p99 if p99 else None,
        f"p99 <= {GOAL:g} x raw",
        p99 <= GOAL * r99,
        f"p50 {p50:.1f} ms (raw {r50:.1f}), p99 {p99:.1f} ms (raw {r99:.1f}), max "
        f"{max(ours) * 1000:.1f} ms (raw {max(raw) * 1000:.1f}); {len(ours)} trips each; on an "
        f"idle machine: one poll + 5 ms = {ms + 5:g} ms",
        {"ours_ms": [t * 1000 for t in ours], "raw_ms": [t * 1000 for t in raw]},
    )


async def _reaction(quick: bool) -> list[Figure]:
    trips = QUICK_TRIPS if quick else TRIPS
    figures = []
    with quiet_pymodbus(), tempfile.TemporaryDirectory(prefix="cellctl-bench-reaction-") as name:
        folder = Path(name)
        for period in PERIODS:
            ours = await _series("ours", period, trips, folder)
            raw = await _series("raw", period, trips, folder)
            figures.append(_figure(period, ours, raw))
    return figures


def measure(quick: bool) -> list[Figure]:
    """Figure 5: the interlock reaction at each poll period."""
    return asyncio.run(_reaction(quick))


# -- the children --------------------------------------------------------------------------


async def _ours(cell_file: Path, recipe: Path, log_file: Path) -> None:
    """The controller as `cellctl run` builds it; Unholds after each trip that cleared."""
    from cellctl.control.events import Event, StepStarted
    from cellctl.control.machine import State
    from cellctl.control.packml import Command
    from cellctl.logsetup import configure_logging
    from cellctl.testing import controller_for

    configure_logging(log_file)
    stop = asyncio.ensure_future(stdin_closed())
    changed = asyncio.Event()
    waits = 0  # the wait step started or re-entered: the controller is back at its work

    def heard(event: Event) -> None:
        nonlocal waits
        if isinstance(event, StepStarted) and event.step_id == "idle":
            waits += 1
        changed.set()

    async def until(condition: Callable[[], bool]) -> bool:
        """Wait until `condition()`; False when the parent asked us to end first."""
        while not condition():
            if stop.done():
                return False
            changed.clear()
            event = asyncio.ensure_future(changed.wait())
            await asyncio.wait({stop, event}, return_when=asyncio.FIRST_COMPLETED)
            event.cancel()
        return True

    async with controller_for(cell_file, recipe) as harness:
        controller = harness.controller
        controller.listeners.append(heard)
        batch = asyncio.ensure_future(harness.run_batch())
        seen = 0

        def back_at_work() -> bool:
            return controller.state is State.EXECUTE and waits > seen

        try:
            while await until(back_at_work):
                say("armed")
                if not await until(lambda: controller.state is State.HELD):
                    break
                if not await until(lambda: not controller.interlocks.active):
                    break
                seen = waits
                await controller.command(Command.UNHOLD, cause="bench")
        finally:
            if not batch.done():
                controller.request(Command.ABORT, cause="bench ends")
            async with asyncio.timeout(TRIP_WAIT):
                await batch
            stop.cancel()


async def _raw(cell_file: Path) -> None:
    """A raw pymodbus loop: poll the coils at the cell's period, write run = false when ok is
    false; says "armed" whenever it has read ok true again."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    from cellctl.cell import ModbusTcpDevice, load_cell

    device = load_cell(cell_file).devices["dev"]
    assert isinstance(device, ModbusTcpDevice)
    period = device.poll
    client = AsyncModbusTcpClient(
        device.host, port=device.port, timeout=device.timeout, retries=device.retries
    )
    if not await client.connect():
        raise SystemExit(f"cannot reach {device.host}:{device.port}")
    stop = asyncio.ensure_future(stdin_closed())
    loop = asyncio.get_running_loop()
    armed = False
    due = loop.time()
    try:
        while not stop.done():
            try:
                answer = await client.read_coils(RUN, count=3, device_id=1)
            except ModbusException:  # no answer in time: the next cycle reads again
                answer = None
            if answer is not None and not answer.isError():
                ok = answer.bits[OK]
                if armed and not ok:
                    armed = False
                    await client.write_coil(RUN, False, device_id=1)
                elif ok and not armed:
                    armed = True
                    say("armed")
            # The driver's schedule: fixed rate, a whole period of rest after an overrun.
            now = loop.time()
            due += period
            if due <= now:
                due = now + period
            await asyncio.sleep(due - now)
    finally:
        stop.cancel()
        client.close()


def _child(argv: list[str]) -> None:
    kind, cell_file, recipe, log_file = argv
    if kind == "ours":
        asyncio.run(_ours(Path(cell_file), Path(recipe), Path(log_file)))
    elif kind == "raw":
        asyncio.run(_raw(Path(cell_file)))
    else:
        raise SystemExit(f"unknown side {kind!r}: ours or raw")


if __name__ == "__main__":
    _child(sys.argv[1:])
