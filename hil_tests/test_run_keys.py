"""`cellctl run` on a real pseudo-terminal: the operator's remaining paths — `h` holds and `u`
unholds, Ctrl-C holds again after an Unhold, a second Ctrl-C or `a` aborts, a typed prompt
answer is checked and asked again, a failed step is skipped or retried — and Ctrl-C or SIGTERM
while still connecting ends the run with exit 130, nothing written.

The pty harness (a child whose controlling terminal is the pty) is test_run_terminal's.
"""

from __future__ import annotations

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
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from cellctl.cell import ModbusTcpDevice
from cellctl.testing import serve, wait_until
from hil_tests.run_support import edit_cell
from hil_tests.test_run_terminal import (
    CELLS,
    CTRL_C,
    DWELL,
    ENTER,
    Terminal,
    run_on_terminal,
    terminal,
)

ASK = CELLS / "ask.yaml"
AWAIT = CELLS / "await.yaml"
HELD = "u unhold · a abort"
CHOICE = "the step failed: r retry it · s skip it"

__all__ = ["terminal"]  # the fixture, imported for the tests below


def logged(tmp_path: Path, event: str) -> list[dict[str, object]]:
    """The records of one controller event in the child's JSON log, in order.

    The live view shows only the last few events of each frame: a burst of events between two
    frames is in the log, not necessarily on the screen.
    """
    records = []
    for line in (tmp_path / "cellctl.log").read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if record.get("event") == event:
            records.append(record)
    return records


def changes(tmp_path: Path) -> list[tuple[object, object, object]]:
    """Every state change the child logged: (source, target, cause)."""
    return [(r["source"], r["target"], r["cause"]) for r in logged(tmp_path, "StateChanged")]


# --- hold, unhold, abort ------------------------------------------------------------------------


def test_h_holds_and_u_unholds_to_complete(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, DWELL)
    term.wait_for("step 2 dwell started: delay 2s", "Ctrl-C or h hold")

    at = term.press(b"h")
    shown = term.wait_for("state Holding -> Held", HELD, since=at)
    assert "safe state (Holding): plc.run = false ok" in shown
    assert "state Held" in shown  # the header
    assert term.child.poll() is None  # Held on a terminal waits for the operator

    at = term.press(b"u")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "step 2 dwell started" in after  # the cut delay runs again
    assert "outcome: Complete" in after
    assert "steps: 3 done, 0 skipped, 0 failed" in after
    assert ("Execute", "Holding", "the operator (key h)") in changes(tmp_path)
    assert ("Held", "Unholding", "the operator (key u)") in changes(tmp_path)


def test_p_suspends_writing_nothing_and_p_again_unsuspends(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminal, tmp_path, DWELL)
    term.wait_for("step 2 dwell started: delay 2s", "p suspend")

    at = term.press(b"p")
    shown = term.wait_for("state Suspending -> Suspended", "p unsuspend", since=at)
    assert "safe state" not in shown  # an external cause: nothing is written
    assert term.child.poll() is None

    at = term.press(b"p")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "step 2 dwell started" in after  # the cut delay runs again
    assert "outcome: Complete" in after
    assert ("Execute", "Suspending", "the operator (key p)") in changes(tmp_path)
    assert ("Suspended", "Unsuspending", "the operator (key p)") in changes(tmp_path)
    assert not logged(tmp_path, "SafeStateWritten")


def test_ctrl_c_after_an_unhold_holds_again_and_a_aborts(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminal, tmp_path, DWELL)
    term.wait_for("step 2 dwell started: delay 2s")

    at = term.press(CTRL_C)
    term.wait_for("state Holding -> Held", HELD, since=at)
    at = term.press(b"u")
    term.wait_for("state Unholding -> Execute", "step 2 dwell started", since=at)

    # Running again: this Ctrl-C is a first one again, so it holds rather than aborts.
    at = term.press(CTRL_C)
    shown = term.wait_for("state Holding -> Held", HELD, since=at)
    assert "Abort" not in shown
    assert term.child.poll() is None

    at = term.press(b"a")
    assert term.exit_code() == 3, term.text()
    assert "outcome: Aborted" in term.text(at)
    assert "stop" not in [r["step_id"] for r in logged(tmp_path, "StepStarted")]  # step 3
    assert [c for c in changes(tmp_path) if c[1] in ("Holding", "Unholding", "Aborting")] == [
        ("Execute", "Holding", "the operator (Ctrl-C)"),
        ("Held", "Unholding", "the operator (key u)"),
        ("Execute", "Holding", "the operator (Ctrl-C)"),
        ("Held", "Aborting", "the operator (key a)"),
    ]


