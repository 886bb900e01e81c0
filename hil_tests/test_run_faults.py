"""Faults that are silent and signals from outside, on the demo cell's simulators: a link that
freezes (open, nothing answers) in front of the conveyor (Modbus TCP) or the robot (OPC UA) is a
comm-loss trip held within two poll periods plus the device timeout, cleared when the link comes
back; SIGTERM stops and SIGINT holds a `cellctl run` that has no terminal, safe state written."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from cellctl.cell import Cell, ModbusTcpDevice, OpcuaDevice, load_cell
from cellctl.control.controller import CommandBlocked
from cellctl.control.events import (
    Event,
    SafeStateWritten,
    StepStarted,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.machine import Command, State
from cellctl.testing import Served, controller_for, entered, held_or_ended, wait_event, wait_until
from drivers.sim.faultproxy import FaultProxy
from hil_tests.run_support import (
    PRESS_FIT,
    ConveyorOutputs,
    edit_cell,
    read_conveyor,
    serve_demo,
)

#: Seconds any one batch here may take before the test fails (they take 1–3 s at SPEED).
BATCH = 20.0
#: Slack for a loaded 2-core CI machine on top of a computed detection bound.
CI_MARGIN = 1.0
#: The outputs of the safe state as the conveyor's Modbus server holds them.
CONVEYOR_SAFE = ConveyorOutputs(run=False, speed_rpm=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on simulators shared by this module's tests (none of them kills one)."""
    with serve_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


def timeline(events: list[Event], since: float) -> str:
    """Events from `since` on, one a line with the seconds since then (for failure messages)."""
    return "\n".join(f"{e.at - since:+.3f} {e!r}" for e in events if e.at >= since - 0.05)


# --- 1. a frozen link: comm-loss within the bound ---------------------------------------------


@dataclass(frozen=True)
class Silent:
    """A device reached through a fault proxy, and the moment in the batch to freeze its link."""

    device: str
    freeze_at: Callable[[Event], bool]
    parts: int


def conveyor_wait_part_round_2(event: Event) -> bool:
    """The conveyor's wait for the part of round 2 begins."""
    return isinstance(event, StepStarted) and event.step_id == "wait-part" and event.round == 2


def robot_moving(event: Event) -> bool:
    """The `picked` wait is under way and unmet: the robot is moving (busy)."""
    return isinstance(event, WaitProgress) and event.step_id == "picked" and not event.met


SILENT = [
    Silent("conveyor", conveyor_wait_part_round_2, parts=2),
    Silent("robot", robot_moving, parts=1),
]


def target_of(served: Served, device: str) -> tuple[str, int]:
    """Where the simulator of `device` listens."""
    config = served.cell.devices[device]
    if isinstance(config, ModbusTcpDevice):
        return config.host, config.port
    assert isinstance(config, OpcuaDevice)
    url = urlsplit(config.endpoint)
    assert url.hostname is not None and url.port is not None, config.endpoint
    return url.hostname, url.port


def through_proxy(served: Served, target: Path, device: str, proxy: FaultProxy) -> float:
    """Write a copy of the served cell with `device` behind `proxy`, timeout 300 ms and one
    retry; return that device's detection bound: 2 × poll (or publishing interval) + timeout ×
    (retries + 1)."""
    if device == "robot":
        where: dict[str, object] = {"endpoint": f"opc.tcp://{proxy.endpoint}/robot"}
    else:
        where = {"host": proxy.host, "port": proxy.port}
    edit_cell(served.cell_file, target, device, timeout="300ms", retries=1, **where)
    config = load_cell(target).devices[device]
    if isinstance(config, OpcuaDevice):
        period = config.publishing_interval
    else:
        assert isinstance(config, ModbusTcpDevice)
        period = config.poll
    return 2 * period + config.timeout * (config.retries + 1)


