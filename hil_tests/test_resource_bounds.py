"""Resource bounds: file descriptors, asyncio tasks and memory stay flat, within a stated
tolerance after a warm-up, over reconnect cycles of the Modbus TCP and OPC UA drivers (a fault
proxy drops the link each cycle), over batch after batch of a `cellctl serve` child, and over one
long batch of that service (its journal grows on disk, not in memory).

The default tier runs smaller counts with the same assertions; the issue's counts (100 cycles,
100 batches, 10,000 steps) are `@pytest.mark.extended`. The simulators behind the drivers run
in a child process (SIMULATORS): an asyncua server keeps the session of a dropped connection
until it times out, by the protocol's design, and that is the server's memory, not the
driver's, which is what the cycles measure here.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from _pytest.logging import LogCaptureHandler
from asyncua.client.client import Client

from cellctl.testing import CliResult, cli, wait_until
from drivers.base import Driver, HealthState, Quality, Reading
from drivers.config import ModbusTcpConfig, OpcuaConfig, RequestLimits
from drivers.modbus import make_modbus_drivers
from drivers.opcua import OpcuaDriver
from drivers.points import Access, DataType, ModbusPoint, ModbusTable, OpcuaPoint, Point
from drivers.sim.faultproxy import FaultProxy
from hil_tests.service_support import ServiceChild, Space, service_in_child
from tests.support import journal_rows

ROOT = Path(__file__).resolve().parent.parent

# -- measuring -----------------------------------------------------------------------------


def open_fds(pid: int | str = "self") -> int:
    """How many file descriptors a process holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def status_kb(pid: int | str, field_name: str) -> int:
    """A field of /proc/PID/status in kB (VmRSS) or as a count (Threads)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(f"{field_name}:"):
                return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status has no {field_name}")


@dataclass
class Flat:
    """Samples of named resources, one round each. After `warm_up` rounds, the mean of the last
    third of the rounds may exceed the mean of the first third by at most each resource's
    tolerance (means: one sample may catch a reconnect or a step in flight)."""

    tolerances: dict[str, int]
    warm_up: int
    rounds: list[dict[str, int]] = field(default_factory=list)

    def sample(self, **values: int) -> None:
        """One round's values."""
        self.rounds.append(values)

    def check(self, what: str) -> None:
        """AssertionError naming each resource that grew beyond its tolerance."""
        measured = self.rounds[self.warm_up :]
        assert len(measured) >= 3, f"{what}: only {len(self.rounds)} rounds"
        third = len(measured) // 3
        over = {}
        for name, tolerance in self.tolerances.items():
            first = sum(r[name] for r in measured[:third]) / third
            last = sum(r[name] for r in measured[-third:]) / third
            if last - first > tolerance:
                over[name] = f"{first:.0f} -> {last:.0f} (tolerance +{tolerance})"
        shown = ", ".join(
            f"{n} {self.rounds[0][n]}/{measured[0][n]}/{self.rounds[-1][n]}"
            for n in self.tolerances
        )
        assert not over, (
            f"{what}: grew after a warm-up of {self.warm_up} rounds of {len(self.rounds)}: "
            f"{over} (first/after warm-up/last: {shown})"
        )


# -- 1. reconnect cycles of the drivers --------------------------------------------------------