def test_a_second_ctrl_c_while_holding_aborts(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, DWELL)
    term.wait_for("step 2 dwell started: delay 2s")

    at = term.press(CTRL_C)
    term.wait_for("state Execute -> Holding (Hold)", since=at)
    at = term.press(CTRL_C)  # Holding or Held by now: either way the second one aborts
    assert term.exit_code() == 3, term.text()
    after = term.text(at)
    assert "safe state (Aborting): plc.run = false ok" in after
    assert "outcome: Aborted" in after
    assert "Traceback" not in term.text()
    aborts = [c for c in changes(tmp_path) if c[1] == "Aborting"]
    assert len(aborts) == 1 and aborts[0][0] in ("Holding", "Held"), aborts
    assert aborts[0][2] == "the operator (Ctrl-C)"


# --- a typed prompt ------------------------------------------------------------------------------


def test_a_wrong_answer_is_refused_and_asked_again(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    term = run_on_terminal(terminal, tmp_path, ASK)
    shown = term.wait_for("prompt ask-speed: Type the belt speed", "(Enter to answer)")
    assert "answer rpm: a whole number in 100..2000" in shown

    at = term.press(b"5000" + ENTER)
    term.wait_for("'5000': 5000 is out of range: expects a whole number in 100..2000", since=at)
    at = term.press(b"fast" + ENTER)
    term.wait_for("'fast': ", since=at)
    assert "wrote plc.speed" not in term.text()  # nothing used (Resetting wrote plc.run)
    assert term.child.poll() is None  # asked again, nothing used

    at = term.press(b"1500" + ENTER)
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "wrote plc.speed = 1500" in after
    assert "outcome: Complete" in after
    assert "steps: 2 done, 0 skipped, 0 failed" in after
    assert [r["value"] for r in logged(tmp_path, "PromptAnswered")] == [1500]


# --- a failed step -------------------------------------------------------------------------------


def held_on_the_failed_wait(term: Terminal) -> None:
    """Wait until the batch is Held on the failed `await-mode` step, and check what it says."""
    shown = term.wait_for("state Holding -> Held", HELD)
    assert "✗ 2 await-mode failed" in shown  # the step tree marks it
    assert "state Execute -> Holding (Hold): step 'await-mode' timed out after 0.3 s" in shown
    assert "safe state (Holding): plc.run = false ok" in shown


def test_u_after_a_failed_step_asks_and_s_skips(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, AWAIT)
    held_on_the_failed_wait(term)

    at = term.press(b"u")
    term.wait_for(CHOICE, since=at)
    assert "Unholding" not in term.text(at)  # nothing happens before the choice

    at = term.press(b"s")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "step 2 await-mode skipped: skipped by the operator" in after
    assert "wrote plc.run = false" in after  # step 3 ran
    assert "outcome: Complete" in after
    assert "steps: 2 done, 1 skipped, 0 failed" in after  # skipped after its failure
    assert ("Held", "Unholding", "the operator (key u, then s)") in changes(tmp_path)


@pytest.fixture
def served_generic(tmp_path: Path) -> Iterator[tuple[Path, ModbusTcpDevice]]:
    """The generic cell on its simulator in this process (the plant side the test writes to),
    and a cell file pointing at it."""
    with serve(CELLS / "cell.yaml", tmp_path) as served:
        device = served.simulator.served_cell.devices["plc"]
        assert isinstance(device, ModbusTcpDevice)
        yield served.cell_file, device


def write_register(device: ModbusTcpDevice, address: int, value: int) -> None:
    """Write one holding register of the device with a raw pymodbus client (the plant side)."""
    # Any: pymodbus's sync connect() and close() are untyped.
    client: Any = ModbusTcpClient(device.host, port=device.port, timeout=1.0, retries=0)
    try:
        assert client.connect(), f"plc at {device.host}:{device.port}: no connection"
        reply = client.write_register(address, value, device_id=device.unit)
        assert not reply.isError(), reply
    finally:
        client.close()


def test_r_after_the_plant_is_ready_runs_the_failed_step_again(
    terminal: list[Terminal], tmp_path: Path, served_generic: tuple[Path, ModbusTcpDevice]
) -> None:
    cell_file, device = served_generic
    term = Terminal(["run", str(AWAIT), "--cell", str(cell_file)], tmp_path / "cellctl.log")
    terminal.append(term)
    held_on_the_failed_wait(term)

    write_register(device, 1, 5)  # plc.mode = 5: what the wait waited for
    at = term.press(b"u")
    term.wait_for(CHOICE, since=at)
    at = term.press(b"r")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "wrote plc.run = false" in after  # step 3 ran
    assert "outcome: Complete" in after
    assert "steps: 3 done, 0 skipped, 0 failed" in after  # the retry counts as done
    assert ("Held", "Unholding", "the operator (key u, then r)") in changes(tmp_path)
    ends = [(r["step_id"], r["outcome"]) for r in logged(tmp_path, "StepEnded")]
    assert ends == [
        ("start", "done"),
        ("await-mode", "failed"),
        ("await-mode", "done"),  # run again, and met this time
        ("stop", "done"),
    ]
    met = [r for r in logged(tmp_path, "WaitProgress") if r["met"]]
    assert [r["values"] for r in met] == [{"plc.mode": 5}]


# --- Ctrl-C or SIGTERM while connecting ------------------------------------------------------

FROZEN_CELL = """\
cell: frozen
devices:
  ua: {{driver: opcua, endpoint: "opc.tcp://127.0.0.1:{port}/ua", timeout: 5s}}
tags:
  ua.x: {{device: ua, node: "ns=2;s=X", type: float64, access: rw}}
safe_state: {{ua.x: 0.0}}
"""

FROZEN_RECIPE = """\
recipe: frozen
version: 1
steps:
  - {id: move, set: {ua.x: 1.5}}
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_connecting_exits_130_writing_nothing(
    tmp_path: Path, signum: signal.Signals
) -> None:
    accepted: list[socket.socket] = []
    with socket.socket() as frozen:  # accepts the TCP connection, never answers OPC UA Hello
        frozen.bind(("127.0.0.1", 0))
        frozen.listen()
        frozen.settimeout(30)
        cell = tmp_path / "cell.yaml"
        cell.write_text(FROZEN_CELL.format(port=frozen.getsockname()[1]), encoding="utf-8")
        recipe = tmp_path / "frozen.yaml"
        recipe.write_text(FROZEN_RECIPE, encoding="utf-8")
        child = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "run", str(recipe), "--cell", str(cell)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ, CELLCTL_LOG_FILE=str(tmp_path / "log")),
        )
        taker = threading.Thread(target=lambda: accepted.append(frozen.accept()[0]), daemon=True)
        taker.start()
        try:
            wait_until(lambda: bool(accepted), 30, "cellctl to connect")
            # Connected, waiting up to 5 s × 2 for an answer that never comes. The scenario, not
            # a synchronisation: about a second in, the operator gives up.
            time.sleep(1.0)
            assert child.poll() is None
            child.send_signal(signum)
            started = time.monotonic()
            out, err = child.communicate(timeout=10)
            took = time.monotonic() - started
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
            for conn in accepted:
                conn.close()
    assert child.returncode == 130, out + err
    assert took < 5.0, f"took {took:.2f} s after the signal"  # not the 9 s the read has left
    assert "nothing was written" in out + err
    assert "Traceback" not in out + err
    assert "wrote" not in out


# --- the final view ------------------------------------------------------------------------------


def final_value(text: str, tag: str) -> str:
    """The value cell of `tag` in the last tags table shown before the summary."""
    frame = text[: text.rindex("outcome: ")]
    row = frame[frame.rindex(f"│ {tag} ") :].splitlines()[0]
    return row.split("│")[3].strip()


# Regression: the final frame was printed when the Live block ended, before the last fresh
# read, so a tag the last step wrote showed its old value until a poll came (never, with a slow
# poll).
def test_the_final_view_shows_what_the_last_step_wrote(
    terminal: list[Terminal], tmp_path: Path, served_generic: tuple[Path, ModbusTcpDevice]
) -> None:
    cell_file, _ = served_generic
    slow = tmp_path / "slow.yaml"  # no poll lands between the last write and the end
    edit_cell(cell_file, slow, "plc", poll="5s")
    term = Terminal(["run", str(ASK), "--cell", str(slow)], tmp_path / "cellctl.log")
    terminal.append(term)
    term.wait_for("(Enter to answer)")
    term.press(b"1500" + ENTER)
    assert term.exit_code() == 0, term.text()
    assert "wrote plc.speed = 1500" in term.text()
    assert final_value(term.text(), "plc.speed") == "1500"