@contextlib.asynccontextmanager
async def proxy_to(host: str, port: int) -> AsyncIterator[FaultProxy]:
    """A started fault proxy in front of host:port, stopped after."""
    proxy = FaultProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def conveyor_outputs_become(served: Served, wanted: ConveyorOutputs, within: float) -> bool:
    """True once the conveyor's Modbus server holds `wanted` (read directly, not through any
    proxy), False if it still does not after `within` seconds."""
    deadline = time.monotonic() + within
    while await read_conveyor(served.cell) != wanted:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize("silent", SILENT, ids=[s.device for s in SILENT])
def test_frozen_link_trips_comm_loss_holds_within_the_bound_and_resumes(
    demo: Served, tmp_path: Path, silent: Silent
) -> None:
    device, trip_name = silent.device, f"comm-loss:{silent.device}"
    press = demo.simulator.models["press"]

    async def scenario() -> None:
        cycles = int(press.get("cycles"))
        async with proxy_to(*target_of(demo, device)) as proxy:
            cell_file = tmp_path / "cell.yaml"
            bound = through_proxy(demo, cell_file, device, proxy)
            async with controller_for(
                cell_file, PRESS_FIT, params=[f"parts={silent.parts}"]
            ) as run:
                frozen: list[float] = []

                def freeze(event: Event) -> None:
                    if not frozen and silent.freeze_at(event):
                        proxy.freeze(True)
                        frozen.append(time.time())

                run.controller.listeners.append(freeze)
                task = asyncio.ensure_future(run.run_batch())
                try:
                    state = await held_or_ended(run, BATCH)
                    assert state is State.HELD, run.events
                    assert frozen, "the batch never reached the moment to freeze"
                    assert {t.interlock for t in run.of(Tripped)} == {trip_name}, run.of(Tripped)
                    assert trip_name in entered(run.events, State.HOLDING).cause
                    to_trip = run.of(Tripped)[0].at - frozen[0]
                    to_held = entered(run.events, State.HELD).at - frozen[0]
                    figures = f"bound {bound:.2f} s; tripped {to_trip:.2f} s, Held {to_held:.2f} s"
                    assert to_trip <= bound * 3 + CI_MARGIN, (
                        f"{figures}\n{timeline(run.events, frozen[0])}"
                    )
                    # Holding does not wait on writes to the lost device (one would take
                    # 2 × 0.6 s to fail): they are written again once it answers.
                    assert to_held <= to_trip + CI_MARGIN, (
                        f"Held too late: {figures}\n{timeline(run.events, frozen[0])}"
                    )
                    # The link is still frozen: the trip stands and blocks Unhold.
                    with pytest.raises(CommandBlocked, match=trip_name):
                        await run.controller.command(Command.UNHOLD)
                    proxy.clear()
                    await wait_event(
                        run,
                        lambda e: isinstance(e, TripCleared) and e.interlock == trip_name,
                        10.0,
                        f"{trip_name} to clear once the link is back",
                    )
                    assert run.controller.state is State.HELD
                    # Held, every device reachable again: the safe state is on the conveyor.
                    assert await conveyor_outputs_become(demo, CONVEYOR_SAFE, within=2.0), (
                        f"Held with the link back, but the conveyor holds "
                        f"{await read_conveyor(demo.cell)}: failed safe-state writes not retried"
                    )
                    await run.controller.command(Command.UNHOLD, cause="test: link restored")
                    ended = await asyncio.wait_for(task, BATCH)
                finally:
                    proxy.clear()
                    task.cancel()
        assert ended.state is State.COMPLETE, ended
        # The interrupted wait was re-entered: every part pressed once, none twice.
        assert int(press.get("cycles")) == cycles + silent.parts
        assert [e for e in run.of(SafeStateWritten) if "Holding" in e.reason], run.events

    demo.loop.run(scenario(), timeout=45)


# --- 2. signals to a `cellctl run` without a terminal -----------------------------------------

LONG_WAIT = """\
recipe: long-wait
version: 1
steps:
  - {id: start-conveyor, set: {conveyor.speed_rpm: 900, conveyor.run: true}}
  - {id: long-wait, wait: "conveyor.speed_rpm == 901", timeout: 30s}
"""


