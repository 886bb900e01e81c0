"""`cellctl run` on a real pseudo-terminal: what the live view shows, and what real keystrokes do
(stepping, skipping, continuing, aborting, a breakpoint, Ctrl-C holds and `u` unholds).

Each test runs `python -m cellctl run RECIPE --sim` as a child whose stdin, stdout and stderr
are the slave end of a pty (the pty is its controlling terminal, so Ctrl-C is a real SIGINT from
the line discipline), reads the master end in a thread and types keys into it. The cell is one
generic Modbus TCP device served by --sim in the child: its rw points keep what is written.
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

CELLS = Path(__file__).resolve().parent / "cells" / "generic"
STEPS = CELLS / "steps.yaml"
DWELL = CELLS / "dwell.yaml"

ROWS, COLUMNS = 40, 120
ENTER, CTRL_C = b"\r", b"\x03"
#: Seconds to wait for anything the child should show (its start costs about a second).
DEADLINE = 20.0

# CSI (colours, cursor moves, erase), OSC (titles, links) and the two-byte escapes.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")

# The child makes the pty its controlling terminal (it is a session leader after
# start_new_session), then becomes cellctl: exec keeps the pid, the session and the terminal.
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


class Terminal:
    """A `cellctl` child on a pseudo-terminal: everything it wrote, and keys typed into it."""

    def __init__(self, args: list[str], log_file: Path) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        env.update(TERM="xterm-256color", CELLCTL_LOG_FILE=str(log_file))
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-c", _TAKE_TERMINAL, "-m", "cellctl", *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # the child holds it now: its exit ends the master's reads
        self.master = master
        self._raw = bytearray()
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: every slave end is closed (the child ended)
                return
            if not data:
                return
            with self._lock:
                self._raw += data

    def mark(self) -> int:
        """Where the output is now: pass it as `since` to look only at what comes after."""
        with self._lock:
            return len(self._raw)

    def text(self, since: int = 0) -> str:
        """What the child wrote after `since`, escape sequences stripped."""
        with self._lock:
            raw = bytes(self._raw[since:])
        return _ANSI.sub("", raw.decode("utf-8", errors="replace")).replace("\r", "")

    def wait_for(self, *wanted: str, since: int = 0, timeout: float = DEADLINE) -> str:
        """Wait until everything in `wanted` was shown after `since`; the text shown since."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.child.poll() is not None
            if ended:
                self._reader.join(timeout)  # what it wrote before it ended is read in full
            shown = self.text(since)
            if all(w in shown for w in wanted):
                return shown
            if ended or time.monotonic() > deadline:
                missing = [w for w in wanted if w not in shown]
                raise AssertionError(
                    f"the terminal never showed {missing} (child exit {self.child.poll()}); "
                    f"it showed:\n{shown[-3000:]}"
                )
            time.sleep(0.02)

    def press(self, key: bytes) -> int:
        """Type a key; the mark from just before it, to wait for what it causes."""
        mark = self.mark()
        os.write(self.master, key)
        return mark

    def exit_code(self, timeout: float = DEADLINE) -> int:
        """Wait for the child to end and its last output to be read; its exit code."""
        code = self.child.wait(timeout)
        self._reader.join(timeout)
        return code

    def close(self) -> None:
        """Kill the child if it still runs, and close the master end."""
        if self.child.poll() is None:
            self.child.kill()
            self.child.wait(10)
        self._reader.join(10)
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[list[Terminal]]:
    """Start terminals with `terminal.append(Terminal(...))`; each is closed afterwards."""
    started: list[Terminal] = []
    yield started
    for term in started:
        term.close()


def run_on_terminal(started: list[Terminal], tmp_path: Path, *args: str | Path) -> Terminal:
    """`cellctl run ARGS --sim` on a fresh pseudo-terminal."""
    term = Terminal(["run", *map(str, args), "--sim"], tmp_path / "cellctl.log")
    started.append(term)
    return term


def pauses(text: str) -> set[str]:
    """The step paths the view said it paused before."""
    return set(re.findall(r"paused before step (\S+) ", text))


