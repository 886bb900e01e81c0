"""A headless `cellctl run` never ends with its safe state unconfirmed: with the conveyor's link
frozen (a fault proxy in front of its Modbus TCP server), the batch holds and the run stays until
the link is back and the safe state is written and read back (exit 3); past --safe-wait, or on a
SIGTERM while it waits, it exits 5 naming every tag. The conveyor's own server, read by a raw
pymodbus client behind the proxy's back, is the witness."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.testing import Served
from drivers.sim.faultproxy import FaultProxy
from hil_tests.run_support import ConveyorOutputs, read_conveyor, serve_demo
from hil_tests.test_run_faults import LONG_WAIT, Lines, target_of, through_proxy

CONVEYOR_SAFE = ConveyorOutputs(run=False, speed_rpm=0)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on simulators shared by this module's tests."""
    with serve_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


@pytest.fixture
def proxy(demo: Served) -> Iterator[FaultProxy]:
    """A fault proxy in front of the conveyor, on the simulators' loop."""
    proxy = FaultProxy(*target_of(demo, "conveyor"))
    demo.loop.run(proxy.start())
    try:
        yield proxy
    finally:
        demo.on_loop(proxy.clear)
        demo.loop.run(proxy.stop())


class Run:
    """`cellctl run` of the long wait in a child process without a terminal."""

    def __init__(self, demo: Served, proxy: FaultProxy, folder: Path, *args: str) -> None:
        recipe = folder / "long-wait.yaml"
        recipe.write_text(LONG_WAIT, encoding="utf-8")
        cell = folder / "cell.yaml"
        self.bound = through_proxy(demo, cell, "conveyor", proxy)
        self.child = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "run", str(recipe), "--cell", str(cell), *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, CELLCTL_LOG_FILE=str(folder / "log")),
        )
        self.out = Lines(self.child)

    def frozen_and_waiting(self, demo: Served, proxy: FaultProxy) -> None:
        """Once the conveyor runs, freeze its link; return when the run says it waits."""
        self.out.wait_for(lambda line: "long-wait started" in line, 20, "the long wait")
        assert demo.loop.run(read_conveyor(demo.cell)) == ConveyorOutputs(True, 900)
        demo.on_loop(lambda: proxy.freeze(True))
        self.out.wait_for(
            lambda line: "outcome: Held" in line or "waiting up to" in line,
            self.bound * 3 + 5,
            "the batch to hold",
        )
        self.out.wait_for(lambda line: "waiting up to" in line, 5, "the safe-state wait")
        assert self.child.poll() is None, "the run ended with its safe state unconfirmed"

    def end(self, within: float) -> tuple[int, str, str]:
        """Exit code, stdout and stderr once the child has ended."""
        code = self.child.wait(timeout=within)
        lines = self.out.rest(5)
        assert self.child.stderr is not None
        return code, "\n".join(lines), self.child.stderr.read()

    def kill(self) -> None:
        """Kill the child if it still runs."""
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait()


def test_a_frozen_link_holds_and_the_run_stays_until_the_safe_state_is_confirmed(
    demo: Served, proxy: FaultProxy, tmp_path: Path
) -> None:
    run = Run(demo, proxy, tmp_path, "--safe-wait", "60s")
    try:
        run.frozen_and_waiting(demo, proxy)
        waiting = next(line for line in run.out.lines if "waiting up to" in line)
        assert "conveyor.run" in waiting and "conveyor.speed_rpm" in waiting
        demo.on_loop(lambda: proxy.freeze(False))
        back = time.monotonic()
        code, out, err = run.end(run.bound * 3 + 10)
        took = time.monotonic() - back
    finally:
        run.kill()
    assert code == 3, out + err
    assert "Traceback" not in out + err
    assert "outcome: Held" in out
    assert took < run.bound * 3 + 5, f"confirmed {took:.1f} s after the link came back"
    # Written when the conveyor answered again, and read back from its own server.
    lines = out.splitlines()
    holding = next(i for i, line in enumerate(lines) if "safe state (Holding)" in line)
    assert "conveyor.run = false FAILED" in lines[holding], out
    assert any(
        "safe state (" in line and "conveyor.run = false ok" in line for line in lines[holding:]
    ), out
    assert demo.loop.run(read_conveyor(demo.cell)) == CONVEYOR_SAFE


@pytest.mark.parametrize("how", ["safe-wait", "SIGTERM"])
def test_an_unconfirmed_safe_state_exits_5_naming_every_tag(
    demo: Served, proxy: FaultProxy, tmp_path: Path, how: str
) -> None:
    run = Run(demo, proxy, tmp_path, "--safe-wait", "1s" if how == "safe-wait" else "5m")
    try:
        run.frozen_and_waiting(demo, proxy)
        if how == "SIGTERM":
            run.child.terminate()
        code, out, err = run.end(30)
    finally:
        run.kill()
    assert code == 5, out + err
    assert "Traceback" not in out + err
    assert "safe state not confirmed" in err
    assert "given up on SIGTERM" in err if how == "SIGTERM" else "not within 1s" in err
    assert "conveyor.run: " in err and "conveyor.speed_rpm: " in err, err
