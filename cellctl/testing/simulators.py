"""A cell served on simulators: in this process (on a loop of their own, in a thread) or by
`cellctl sim` in a child process; either way a cell file pointing at what is served."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from cellctl.cell import Cell, load_cell_and_bytes
from cellctl.io.sim import CellSimulator
from cellctl.testing.waiting import wait_until
from drivers.base import Value

T = TypeVar("T")

#: Seconds a child `cellctl sim` has to end once asked to (it stops its servers first).
CHILD_STOP = 15.0


class LoopThread:
    """An asyncio loop in a daemon thread, so simulators keep serving while sync tests run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass
class Served:
    """A cell on its simulators (on `loop`) and a cell file pointing at them."""

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

    def fault(self, device: str, name: str, on: bool = True) -> None:
        """Raise (`on=False`: clear) a plant model's named fault, as `cellctl demo --fault`
        does; SimulatorError naming the known faults for an unknown one."""
        self.on_loop(lambda: self.simulator.fault(device, name, on))


async def _start(cell_path: Path, folder: Path, speed: float) -> tuple[CellSimulator, Path]:
    """Start the cell's simulators (on the loop that keeps them); write the served cell file."""
    cell, raw = load_cell_and_bytes(cell_path)
    simulator = CellSimulator(cell, speed=speed)
    await simulator.start()
    served = folder / "cell.yaml"
    simulator.write_cell(cell_path, served, raw)
    return simulator, served


@contextlib.contextmanager
def serve(cell_path: Path, folder: Path, speed: float = 1.0) -> Iterator[Served]:
    """The cell on simulators at free loopback ports, in a loop thread of their own, its served
    file `folder`/cell.yaml; stopped afterwards, with the tasks they left behind."""
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
class SimChild:
    """`cellctl sim` serving a cell in a child process."""

    #: The copy of the cell file it wrote, pointing at what it serves.
    cell_file: Path
    process: subprocess.Popen[str]
    #: Its stdout lines, once it has ended.
    printed: list[str] = field(default_factory=list)


@contextlib.contextmanager
def serve_in_child(
    cell: Path,
    written: Path,
    *args: str,
    stop: signal.Signals = signal.SIGINT,
    log_file: Path | None = None,
    within: float = 30.0,
) -> Iterator[SimChild]:
    """`cellctl sim CELL --write-cell WRITTEN ARGS` in a child process, once `written` exists;
    afterwards ended by `stop` (SIGINT or SIGTERM: a normal end, exit 0, no traceback)."""
    log = log_file or written.with_suffix(".log")
    command = [sys.executable, "-m", "cellctl", "sim", str(cell), "--write-cell", str(written)]
    child = subprocess.Popen(
        [*command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, CELLCTL_LOG_FILE=str(log)),
    )
    served = SimChild(written, child)
    serving = False
    try:
        wait_until(
            lambda: written.exists() or child.poll() is not None, within, "cellctl sim to serve"
        )
        serving = child.poll() is None
        if serving:
            yield served
    finally:
        out, err = _ended(child, stop)
        served.printed.extend(out.splitlines())
    if not serving or child.returncode != 0 or "Traceback" in err:
        raise AssertionError(
            f"cellctl sim {'ended' if serving else 'ended before serving'}, exit code "
            f"{child.returncode}:\n{out}{err}"
        )


def _ended(child: subprocess.Popen[str], stop: signal.Signals) -> tuple[str, str]:
    """Ask the child to end by `stop` (unless it has); its stdout and stderr once it has."""
    if child.poll() is None:
        child.send_signal(stop)
    try:
        return child.communicate(timeout=CHILD_STOP)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise AssertionError(
            f"cellctl sim did not end within {CHILD_STOP} s of {stop.name}"
        ) from None
