"""A step timeout counts monotonic time: the wall clock stepped an hour forward or back during a
wait neither fires it early nor holds it off.

The child `python -m cellctl run never.yaml --sim` runs under libfaketime, whose offset the
test changes at run time through a timestamp file, and which leaves the monotonic clock alone.
The wait watches conveyor tags that change several times a second, so it re-checks its
deadline again and again while the wall clock is off by an hour.
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

NEVER = Path(__file__).resolve().parent / "cells" / "clock" / "never.yaml"
#: The `never` step's timeout in never.yaml.
TIMEOUT = 2.0
#: The most a safety deadline may take on a loaded machine (DESIGN §6: bound × 3 + 1 s).
LATEST = TIMEOUT * 3 + 1
#: Seconds for the child to reach the wait (its start costs about a second of imports).
START_DEADLINE = 30.0
#: The earliest the timeout may be seen: the elapsed time is taken between two lines the test
#: reads, each seen a little after the child wrote it; a wall-clock deadline jumped forward
#: fires after about a millisecond, far below this.
EARLIEST = TIMEOUT / 2
HOUR = 3600
DAY = 24 * HOUR

STARTED = "step 2 never started"
TIMED_OUT = "step 'never' timed out after 2 s waiting for"
_STAMP = re.compile(r"^(\d\d):(\d\d):(\d\d\.\d\d\d) ")


@dataclass(frozen=True)
class Line:
    """One line of the child's output and the test's monotonic time when it arrived."""

    text: str
    at: float


class Child:
    """`cellctl` in a child process under libfaketime; its output lines as they arrive."""

    def __init__(self, args: list[str], libfaketime: Path, folder: Path) -> None:
        self.offset_file = folder / "faketime-offset"
        self.set_offset("+0")
        env = dict(
            os.environ,
            LD_PRELOAD=str(libfaketime),
            FAKETIME_TIMESTAMP_FILE=str(self.offset_file),
            FAKETIME_NO_CACHE="1",  # read the offset file on every call: jumps take at once
            FAKETIME_DONT_FAKE_MONOTONIC="1",
            CELLCTL_LOG_FILE=str(folder / "cellctl.log"),
        )
        self.lines: queue.Queue[Line | None] = queue.Queue()
        self.seen: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cellctl", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for text in self.process.stdout:
            self.lines.put(Line(text.rstrip("\n"), time.monotonic()))
        self.lines.put(None)  # end of output

    def set_offset(self, offset: str) -> None:
        """Move the child's wall clock to real time + `offset` (e.g. '+3600'), atomically."""
        staged = self.offset_file.with_suffix(".new")
        staged.write_text(f"{offset}\n", encoding="utf-8")
        os.replace(staged, self.offset_file)

    def wait_line(self, needle: str, deadline: float) -> Line:
        """The first line containing `needle`; fails at the monotonic `deadline` or at EOF."""
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(self._missing(needle, "in time")) from None
            if line is None:
                raise AssertionError(self._missing(needle, "before cellctl ended"))
            self.seen.append(line.text)
            if needle in line.text:
                return line

    def _missing(self, needle: str, when: str) -> str:
        return f"no line with {needle!r} {when}; cellctl wrote:\n" + "\n".join(self.seen)

    def stop(self) -> None:
        """Kill the child if it still runs; reap it."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    """The children a test started, killed after it if still running."""
    children: list[Child] = []
    yield children
    for child in children:
        child.stop()


def wall_seconds(line: Line) -> float:
    """Seconds since midnight of the wall-clock stamp (HH:MM:SS.mmm) the child put on a line."""
    found = _STAMP.match(line.text)
    assert found, f"no time stamp on {line.text!r}"
    hours, minutes, seconds = found.groups()
    return int(hours) * HOUR + int(minutes) * 60 + float(seconds)


@pytest.mark.parametrize(
    "jump",
    # An hour back is the extended tier's (5 s more of a child run under libfaketime).
    [HOUR, pytest.param(-HOUR, marks=pytest.mark.extended)],
    ids=["forward", "backward"],
)
def test_step_timeout_holds_when_the_wall_clock_jumps_an_hour(
    jump: int, libfaketime: Path, tmp_path: Path, children: list[Child]
) -> None:
    child = Child(["run", str(NEVER), "--sim", "--speed", "10"], libfaketime, tmp_path)
    children.append(child)
    started = child.wait_line(STARTED, time.monotonic() + START_DEADLINE)
    child.set_offset(f"{jump:+d}")
    timed_out = child.wait_line(TIMED_OUT, started.at + LATEST)
    code = child.process.wait(timeout=START_DEADLINE)

    elapsed = timed_out.at - started.at
    assert EARLIEST <= elapsed <= LATEST, "\n".join(child.seen)
    assert code == 3, "\n".join(child.seen)  # Held after the failed step: nobody can Unhold
    # The jump reached the child: its own stamps moved by the jump (plus the 2 s waited; our
    # reading of its lines may lag on a loaded machine, the jump is an hour).
    moved = (wall_seconds(timed_out) - wall_seconds(started)) % DAY
    assert abs(moved - (jump + elapsed) % DAY) < 5.0, (started.text, timed_out.text)
