"""A connect that takes long says whom it is trying to reach and which try this is, within a
second, instead of a blank screen until it gives up: `read`, `write` and `run` against a
Modbus TCP device whose port refuses every connection (bound on 127.0.0.1, never listening).

Off a terminal each try is a plain line on stderr; on a terminal the line stands in place
until the device answers or the connect gives up. Each test ends the child once it has seen
what it looks for: nothing waits for the connect to give up.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.test_run_terminal import CELLS, DWELL, Terminal, terminal

__all__ = ["terminal"]  # the fixture, imported for the test below

#: The connect window of the cell below: timeout × (retries + 1).
WINDOW = 10.0
#: Within a second, with room for a loaded 2-core machine (DESIGN §6: bound × 3 + 1 s).
SHOWN_WITHIN = 1.0 * 3 + 1


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections (bound, so no one else takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def unreachable_cell(tmp_path: Path, refused_port: int) -> Path:
    """The generic cell with its device on the refusing port and a 10 s connect window."""
    text = (CELLS / "cell.yaml").read_text(encoding="utf-8")
    text = text.replace("port: 5020", f"port: {refused_port}")
    text = text.replace("timeout: 300ms,", "timeout: 5s,")
    assert f"port: {refused_port}" in text and "timeout: 5s" in text
    cell = tmp_path / "cell.yaml"
    cell.write_text(text, encoding="utf-8")
    return cell


def plain_env() -> dict[str, str]:
    """This environment without what would make rich take a pipe for a terminal."""
    forcing = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES")
    return {k: v for k, v in os.environ.items() if k not in forcing}


def first_try(text: str, port: int) -> re.Match[str]:
    """The first connect-progress line in `text`; fails when there is none."""
    found = re.search(
        rf"connecting to plc \(127\.0\.0\.1:{port} unit 1\) … try (\d+), "
        r"gives up in (\d+\.\d) s",
        text,
    )
    assert found is not None, text
    return found


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
        found = first_try(line, refused_port)
        # Shown while the connect still had most of its window: within a second or so of it
        # starting, by the child's own clock.
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
    term = Terminal(
        ["run", str(DWELL), "--cell", str(unreachable_cell)], tmp_path / "cellctl.log", 24, 80
    )
    terminal.append(term)
    rows = term.wait_on_screen(f"connecting to plc (127.0.0.1:{refused_port} unit 1) … try")
    found = first_try("\n".join(rows), refused_port)
    assert float(found.group(2)) >= WINDOW - SHOWN_WITHIN
    # In place: one row for the device, however many tries there were.
    term.wait_on_screen(f"try {int(found.group(1)) + 2},")
    assert sum("connecting to plc" in row for row in term.screen()) == 1