@dataclass(frozen=True)
class Interrupt:
    """A signal, the state it sends a running batch through, and how the cause names it."""

    signal: signal.Signals
    acting: State
    outcome: State
    names: tuple[str, ...]


INTERRUPTS = [
    Interrupt(signal.SIGTERM, State.STOPPING, State.STOPPED, ("SIGTERM",)),
    # Without a terminal a Hold cannot be undone: the run ends Held at once.
    Interrupt(signal.SIGINT, State.HOLDING, State.HELD, ("SIGINT", "Ctrl-C")),
]


class Lines:
    """Every line a child process writes to a pipe, collected by a thread as it comes."""

    def __init__(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        self.lines: list[str] = []
        self._pipe = child.stdout
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        for line in self._pipe:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], within: float, what: str) -> None:
        """Wait until some line satisfies `predicate`."""
        wait_until(lambda: any(predicate(line) for line in list(self.lines)), within, what)

    def rest(self, within: float) -> list[str]:
        """Every line, once the pipe has closed."""
        self._thread.join(within)
        assert not self._thread.is_alive(), "the child kept its stdout open"
        return self.lines


@pytest.mark.parametrize("interrupt", INTERRUPTS, ids=[i.signal.name for i in INTERRUPTS])
def test_a_signal_ends_a_run_without_terminal_with_the_safe_state(
    demo: Served, tmp_path: Path, interrupt: Interrupt
) -> None:
    recipe = tmp_path / "long-wait.yaml"
    recipe.write_text(LONG_WAIT, encoding="utf-8")
    child = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", str(recipe), "--cell", str(demo.cell_file)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, CELLCTL_LOG_FILE=str(tmp_path / "log")),
    )
    try:
        out = Lines(child)
        out.wait_for(
            lambda line: "long-wait started" in line, 20, "the long wait to start (plain lines)"
        )
        # The batch has the conveyor running, on the device itself.
        assert demo.loop.run(read_conveyor(demo.cell)) == ConveyorOutputs(True, 900)
        child.send_signal(interrupt.signal)
        if interrupt.acting is State.STOPPING:
            # Stop lets the running step finish: the wait goes on until its condition holds.
            out.wait_for(lambda line: "Execute -> Stopping" in line, 5, "Stopping")
            assert child.poll() is None and not any("safe state" in x for x in out.lines)
            demo.loop.run(write_conveyor_speed(demo.cell, 901))
        signalled = time.monotonic()
        code = child.wait(timeout=10)
        took = time.monotonic() - signalled
        lines = out.rest(5)
        assert child.stderr is not None
        err = child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    text = "\n".join(lines)
    assert code == 3, text + err
    assert "Traceback" not in text + err
    assert took < 5, f"ended {took:.1f} s after {interrupt.signal.name}"
    acting = [line for line in lines if f"Execute -> {interrupt.acting}" in line]
    assert len(acting) == 1 and any(n in acting[0] for n in interrupt.names), text
    safe = [line for line in lines if f"safe state ({interrupt.acting})" in line]
    assert len(safe) == 1 and "conveyor.run = false ok" in safe[0], text
    assert "conveyor.speed_rpm = 0 ok" in safe[0], text
    assert f"outcome: {interrupt.outcome}" in lines, text
    cause = next(line for line in lines if line.startswith("cause: "))
    assert any(name in cause for name in interrupt.names), text
    assert demo.loop.run(read_conveyor(demo.cell)) == CONVEYOR_SAFE


async def write_conveyor_speed(cell: Cell, rpm: int) -> None:
    """Write hr 0 of the conveyor with a raw pymodbus client of our own (the plant side)."""
    from pymodbus.client import AsyncModbusTcpClient

    device = cell.devices["conveyor"]
    assert isinstance(device, ModbusTcpDevice)
    client = AsyncModbusTcpClient(device.host, port=device.port, timeout=1.0, retries=0)
    try:
        assert await client.connect()
        answer = await client.write_register(0, rpm, device_id=device.unit)
        assert not answer.isError(), answer
    finally:
        client.close()
