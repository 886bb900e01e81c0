"""`cellctl run` on a real pseudo-terminal: what the live view shows, and what real keystrokes do
(stepping, skipping, continuing, aborting, a breakpoint, Ctrl-C holds and `u` unholds).

Each test runs `python -m cellctl run RECIPE --sim` as a child whose stdin, stdout and stderr
are the slave end of a pty (the pty is its controlling terminal, so Ctrl-C is a real SIGINT from
the line discipline), reads the master end in a thread and types keys into it. The cell is one
generic Modbus TCP device served by --sim in the child: its rw points keep what is written.

What the child wrote is fed to a terminal emulator (pyte) of the pty's size: `screen()` is what
a person sees now, the live view's redrawn frames included; `text()` is the raw stream, for
what is printed once and stays (the summary, lines before the view starts).
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
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pyte
import pytest

CELLS = Path(__file__).resolve().parent / "cells" / "generic"
STEPS = CELLS / "steps.yaml"
DWELL = CELLS / "dwell.yaml"
ASK_LONG = CELLS / "ask-long.yaml"
#: The generic cell with an interlock that the recipe trips itself (plc.mode = 13 holds).
TRIP = CELLS / "interlocked" / "trip.yaml"

ROWS, COLUMNS = 40, 120
#: The sizes the live view is checked at: an ordinary terminal, and the size above.
SIZES = [pytest.param((24, 80), id="80x24"), pytest.param((ROWS, COLUMNS), id="120x40")]
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

    def __init__(
        self, args: list[str], log_file: Path, rows: int = ROWS, columns: int = COLUMNS
    ) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
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
        self._screen = pyte.Screen(columns, rows)
        self._stream = pyte.ByteStream(self._screen)
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
                self._stream.feed(data)

    def mark(self) -> int:
        """Where the output is now: pass it as `since` to look only at what comes after."""
        with self._lock:
            return len(self._raw)

    def text(self, since: int = 0) -> str:
        """What the child wrote after `since`, escape sequences stripped."""
        with self._lock:
            raw = bytes(self._raw[since:])
        return _ANSI.sub("", raw.decode("utf-8", errors="replace")).replace("\r", "")

    def screen(self) -> list[str]:
        """The rows the terminal shows now, trailing blanks stripped."""
        with self._lock:
            return [row.rstrip() for row in self._screen.display]

    def wait_on_screen(self, *wanted: str, timeout: float = DEADLINE) -> list[str]:
        """Wait until everything in `wanted` is on the screen at once; the screen's rows."""
        shown = self._wait(
            wanted,
            lambda: "\n".join(self.screen()),
            lambda w, shown: w in shown or w in flowing(shown.split("\n")),
            "the screen",
            timeout,
        )
        return shown.split("\n")

    def wait_for(self, *wanted: str, since: int = 0, timeout: float = DEADLINE) -> str:
        """Wait until everything in `wanted` was shown after `since`; the text shown since."""
        return self._wait(
            wanted, lambda: self.text(since), lambda w, shown: w in shown, "the terminal", timeout
        )

    def _wait(
        self,
        wanted: Sequence[str],
        look: Callable[[], str],
        found: Callable[[str, str], bool],
        where: str,
        timeout: float,
    ) -> str:
        """Poll what `look` shows until `found` finds every `wanted` string in it; what it
        showed. Fails naming what is missing once the deadline passed or the child ended."""
        deadline = time.monotonic() + timeout
        while True:
            ended = self.child.poll() is not None
            if ended:
                self._reader.join(timeout)  # what it wrote before it ended is read in full
            shown = look()
            if all(found(w, shown) for w in wanted):
                return shown
            if ended or time.monotonic() > deadline:
                missing = [w for w in wanted if not found(w, shown)]
                raise AssertionError(
                    f"{where} never showed {missing} (child exit {self.child.poll()}); "
                    f"it showed:\n{shown[-5000:]}"  # a whole screen of 120x40 fits
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


def run_on_terminal(
    started: list[Terminal],
    tmp_path: Path,
    *args: str | Path,
    size: tuple[int, int] = (ROWS, COLUMNS),
) -> Terminal:
    """`cellctl run ARGS --sim` on a fresh pseudo-terminal of `size` (rows, columns)."""
    term = Terminal(["run", *map(str, args), "--sim"], tmp_path / "cellctl.log", *size)
    started.append(term)
    return term


def flowing(rows: list[str]) -> str:
    """The screen's rows as one line of words: a wrapped text reads whole in it."""
    return " ".join(row.strip() for row in rows if row.strip())


def pauses(text: str) -> set[str]:
    """The step paths the view said it paused before."""
    return set(re.findall(r"paused before step (\S+) ", text))


@pytest.mark.parametrize("size", SIZES)
def test_step_enter_runs_s_skips_c_continues(
    terminal: list[Terminal], tmp_path: Path, size: tuple[int, int]
) -> None:
    term = run_on_terminal(terminal, tmp_path, STEPS, "--step", "-p", "speed=1500", size=size)
    # The first pause: Maintenance mode, the step's preview with the parameter resolved, the
    # keys. Read off the screen, as the operator sees it: each wait looks for everything that
    # one frame must show, so that a frame drawn halfway never counts.
    keys = "Enter run · s skip · c continue · a abort"
    # The keys that act now besides the pause's: every key typed goes to the pause.
    hint = "Ctrl-C hold · Ctrl-C twice abort"
    rows = term.wait_on_screen(
        "paused before step 1 start (stepping)", "plc.speed := 1500", keys, hint
    )
    assert "h hold" not in "\n".join(rows) and "p suspend" not in "\n".join(rows)
    term.wait_on_screen("mode Maintenance", "⏸ 1 start paused")
    assert "Maintenance mode" in term.text()  # printed once, before the view
    assert "wrote plc.speed" not in term.text()  # the step waits for the operator's Enter

    term.press(ENTER)
    rows = term.wait_on_screen(
        "paused before step 2 mode (stepping)", "plc.mode := 7", "✓ 1 start done", keys, hint
    )
    assert "wrote plc.mode" not in term.text()  # step 2 waits for its own Enter
    assert "· 3 check" in "\n".join(rows)

    term.press(ENTER)
    term.wait_on_screen("paused before step 3 check (stepping)", "✓ 2 mode done", keys)
    term.press(ENTER)
    term.wait_on_screen("paused before step 4 overwrite (stepping)", "plc.mode := 9", keys)

    term.press(b"s")
    # The next preview reads the device afresh: the skipped step's 9 was never written.
    term.wait_on_screen(
        "paused before step 5 verify (stepping)",
        "until plc.mode == 7 (now plc.mode = 7)",
        "↷ 4 overwrite skipped",
        keys,
    )

    at = term.press(b"c")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "paused before step 6" not in after  # continue: no pause before step 6
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
    # The commands to copy are never broken by the view (the terminal folds them: copied from
    # the screen, each is whole).
    assert re.search(r"^verify: cellctl audit verify \S+ --head [0-9a-f]{64}\b", after, re.M)
    assert re.search(r"^report: cellctl report \S+ --journal \S+$", after, re.M)


@pytest.mark.parametrize("size", SIZES)
def test_ctrl_c_holds_and_u_unholds_to_complete(
    terminal: list[Terminal], tmp_path: Path, size: tuple[int, int]
) -> None:
    term = run_on_terminal(terminal, tmp_path, DWELL, size=size)
    term.wait_on_screen("▶ 2 dwell", "Ctrl-C or h hold")

    term.press(CTRL_C)  # the line discipline turns it into SIGINT for the child
    # The screen shows the state, why it holds, and the keys that act now.
    rows = term.wait_on_screen(
        "state Held", "cause of the hold: the operator (Ctrl-C)", "u unhold · a abort"
    )
    assert [row for row in rows if row][-1] == "u unhold · a abort"  # the keys at the bottom
    assert "safe state (Holding): plc.run = false ok" in term.text()
    assert term.child.poll() is None  # Held on a terminal waits for the operator

    at = term.press(b"u")
    assert term.exit_code() == 0, term.text()
    after = term.text(at)
    assert "state Held -> Unholding (Unhold)" in after
    assert "step 2 dwell started" in after  # the delay that was cut runs again
    assert "outcome: Complete" in after
    assert "steps: 3 done, 0 skipped, 0 failed" in after
    # Running again, then ended: the last frame has no cause any more.
    assert "cause of the hold" not in "\n".join(term.screen())


@pytest.mark.parametrize("size", SIZES)
def test_a_long_prompt_its_answer_and_keys_are_on_screen(
    terminal: list[Terminal], tmp_path: Path, size: tuple[int, int]
) -> None:
    term = run_on_terminal(terminal, tmp_path, ASK_LONG, size=size)
    # The whole question (wrapped at 80 columns, never cut), the answer it wants, the entry
    # line and the keys.
    question = (
        "prompt ask-speed: Check that the belt is empty and the guard door is closed, then "
        "read the speed written on the work order for this batch and type it in revolutions "
        "per minute, as printed"
    )
    rows = term.wait_on_screen(
        question,
        "answer rpm: a whole number in 100..2000",
        "> ▌  (Enter to answer)",
        "Ctrl-C hold · Ctrl-C twice abort",
    )
    # Every key typed goes to the answer: h and p are not keys here, and the hint says so.
    assert [row for row in rows if row][-1] == "Ctrl-C hold · Ctrl-C twice abort"
    assert "h hold" not in "\n".join(rows) and "p suspend" not in "\n".join(rows)
    term.press(b"1500")
    term.wait_on_screen("> 1500▌  (Enter to answer)")
    at = term.press(ENTER)
    assert term.exit_code() == 0, term.text()
    assert "wrote plc.speed = 1500" in term.text(at)


@pytest.mark.parametrize("size", SIZES)
def test_an_interlock_trip_shows_its_cause_and_the_keys(
    terminal: list[Terminal], tmp_path: Path, size: tuple[int, int]
) -> None:
    term = run_on_terminal(terminal, tmp_path, TRIP, size=size)
    term.wait_on_screen(
        "state Held",
        "TRIP mode-13: plc.mode == 13 -> hold",
        "interlock mode-13 tripped (plc.mode == 13; plc.mode = 13): hold",
        "u unhold · a abort",
    )
    at = term.press(b"a")
    assert term.exit_code() == 3, term.text()
    assert "outcome: Aborted" in term.text(at)


#: The interlocked cell's interlock and the trip recipe's wait, written over lines in YAML.
FOLDED_CELL = """\
interlocks:
  - name: mode-13
    when: |
      plc.mode == 13
      and plc.speed == 300
    action: hold
"""
FOLDED_RECIPE = """\
recipe: folded
version: 1
steps:
  - {id: start, set: {plc.run: true, plc.speed: 300}}
  - id: settle
    wait: |
      plc.speed == 300
      and plc.run
    timeout: 5s
  - {id: trip, set: {plc.mode: 13}}
  - {id: dwell, delay: 5s}
"""


def test_at_80x24_a_condition_written_over_lines_keeps_the_keys_on_screen(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    cell = (TRIP.parent / "cell.yaml").read_text(encoding="utf-8")
    interlock = '  - {name: mode-13, when: "plc.mode == 13", action: hold}\n'
    assert interlock in cell
    (tmp_path / "cell.yaml").write_text(
        cell.replace("interlocks:\n" + interlock, FOLDED_CELL), encoding="utf-8"
    )
    (tmp_path / "folded.yaml").write_text(FOLDED_RECIPE, encoding="utf-8")
    term = run_on_terminal(terminal, tmp_path, tmp_path / "folded.yaml", size=(24, 80))
    # The trip stays (the safe state writes plc.run only), its message whole.
    rows = term.wait_on_screen(
        "state Held",
        "TRIP mode-13: plc.mode == 13 and plc.speed == 300",
        "interlock mode-13 tripped (plc.mode == 13 and plc.speed == 300 ;",
        "plc.mode = 13",
        "plc.speed = 300",
        "): hold",
        "u unhold · a abort",
    )
    # The condition's line breaks drew no extra rows: the state at the top, the keys last.
    assert any(row.startswith("state Held") for row in rows[:3]), "\n".join(rows)
    assert [row for row in rows if row][-1] == "u unhold · a abort"
    at = term.press(b"a")
    assert term.exit_code() == 3, term.text()
    assert "outcome: Aborted" in term.text(at)
