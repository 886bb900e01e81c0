"""`cellctl report --format html` in a real browser: Debian's chromium, headless, driven over
the DevTools protocol on a pipe (stdlib only). The page loads with no console error, no
exception and no request beyond the file itself; no script exists in its DOM (a tag value
holds "<script>"); and each step's rect of the Gantt has a non-zero box as laid out.

The journal is made as tests/test_journal_report.py makes it: real batches on the memory
driver, their events recorded through `rows_for`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellctl import cli
from cellctl.control.journal.record import batch_record
from cellctl.control.journal.store import SqliteStore
from hil_tests.conftest import tool_missing
from hil_tests.support import with_room
from tests.test_journal_report import B1, B2, make_journal

CHROMIUM = Path("/usr/bin/chromium")
#: Seconds for chromium to start and answer, and for a page to load (a loaded 2-core machine).
DEADLINE = with_room(10.0)
#: Chromium's flags: no network of its own, no first-run work, a throwaway profile.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
]


class DevTools:
    """Chromium with the DevTools protocol on a pipe: it reads commands on its fd 3 and writes
    answers and events on its fd 4, each message JSON ended by a NUL."""

    def __init__(self, profile: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # A Python shim puts the two pipe ends on fds 3 and 4, as chromium expects them, and
        # execs it (copied above 9 first: either end may itself be fd 3 or 4).
        shim = (
            "import fcntl, os, sys\n"
            "r, w = (fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3])\n"
            "os.dup2(r, 3); os.dup2(w, 4); os.closerange(5, 64)\n"
            "os.execv(sys.argv[3], sys.argv[3:])\n"
        )
        command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={profile}", "about:blank"]
        self.process = subprocess.Popen(
            [sys.executable, "-c", shim, str(to_browser_r), str(from_browser_w), *command],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None

    def close(self) -> None:
        """Ask chromium to close, then make sure it is gone."""
        with contextlib.suppress(OSError, AssertionError):  # it may be gone already
            self.send("Browser.close", session=False)
        try:
            self.process.wait(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)

    def _message(self, deadline: float) -> dict[str, Any]:
        """The next message from chromium; AssertionError at the deadline or if it exits."""
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            assert left > 0, "chromium did not answer in time"
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 65536)
                assert chunk, f"chromium closed its pipe (exit {self.process.poll()})"
                self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(self, method: str, session: bool = True, **params: Any) -> dict[str, Any]:
        """Send a command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        command: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session and self.session is not None:
            command["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(command).encode() + b"\0")
        deadline = time.monotonic() + DEADLINE
        while True:
            message = self._message(deadline)
            if message.get("id") == self._next_id:
                assert "error" not in message, f"{method}: {message['error']}"
                result: dict[str, Any] = message.get("result", {})
                return result
            self.events.append(message)

    def wait_event(self, method: str) -> dict[str, Any]:
        """The first event `method` (kept or still to come)."""
        deadline = time.monotonic() + DEADLINE
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            message = self._message(deadline)
            self.events.append(message)
            if message.get("method") == method:
                return message

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """B-0001 (through a hold and a trip) and B-0002 (unfinished, a write of unknown outcome)."""
    return make_journal(tmp_path_factory.mktemp("journal") / "journal.sqlite")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    """Chromium headless on a pipe, attached to a blank page with the domains enabled."""
    if not os.access(CHROMIUM, os.X_OK):
        tool_missing("browser", f"{CHROMIUM} is not installed (apt-get install chromium)")
    tools = DevTools(tmp_path / "profile")
    try:
        targets = tools.send("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = tools.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)
        tools.session = attached["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        yield tools
    finally:
        tools.close()


def _problems(events: list[dict[str, Any]]) -> list[str]:
    """Console errors, uncaught exceptions and logged errors among the events."""
    found = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            found.append(f"console.{params['type']}: {params.get('args')}")
        elif method == "Runtime.exceptionThrown":
            found.append(f"exception: {params.get('exceptionDetails')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            found.append(f"log: {params['entry'].get('text')}")
    return found


@pytest.mark.parametrize("batch", [B1, B2])
def test_the_html_report_renders_in_chromium_with_a_box_per_step(
    journal: Path, tmp_path: Path, browser: DevTools, batch: str
) -> None:
    page = tmp_path / f"{batch}.html"
    argv = ["report", batch, "--format", "html", "-o", str(page), "--journal", str(journal)]
    assert cli.run(argv) == 0
    store = SqliteStore(journal, readonly=True)
    try:
        record = batch_record(store, batch)
    finally:
        store.close()

    browser.send("Page.navigate", url=page.as_uri())
    browser.wait_event("Page.loadEventFired")

    assert browser.evaluate("document.readyState") == "complete"
    assert _problems(browser.events) == []
    # One file: the page is the only request, nothing fetched (no font, image or script).
    requested = [
        e["params"]["request"]["url"]
        for e in browser.events
        if e.get("method") == "Network.requestWillBeSent"
    ]
    assert requested == [page.as_uri()]
    # The "<script>" of a tag value and a parameter is text, not an element.
    assert browser.evaluate("document.scripts.length") == 0
    assert "<script>alert('x')</script>" in browser.evaluate("document.body.innerText")
    # A rect per step run, each laid out with a non-zero box.
    boxes = browser.evaluate(
        "Array.from(document.querySelectorAll('svg.gantt rect.step')).map(r => {"
        " const b = r.getBoundingClientRect(); return [r.dataset.path, b.width, b.height]; })"
    )
    assert [path for path, _, _ in boxes] == [step.path for step in record.steps]
    assert all(width > 0 and height > 0 for _, width, height in boxes), boxes
    # The timeline's holds and trips are drawn too, and the writes table has a row per write.
    holds = browser.evaluate("document.querySelectorAll('svg.gantt rect.hold').length")
    trips = browser.evaluate("document.querySelectorAll('svg.gantt line.trip').length")
    assert (holds, trips) == (len(record.holds), len(record.trips))
    # (The parser puts the rows after <thead> in a <tbody> of their own.)
    rows = browser.evaluate("document.querySelectorAll('table.writes tbody tr').length")
    assert rows == len(record.writes)
