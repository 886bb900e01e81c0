"""SIGINT and SIGTERM end `read --watch` at once, even while a device is still being reached;
SIGTERM at any moment before a batch's Start ends `run` with 130, no traceback, and nothing
written but the heartbeat and Resetting's values (each on record in the log file)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.testing import Served, wait_until
from hil_tests.run_support import PRESS_FIT, edit_cell, heartbeat_quiet, serve_demo


@contextlib.contextmanager
def frozen_device() -> Iterator[tuple[int, list[socket.socket]]]:
    """A TCP port that accepts connections and never answers (a frozen device): (its port,
    the connections accepted so far)."""
    accepted: list[socket.socket] = []
    with socket.socket() as frozen:
        frozen.bind(("127.0.0.1", 0))
        frozen.listen()
        frozen.settimeout(30)
        taker = threading.Thread(target=lambda: accepted.append(frozen.accept()[0]), daemon=True)
        taker.start()
        try:
            yield frozen.getsockname()[1], accepted
        finally:
            for conn in accepted:
                conn.close()


def test_sigint_while_connecting_to_a_frozen_device_ends_watch_promptly(tmp_path: Path) -> None:
    with frozen_device() as (port, accepted):
        cell = tmp_path / "cell.yaml"
        cell.write_text(
            "cell: frozen\ndevices:\n"
            f"  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port},\n"
            "        timeout: 5s, retries: 2}\n"
            "tags:\n  plc.x: {device: plc, address: 'hr:0'}\n",
            encoding="utf-8",
        )
        child = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "read", "--cell", str(cell), "--watch"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, CELLCTL_LOG_FILE=str(tmp_path / "log")),
        )
        try:
            wait_until(lambda: bool(accepted), 30, "cellctl to connect")
            # Connected, now waiting 5 s × 3 for an answer that never comes.
            child.send_signal(signal.SIGINT)
            started = time.monotonic()
            _, err = child.communicate(timeout=10)
            took = time.monotonic() - started
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 0, err
    assert "Traceback" not in err
    assert took < 5  # long before the 15 s the frozen read would take


# --- SIGTERM before a batch's Start --------------------------------------------------------

#: Values nothing but a write changes: what the served devices hold before each run.
SETPOINT, SPEED = 7.5, 777


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on its simulators, for every moment below."""
    with serve_demo(tmp_path_factory.mktemp("signals")) as served:
        yield served


def importing(pid: int) -> bool:
    """True once process `pid` has loaded pydantic's compiled core: cellctl's CLI is being
    imported (the ~1.5 s before any handler of a batch is in place)."""
    return "_pydantic_core" in Path(f"/proc/{pid}/maps").read_text(encoding="utf-8")


def logged(log: Path) -> list[dict[str, object]]:
    """The JSON records of the log file so far."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


def prepare_devices(served: Served) -> None:
    """Values only a write would change, and a robot that stays busy (Resetting waits)."""

    def put() -> None:
        served.simulator.images["press"].set("press.setpoint_kN", SETPOINT)
        served.simulator.images["press"].set("press.cycle_start", True)
        served.simulator.images["conveyor"].set("conveyor.speed_rpm", SPEED)
        served.simulator.models["robot"].set("busy", True)

    served.on_loop(put)


@pytest.mark.parametrize("moment", ["importing", "connecting", "resetting"])
def test_sigterm_before_start_exits_130_writing_only_resettings_values(
    demo: Served, tmp_path: Path, moment: str
) -> None:
    # A watchdog armed by the last child's heartbeat would write its own safe values.
    wait_until(lambda: heartbeat_quiet(demo), 10, "the devices' watchdogs to be quiet")
    prepare_devices(demo)
    cell_file = demo.cell_file
    with contextlib.ExitStack() as stack:
        if moment == "connecting":  # the conveyor accepts and never answers
            port, accepted = stack.enter_context(frozen_device())
            cell_file = tmp_path / "cell.yaml"
            edit_cell(demo.cell_file, cell_file, "conveyor", port=port, timeout="5s", retries=2)
        log = tmp_path / "log"
        child = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "run", str(PRESS_FIT), "--cell", str(cell_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, CELLCTL_LOG_FILE=str(log)),
        )
        try:
            # Right after the spawn: the libraries are still loading.
            wait_until(lambda: importing(child.pid), 10, "cellctl to import its libraries")
            if moment == "connecting":
                wait_until(lambda: bool(accepted), 30, "cellctl to reach the conveyor")
            if moment == "resetting":  # Resetting has written and waits for the robot
                wait_until(
                    lambda: any("waiting up to" in str(r.get("text")) for r in logged(log)),
                    30,
                    "Resetting to wait for ready",
                )
            child.send_signal(signal.SIGTERM)
            out, err = child.communicate(timeout=20)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode == 130, (out, err)
    assert "Traceback" not in err + out
    image = demo.simulator.images
    # Nothing of the recipe: the setpoint it writes first is untouched.
    assert demo.on_loop(lambda: image["press"].get("press.setpoint_kN")) == SETPOINT
    written = [(r["tag"], r["value"]) for r in logged(log) if r.get("event") == "TagWritten"]
    if moment != "resetting":
        assert written == []
        assert demo.on_loop(lambda: image["conveyor"].get("conveyor.speed_rpm")) == SPEED
        assert demo.on_loop(lambda: image["press"].get("press.cycle_start")) is True
        return
    # Resetting's values only, each on record, and the devices hold them.
    assert written == list(demo.cell.safe_state.items())
    assert demo.on_loop(lambda: image["conveyor"].get("conveyor.speed_rpm")) == 0
    assert demo.on_loop(lambda: image["press"].get("press.cycle_start")) is False
    records = logged(log)
    assert any("heartbeat conveyor.heartbeat" in str(r.get("event")) for r in records)
    assert not any(r.get("target") == "Starting" for r in records)


# --- SIGINT after Start, without a terminal ------------------------------------------------

#: A step that writes plc.run true (the safe state sets it false; nothing restores it), then
#: waits for plc.mode 5: a hold there undoes the step's writes.
RERUN = Path(__file__).resolve().parent / "cells" / "generic" / "rerun.yaml"


def test_sigint_headless_after_the_steps_write_ends_held_naming_the_question(
    tmp_path: Path,
) -> None:
    log = tmp_path / "log"
    child = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", str(RERUN), "--sim"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, CELLCTL_LOG_FILE=str(log)),
    )
    try:
        wait_until(
            lambda: any(
                r.get("event") == "TagWritten" and r.get("tag") == "plc.run" and r.get("path")
                for r in logged(log)
            ),
            30,
            "step 1 to write plc.run = true",
        )
        child.send_signal(signal.SIGINT)  # headless: a Hold, and nobody can Unhold
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()
    question = "step 1 cycle: its writes were undone: plc.run was set false by the safe state"
    assert child.returncode == 3, (out, err)  # 5 if the safe state were not confirmed
    assert "Traceback" not in err + out and "not confirmed" not in err + out
    lines = out.splitlines()
    assert f"cause: Held: {question}; re-run, skip or abort needs an operator" in lines, out
    assert "outcome: Held" in lines, out
    # The safe state, written and confirmed by the device, comes before the batch's end.
    safe = next(
        i for i, line in enumerate(lines) if "safe state (Holding): plc.run = false ok" in line
    )
    ended = next(i for i, line in enumerate(lines) if "batch ended Held" in line)
    assert safe < ended, out
    assert any("the operator (SIGINT)" in line for line in lines[:safe]), out