#: The simulators in a child: a Modbus TCP one and an OPC UA one, each with one rw uint16
#: value; prints their ports as one JSON line, serves until its stdin closes.
SIMULATORS = r"""
import asyncio, json, sys
from drivers.points import Access, DataType, ModbusPoint, ModbusTable, OpcuaPoint
from drivers.sim.image import ProcessImage
from drivers.sim.modbus_server import ModbusSimServer
from drivers.sim.opcua_server import OpcuaSimServer


async def main():
    register = ModbusPoint("plc.count", ModbusTable.HOLDING_REGISTER, 0, DataType.UINT16,
                           access=Access.RW)
    node = OpcuaPoint("robot.count", "ns=2;s=Robot.Count", DataType.UINT16, access=Access.RW)
    modbus = ModbusSimServer({1: ProcessImage("plc", [register])})
    opcua = OpcuaSimServer("opc.tcp://127.0.0.1:0/robot", ProcessImage("robot", [node]))
    await modbus.start()
    await opcua.start()
    print(json.dumps({"modbus": modbus.port, "opcua": opcua.port}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await opcua.stop()
    await modbus.stop()


asyncio.run(main())
"""
REGISTER = ModbusPoint(
    "plc.count", ModbusTable.HOLDING_REGISTER, 0, DataType.UINT16, access=Access.RW
)
NODE = OpcuaPoint("robot.count", "ns=2;s=Robot.Count", DataType.UINT16, access=Access.RW)
#: A request's limits: a read that waited out one timeout shows (see reconnect_cycles).
LIMITS = RequestLimits(timeout=1.0, retries=1)
#: Seconds a dropped link has to be noticed and found again (backoff starts at 50 ms).
RECONNECT_WITHIN = 10.0
#: Growth allowed after the warm-up: descriptors and tasks come back exactly (a little room
#: for a reconnect under way); the interpreter's allocated memory blocks (a block is one
#: object or buffer, sys.getallocatedblocks(): tracemalloc would slow the cycles five-fold)
#: by caches filling: a leak of a few objects a cycle passes it within 100 cycles.
CYCLE_TOLERANCES = {"fds": 2, "tasks": 2, "blocks": 3000}


