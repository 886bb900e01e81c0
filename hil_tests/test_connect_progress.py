"""A connect that takes long says whom it is trying to reach and which try this is, within a
second, instead of a blank screen until it gives up: `read`, `write` and `run` against a
Modbus TCP device whose port refuses every connection (bound on 127.0.0.1, never listening),
and against one that never answers (a try then lasts its whole timeout).

Off a terminal each try is a plain line on stderr; on a terminal the line stands in place
until the device answers or the connect gives up, its time left counting down. Each test ends
the child once it has seen what it looks for: nothing waits for the connect to give up.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.testing import wait_until
from hil_tests.support import with_room
from hil_tests.test_run_terminal import CELLS, DEADLINE, DWELL, Terminal, terminal

__all__ = ["terminal"]  # the fixture, imported for the test below

#: The connect window of the cell below: timeout × (retries + 1).
WINDOW = 10.0
#: Within a second, with room for a loaded 2-core machine (DESIGN §6: bound × 3 + 1 s); by
#: the test's clock from the child's start, so its imports (about 0.4 s) come out of the room.
SHOWN_WITHIN = with_room(1.0)


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, so no one else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 where a connect is never answered: it listens with a backlog of
    one that a first connection fills and nobody accepts, so the kernel drops the next SYNs."""
    with socket.socket() as listening, socket.socket() as filler:
        listening.bind(("127.0.0.1", 0))
        listening.listen(0)
        filler.connect(listening.getsockname())
        yield listening.getsockname()[1]


def cell_on(port: int, folder: Path) -> Path:
    """The generic cell with its device on `port` and a 10 s connect window (a try 5 s)."""
    text = (CELLS / "cell.yaml").read_text(encoding="utf-8")
    text = text.replace("port: 5020", f"port: {port}")
    text = text.replace("timeout: 1s,", "timeout: 5s,")
    assert f"port: {port}" in text and "timeout: 5s" in text
    cell = folder / "cell.yaml"
    cell.write_text(text, encoding="utf-8")
    return cell


@pytest.fixture
def unreachable_cell(tmp_path: Path, refused_port: int) -> Path:
    """The generic cell with its device on the refusing port and a 10 s connect window."""
    return cell_on(refused_port, tmp_path)


def plain_env() -> dict[str, str]:
    """This environment without what would make rich take a pipe for a terminal."""
    forcing = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")
    return {k: v for k, v in os.environ.items() if k not in forcing}


def first_try(text: str, port: int) -> re.Match[str]:
    """The first connect-progress line in `text`; fails when there is none."""
    found = re.search(try_pattern(port), text)
    assert found is not None, text
    return found


def try_pattern(port: int) -> str:
    """A connect-progress line of the generic cell's device: (try, seconds left) as groups."""
    return rf"connecting to plc \(127\.0\.0\.1:{port} unit 1\) … try (\d+), gives up in (\d+\.\d) s"


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["read"], id="read"),
        pytest.param(["write", "plc.run=true"], id="write"),
        pytest.param(["run", str(DWELL)], id="run"),
    ],
)
def test_off_a_terminal_each_try_is_a_line_on_stderr(
    args: list[str], unreachable_cell: Path, refused_port: int, tmp_path: Path
) -> None:
    started = time.monotonic()
    child = subprocess.Popen(
        [sys.executable, "-m", "cellctl", *args, "--cell", str(unreachable_cell)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**plain_env(), "CELLCTL_LOG_FILE": str(tmp_path / "cellctl.log")},
    )
    try:
        assert child.stderr is not None
        line = child.stderr.readline()  # blocks until the first line (pytest's timeout rules)
        shown_after = time.monotonic() - started
        found = first_try(line, refused_port)
        # Within a second of the start, by the test's clock; and by the child's, the time left
        # as the line was shown.
        assert shown_after <= SHOWN_WITHIN, line
        assert float(found.group(2)) >= WINDOW - SHOWN_WITHIN, line
        # The tries go on, each a line of its own, naming the last failure.
        following = child.stderr.readline()
        later = first_try(following, refused_port)
        assert int(later.group(1)) == int(found.group(1)) + 1
        assert following.rstrip().endswith(f"cannot open 127.0.0.1:{refused_port}")
    finally:
        child.kill()
        child.communicate(timeout=10)


def test_on_a_terminal_run_shows_the_try_in_place(
    terminal: list[Terminal], unreachable_cell: Path, refused_port: int, tmp_path: Path
) -> None:
    started = time.monotonic()
    term = Terminal(
        ["run", str(DWELL), "--cell", str(unreachable_cell)], tmp_path / "cellctl.log", 24, 80
    )
    terminal.append(term)
    rows = term.wait_on_screen(f"connecting to plc (127.0.0.1:{refused_port} unit 1) … try")
    assert time.monotonic() - started <= SHOWN_WITHIN  # by the test's clock
    found = first_try("\n".join(rows), refused_port)
    assert float(found.group(2)) >= WINDOW - SHOWN_WITHIN
    # In place: one row for the device, however many tries there were.
    term.wait_on_screen(f"try {int(found.group(1)) + 2},")
    assert sum("connecting to plc" in row for row in term.screen()) == 1


def test_on_a_terminal_the_time_left_counts_down_while_a_try_lasts(
    terminal: list[Terminal], silent_port: int, tmp_path: Path
) -> None:
    # A host that never answers: the first try lasts its whole 5 s timeout.
    cell = cell_on(silent_port, tmp_path)
    term = Terminal(["run", str(DWELL), "--cell", str(cell)], tmp_path / "cellctl.log", 24, 80)
    terminal.append(term)
    rows = term.wait_on_screen(f"connecting to plc (127.0.0.1:{silent_port} unit 1) … try 1,")
    first = float(first_try("\n".join(rows), silent_port).group(2))

    def counted_down() -> bool:
        shown = re.search(try_pattern(silent_port), "\n".join(term.screen()))
        return shown is not None and shown.group(1) == "1" and float(shown.group(2)) <= first - 1

    wait_until(counted_down, DEADLINE, "the first try's time left to count down a second")
