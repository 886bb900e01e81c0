"""Event lines and log records leave the control loop cheaply and arrive whole: lines for a pipe
are flushed at a frame rate and at the end, records are written by the log file's thread, in
order, each as it was when logged, and every one of them by the time the process exits."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import structlog
from rich.console import Console

from cellctl import logsetup
from cellctl.cli.consoles import FRAME, FramedLines
from cellctl.logsetup import flush_logs
from cellctl.testing import wait_until

CELL = (
    "cell: lines\ndevices:\n  m: {driver: memory}\n"
    "tags:\n  m.x: {device: m, type: int32, access: rw}\n"
)
#: A write, then a long delay: the lines before it must show while the batch still runs.
RECIPE = "recipe: r\nversion: 1\nsteps:\n  - {id: a, set: {m.x: 5}}\n  - {id: rest, delay: 60s}\n"


def records(log: Path) -> list[dict[str, object]]:
    """The JSON records of the log file so far."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line]


# --- the log file's thread --------------------------------------------------------------------


def test_a_library_record_is_written_as_it_was_when_logged(log_file: Path) -> None:
    items = ["before"]
    logging.getLogger("pymodbus.test").warning("items %s", items)
    items[0] = "after"  # the caller goes on; the file's thread renders later
    flush_logs()
    [record] = [r for r in records(log_file) if r["logger"] == "pymodbus.test"]
    assert record["event"] == "items ['before']"
    assert record["level"] == "warning"


def test_an_exception_logged_with_exc_info_true_reaches_the_file(log_file: Path) -> None:
    log = structlog.get_logger("cellctl.test")
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        log.error("it failed", exc_info=True)  # the exception being handled on this thread
    flush_logs()
    [record] = [r for r in records(log_file) if r["event"] == "it failed"]
    assert [raised["exc_type"] for raised in record["exception"]] == ["ZeroDivisionError"]  # type: ignore[attr-defined]


def test_records_reach_the_file_in_order_and_from_another_thread(log_file: Path) -> None:
    log = structlog.get_logger("cellctl.test")
    for n in range(500):
        log.info("counted", n=n)
    logging.getLogger("drivers.test").info("last")
    flush_logs()
    written = [r for r in records(log_file) if r["logger"] in ("cellctl.test", "drivers.test")]
    assert [r.get("n") for r in written] == [*range(500), None]
    assert written[-1]["event"] == "last"
    assert all(str(r["timestamp"]).endswith("Z") for r in written)
    # The writer is a thread of its own, alive while logging is configured.
    writer = logsetup._WRITER[0]._thread
    assert writer is not None and writer.is_alive() and writer is not threading.current_thread()


# --- event lines for a pipe or a file ---------------------------------------------------------


class _Flushes(io.StringIO):
    """A file that counts its flushes."""

    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def _console(file: io.StringIO) -> Console:
    # As cellctl.cli.consoles.out, on a file.
    return Console(file=file, highlight=False, soft_wrap=True, emoji=False)


@pytest.mark.parametrize(
    "line",
    [
        "12:00:00.000 step 1 a started: m.x := 5",
        "a tab\there",
        "a carriage return\rand a bell\a",
        "wide 漢字 and a combining é",
        "trailing spaces   ",
        "[bold]not markup[/bold] :100: " + "x" * 300,
        "a no-break\u00a0space",
    ],
)
def test_a_framed_line_is_what_rich_prints(line: str) -> None:
    ours, rich = _Flushes(), _Flushes()
    FramedLines(_console(ours)).write(line)
    _console(rich).print(line, markup=False)
    assert ours.getvalue() == rich.getvalue()


@pytest.mark.asyncio
async def test_framed_lines_are_flushed_within_a_frame() -> None:
    file = _Flushes()
    lines = FramedLines(_console(file))
    lines.write("one")
    lines.write("two")
    assert file.flushes == 0  # many lines a second: no flush each
    await wait_until(lambda: file.flushes == 1, FRAME * 20, "the frame's flush")
    assert file.getvalue() == "one\ntwo\n"


def test_a_batch_piped_shows_its_lines_while_it_runs_and_every_record_by_its_exit(
    tmp_path: Path,
) -> None:
    (tmp_path / "cell.yaml").write_text(CELL, encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    log = tmp_path / "run.log"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # a service's pipe
    child = subprocess.Popen(
        [sys.executable, "-m", "cellctl", "run", str(recipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**env, "CELLCTL_LOG_FILE": str(log)},
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(child.stdout or []), daemon=True)
    reader.start()
    try:
        # The delay's start is the last line for a minute: it is seen now, not at the exit.
        wait_until(lambda: any("rest started" in s for s in seen), 30, "the delay's line")
        assert child.poll() is None
        wait_until(
            lambda: any(r.get("event") == "TagWritten" for r in records(log)),
            10,
            "the write's record in the log file while the batch runs",
        )
        child.send_signal(signal.SIGINT)  # Hold, which cuts the delay; nobody can Unhold
        child.wait(timeout=30)
        reader.join(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.stderr is not None
    assert child.returncode == 3, (seen, child.stderr.read())
    text = "".join(seen)
    assert text.index("wrote m.x = 5") < text.index("rest started") < text.index("outcome:")
    assert "outcome: Held" in text
    # Every event the batch logged is in the file, the last one too.
    events = [r["event"] for r in records(log)]
    assert events.count("BatchEnded") == 1, events
    assert events.index("TagWritten") < events.index("BatchEnded")


def test_framed_lines_without_a_loop_are_flushed_at_once() -> None:
    file = _Flushes()
    FramedLines(_console(file)).write("alone")
    assert (file.getvalue(), file.flushes) == ("alone\n", 1)
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