@pytest.fixture(scope="module")
def simulators() -> Iterator[dict[str, int]]:
    """The child serving both simulators: their ports by protocol."""
    child = subprocess.Popen(
        [sys.executable, "-c", SIMULATORS],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        line = child.stdout.readline()
        assert line, f"the simulators did not start: {child.communicate(timeout=10)[1]}"
        yield json.loads(line)
    finally:
        _, err = child.communicate(input="", timeout=15)
        assert child.returncode == 0, err


def through(protocol: str, proxy: FaultProxy) -> tuple[Driver, Point]:
    """A driver (not connected) reaching the simulator of `protocol` through `proxy`."""
    if protocol == "modbus":
        config = ModbusTcpConfig("plc", "127.0.0.1", proxy.port, 1, poll=0.02, limits=LIMITS)
        return make_modbus_drivers([config])["plc"], REGISTER
    url = f"opc.tcp://127.0.0.1:{proxy.port}/robot"
    return OpcuaDriver(OpcuaConfig("robot", url, 0.02, LIMITS), [NODE]), NODE


async def reconnect_cycles(protocol: str, port: int, cycles: int) -> Flat:
    """Each cycle: a driver connected through a fault proxy and subscribed; the link dropped;
    LOST, then CONNECTED again; the cycle's number written and read back, and seen by the
    subscription. The resources of this process (driver and proxy), one sample per cycle.

    The Modbus driver stays open across the cycles. The OPC UA driver is closed and opened
    again in each: it waits longer before each reconnect until a session has lasted 5 s (a
    server that drops every new session must not make it spin), so a link dropped every
    fraction of a second would be measured at 5 s a cycle.
    """
    flat = Flat(CYCLE_TOLERANCES, warm_up=max(2, cycles // 10))
    proxy = FaultProxy("127.0.0.1", port)
    await proxy.start()
    driver, point = through(protocol, proxy)
    fresh = protocol == "opcua"
    lost: list[float] = []
    slow: list[str] = []
    seen: list[object] = []
    try:
        for cycle in range(cycles):
            if cycle == 0 or fresh:
                if fresh:
                    driver, point = through(protocol, proxy)
                driver.on_health(
                    lambda _d, h: lost.append(1) if h.state is HealthState.LOST else None
                )
                await driver.connect()
                unsubscribe = driver.subscribe([point], values_of(point, seen))
            took = await one_cycle(driver, point, proxy, lost, seen, cycle)
            # A write and a read are a few ms on loopback; a request lost with the old link
            # must not hold the new one for a timeout.
            if took > LIMITS.timeout / 2:
                slow.append(f"cycle {cycle}: {took:.2f} s")
            seen.clear()
            if fresh:
                unsubscribe()
                await driver.close()
            gc.collect()
            flat.sample(
                fds=open_fds(), tasks=len(asyncio.all_tasks()), blocks=sys.getallocatedblocks()
            )
        if not fresh:
            unsubscribe()
    finally:
        await driver.close()
        await proxy.stop()
    assert not slow, f"the first write and read after a reconnect waited: {slow}"
    return flat


@contextlib.contextmanager
def pytest_keeps_no_log_records() -> Iterator[None]:
    """pytest's log capture keeps every record (asyncua logs a traceback per lost link): not
    the product's memory, so its handlers keep none while resources are measured."""
    capturing = [h for h in logging.getLogger().handlers if isinstance(h, LogCaptureHandler)]
    levels = [h.level for h in capturing]
    for handler in capturing:
        handler.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        for handler, level in zip(capturing, levels, strict=True):
            handler.setLevel(level)


def values_of(point: Point, seen: list[object]) -> Callable[[dict[str, Reading]], None]:
    """A subscriber that keeps each value of `point` in `seen`."""
    return lambda readings: seen.append(readings[point.name].value)


async def one_cycle(
    driver: Driver,
    point: Point,
    proxy: FaultProxy,
    lost: list[float],
    seen: list[object],
    cycle: int,
) -> float:
    """Drop the link; wait for LOST and CONNECTED; write `cycle`, read it back and see it
    subscribed: how long the write and the read took."""
    await wait_until(lambda: proxy.open_connections > 0, RECONNECT_WITHIN, "the link")
    before = len(lost)
    proxy.drop()
    await wait_until(lambda: len(lost) > before, RECONNECT_WITHIN, "health LOST")
    await wait_until(
        lambda: driver.health.state is HealthState.CONNECTED,
        RECONNECT_WITHIN,
        f"the reconnect of cycle {cycle}",
    )
    started = time.monotonic()
    await driver.write(point, cycle)
    (reading,) = await driver.read([point])
    took = time.monotonic() - started
    assert (reading.quality, reading.value) == (Quality.GOOD, cycle), reading
    await wait_until(lambda: cycle in seen, RECONNECT_WITHIN, "the subscription's value")
    return took


def run_cycles(simulators: dict[str, int], protocol: str, cycles: int) -> None:
    """`cycles` reconnect cycles; resources flat."""
    with pytest_keeps_no_log_records():
        flat = asyncio.run(reconnect_cycles(protocol, simulators[protocol], cycles))
    flat.check(f"{cycles} reconnect cycles of the {protocol} driver")


@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_reconnect_cycles_leave_fds_tasks_and_memory_flat(
    simulators: dict[str, int], protocol: str
) -> None:
    run_cycles(simulators, protocol, 10 if protocol == "modbus" else 5)


@pytest.mark.extended
@pytest.mark.parametrize("protocol", ["modbus", "opcua"])
def test_100_reconnect_cycles_leave_fds_tasks_and_memory_flat(
    simulators: dict[str, int], protocol: str
) -> None:
    run_cycles(simulators, protocol, 100)


# -- 2. batches of a service, and one long batch ----------------------------------------------

#: A cell of one memory device: batches cost the controller, the journal and the OPC UA
#: surface, not a device's time.
CELL = """\
cell: bounds
devices:
  m: {driver: memory}
tags:
  m.go: {device: m, type: bool, access: rw}
safe_state: {m.go: false}
"""
#: `n` rounds of one cheap step (a write and its journal rows).
RECIPE = """\
recipe: ticks
version: 1
parameters:
  n: {type: int, default: 1, min: 1, max: 10000}
steps:
  - repeat: n
    steps:
      - {id: tick, set: {m.go: true}}
"""
#: Growth allowed in the service child after the warm-up: descriptors and threads come back
#: exactly (a little room for a connection under way); resident memory by malloc's arenas and
#: SQLite's page cache (about 10 kB a batch measured, bounded).
SERVICE_TOLERANCES = {"fds": 2, "threads": 2, "rss_kb": 3 * 1024}
#: Seconds one batch of the service may take (it takes about 50 ms; 10,000 steps about 15 s).
BATCH_WITHIN = 60.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceChild]:
    """`cellctl serve` on the memory cell, its journal on a tmpfs where there is one (the
    rate of fsyncs is not what is measured here)."""
    folder = tmp_path_factory.mktemp("bounds")
    (folder / "cell.yaml").write_text(CELL, encoding="utf-8")
    (folder / "ticks.yaml").write_text(RECIPE, encoding="utf-8")
    with contextlib.ExitStack() as stack:
        shm = stack.enter_context(_shm_folder())
        env = {"CELLCTL_JOURNAL": str(shm / "journal.sqlite")}
        child = stack.enter_context(
            service_in_child(folder / "served", cell=folder / "cell.yaml", sim=False, env=env)
        )
        yield child
        assert child.stop() == 0, child.out + child.err


@contextlib.contextmanager
def _shm_folder() -> Iterator[Path]:
    """A folder of our own on /dev/shm (a tmpfs; else the temporary folder), removed after."""
    import shutil
    import tempfile

    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    folder = Path(tempfile.mkdtemp(prefix="cellctl-bounds-", dir=where))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_sample(flat: Flat, pid: int) -> None:
    """The service child's descriptors, threads and resident memory, as one round."""
    flat.sample(
        fds=open_fds(pid), threads=status_kb(pid, "Threads"), rss_kb=status_kb(pid, "VmRSS")
    )


async def wait_state(space: Space, state: str) -> None:
    """Wait until PackML.State reads `state` (failing at once on Held, Stopped or Aborted)."""
    async with asyncio.timeout(BATCH_WITHIN):
        while (now := str(await space.read("State"))) != state:
            assert now not in ("Held", "Stopped", "Aborted") or now == state, now
            await asyncio.sleep(0.005)  # a poll interval; the timeout above is the deadline


async def one_batch(space: Space, steps: int, first: bool) -> None:
    """Load the recipe, Reset, Start; wait for Complete (after a first batch, Reset first)."""
    if not first:
        await space.call("Reset")
        await wait_state(space, "Idle")
    await space.call("LoadRecipe", "ticks", [f"n={steps}"])
    if first:
        await space.call("Reset")
        await wait_state(space, "Idle")
    await space.call("Start")
    await wait_state(space, "Complete")


async def batches(service: ServiceChild, count: int) -> Flat:
    """`count` one-step batches, one sample of the child after each."""
    flat = Flat(SERVICE_TOLERANCES, warm_up=max(3, count // 5))
    pid = service.process.pid
    async with Client(service.url, timeout=10) as client:
        space = await Space.of(client)
        first = str(await space.read("State")) != "Complete"
        for number in range(count):
            await one_batch(space, 1, first and number == 0)
            child_sample(flat, pid)
    return flat


def completed(service: ServiceChild) -> int:
    """How many batches ended Complete on the service's journal."""
    ended = [r.data() for r in journal_rows(service.journal) if r.kind == "batch_ended"]
    return sum(1 for e in ended if e.get("state") == "Complete")


def run_batches(service: ServiceChild, count: int) -> None:
    """`count` batches of the service; its resources flat, every batch on record."""
    before = completed(service)
    flat = asyncio.run(batches(service, count))
    flat.check(f"{count} batches of cellctl serve")
    assert completed(service) == before + count


def test_service_batches_leave_fds_threads_and_memory_flat(service: ServiceChild) -> None:
    run_batches(service, 10)


@pytest.mark.extended
def test_100_service_batches_leave_fds_threads_and_memory_flat(service: ServiceChild) -> None:
    run_batches(service, 100)


async def long_batch(service: ServiceChild, steps: int) -> Flat:
    """One batch of `steps` rounds, the child sampled as it goes (every 50 ms)."""
    flat = Flat(SERVICE_TOLERANCES, warm_up=0)
    pid = service.process.pid
    async with Client(service.url, timeout=10) as client:
        space = await Space.of(client)
        first = str(await space.read("State")) != "Complete"
        run = asyncio.ensure_future(one_batch(space, steps, first))
        try:
            while not run.done():
                child_sample(flat, pid)
                await asyncio.wait([run], timeout=0.05)  # a sampling period, not a wait
            await run
        finally:
            run.cancel()
    # The first quarter is the warm-up: the memory device keeps its last 1,000 writes, and
    # the allocator's arenas reach their size.
    flat.warm_up = len(flat.rounds) // 4
    return flat


def run_long_batch(service: ServiceChild, steps: int) -> None:
    """One batch of `steps` steps: the child's resources flat from its first quarter on, every
    step on record."""
    rows_before = len(journal_rows(service.journal))
    flat = asyncio.run(long_batch(service, steps))
    flat.check(f"a batch of {steps} steps in cellctl serve")
    rows = journal_rows(service.journal)[rows_before:]
    assert sum(1 for r in rows if r.kind == "step_ended") >= steps


@pytest.mark.extended
def test_a_10000_step_batch_keeps_the_service_flat(service: ServiceChild) -> None:
    run_long_batch(service, 10_000)


#: Growth allowed in `cellctl run` after the first quarter of its batch: allocated blocks (one
#: object or buffer each) by what is in flight at a sample; a leak of one object a step passes
#: it within 1,000 steps.
RUN_TOLERANCES = {"blocks": 1000}


def sampled_run(
    capsys: pytest.CaptureFixture[str], folder: Path, steps: int
) -> tuple[CliResult, Flat]:
    """`cellctl run` in-process on a batch of `steps` steps, this process's allocated blocks
    sampled by a thread every 50 ms meanwhile (young garbage collected first)."""
    (folder / "cell.yaml").write_text(CELL, encoding="utf-8")
    (folder / "ticks.yaml").write_text(RECIPE, encoding="utf-8")
    flat = Flat(RUN_TOLERANCES, warm_up=0)
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):  # a sampling period, not a wait for anything
            gc.collect(1)  # the young garbage: a full collection would slow the batch
            flat.sample(blocks=sys.getallocatedblocks())

    sampler = threading.Thread(target=sample, daemon=True)
    with _shm_folder() as journal, pytest_keeps_no_log_records():
        sampler.start()
        try:
            result = cli(
                capsys,
                "run",
                folder / "ticks.yaml",
                "--cell",
                folder / "cell.yaml",
                "--journal",
                journal / "journal.sqlite",
                "-p",
                f"n={steps}",
            )
        finally:
            done.set()
            sampler.join()
    # The first quarter is the warm-up: the memory device keeps its last 1,000 writes, caches
    # fill.
    flat.warm_up = len(flat.rounds) // 4
    return result, flat


def run_long(capsys: pytest.CaptureFixture[str], folder: Path, steps: int) -> None:
    """A batch of `steps` steps by `cellctl run`: Complete, every step shown, memory flat."""
    result, flat = sampled_run(capsys, folder, steps)
    assert (result.exit_code, result.outcome) == (0, "Complete"), result.out + result.err
    assert result.out.count(" tick done") == steps
    flat.check(f"cellctl run on a batch of {steps} steps")


def test_a_long_batch_keeps_cellctl_run_flat(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_long(capsys, tmp_path, 1_000)


@pytest.mark.extended
def test_a_10000_step_batch_keeps_cellctl_run_flat(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_long(capsys, tmp_path, 10_000)