def test_step_enter_runs_s_skips_c_continues(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, STEPS, "--step", "-p", "speed=1500")
    # The first pause: Maintenance mode, the step's preview with the parameter resolved.
    shown = term.wait_for("paused before step 1 start (stepping)", "plc.speed := 1500")
    assert "Maintenance mode" in shown
    assert "mode Maintenance" in shown
    assert "Enter run · s skip · c continue · a abort" in shown
    assert "wrote" not in shown  # nothing runs before the operator says so

    at = term.press(ENTER)
    shown = term.wait_for("paused before step 2 mode (stepping)", "plc.mode := 7", since=at)
    assert "wrote plc.speed = 1500" in shown
    assert "wrote plc.mode" not in shown  # step 2 waits for its own Enter

    at = term.press(ENTER)
    term.wait_for("wrote plc.mode = 7", "paused before step 3 check (stepping)", since=at)
    at = term.press(ENTER)
    term.wait_for("paused before step 4 overwrite (stepping)", "plc.mode := 9", since=at)

    at = term.press(b"s")
    # The next preview reads the device afresh: the skipped step's 9 was never written.
    shown = term.wait_for(
        "paused before step 5 verify (stepping)", "until plc.mode == 7 (now plc.mode = 7)", since=at
    )
    assert "4 overwrite skipped" in shown

    at = term.press(b"c")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert pauses(after) <= {"5"}  # continue: no pause before step 6
    assert "wrote plc.run = false" in after
    assert "outcome: Complete" in after
    assert "steps: 5 done, 1 skipped, 0 failed" in after
    assert "wrote plc.mode = 9" not in term.text()
    assert "Traceback" not in term.text()


def test_a_at_a_step_pause_aborts(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, STEPS, "--step")
    term.wait_for("paused before step 1 start (stepping)", "plc.speed := 1200")
    at = term.press(ENTER)
    term.wait_for("paused before step 2 mode (stepping)", since=at)

    at = term.press(b"a")
    assert term.exit_code() == 3, term.text()
    after = term.text(at)
    assert "outcome: Aborted" in after
    assert "Execute -> Aborting (Abort): the operator aborted before step 'mode'" in after
    # Abort writes the cell's safe state; the paused step never ran.
    assert "safe state (Aborting): plc.run = false ok" in after
    assert "wrote plc.mode" not in term.text()


# Regression: the summary of an aborted batch names the cause of the abort.
def test_the_summary_of_an_abort_names_its_cause(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, STEPS, "--step")
    term.wait_for("paused before step 1 start (stepping)")
    at = term.press(b"a")
    assert term.exit_code() == 3, term.text()
    assert "cause: the operator aborted before step 'start'" in term.text(at)


def test_break_pauses_only_at_that_step(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, STEPS, "--break", "overwrite")
    shown = term.wait_for("paused before step 4 overwrite (breakpoint)", "plc.mode := 9")
    assert "Maintenance mode: " in shown and "breakpoints at overwrite" in shown
    # Steps 1-3 ran without asking.
    assert "wrote plc.mode = 7" in shown
    assert pauses(shown) == {"4"}

    at = term.press(b"s")
    assert term.exit_code() == 0, term.text()
    assert pauses(term.text()) == {"4"}
    after = term.text(at)
    assert "outcome: Complete" in after
    assert "steps: 5 done, 1 skipped, 0 failed" in after


def test_ctrl_c_holds_and_u_unholds_to_complete(terminal: list[Terminal], tmp_path: Path) -> None:
    term = run_on_terminal(terminal, tmp_path, DWELL)
    term.wait_for("step 2 dwell started: delay 2s", "Ctrl-C or h hold")

    at = term.press(CTRL_C)  # the line discipline turns it into SIGINT for the child
    shown = term.wait_for("state Holding -> Held", "u unhold · a abort", since=at)
    assert "state Execute -> Holding" in shown
    assert "safe state (Holding): plc.run = false ok" in shown
    assert "state Held" in shown  # the header
    assert term.child.poll() is None  # Held on a terminal waits for the operator

    at = term.press(b"u")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "state Held -> Unholding (Unhold)" in after
    assert "step 2 dwell started" in after  # the delay that was cut runs again
    assert "outcome: Complete" in after
    assert "steps: 3 done, 0 skipped, 0 failed" in after
