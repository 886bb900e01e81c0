"""Every event reaches the web view's open pages in time: a state change caused through the web
view's command layer reaches a reader of /api/events of a real `cellctl serve --http` child
(the demo cell on its simulators, loopback development mode) within the issue's 200 ms, with
room for a loaded machine (DESIGN §6). The figure itself is the bench's (figure 14).

The reader is a raw HTTP/1.1 client over asyncio streams (chunked transfer read by hand), each
event stamped on the monotonic clock when its chunk arrives; the time runs from the request's
send, so it is an upper bound of the event's own way to the page.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cellctl.testing import wait_until
from hil_tests.service_support import ServiceChild, service_in_child
from hil_tests.support import with_room

#: The issue's goal for an event to reach open pages, as a test may assert it.
BOUND = with_room(0.2)
#: Seconds a request may take to be answered; a batch to reach a state.
ANSWER_WITHIN = 30.0


async def _http(base: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = base.removeprefix("http://").rsplit(":", 1)
    return await asyncio.open_connection(host, int(port))


def _request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines += [f"Content-Length: {len(body)}"] if method == "POST" else []
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    return status, headers


@dataclass
class Page:
    """An open page's event stream: each event as (arrival on the monotonic clock, name,
    data), and the session that the stream's answer set."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    cookie: str = ""
    events: list[tuple[float, str, Any]] = field(default_factory=list)

    async def read(self) -> None:
        """Read the stream (chunked transfer, events split on blank lines) until it ends."""
        buffer = b""
        while size := int((await self.reader.readline()).split(b";")[0], 16):
            chunk = await self.reader.readexactly(size + 2)
            now = time.monotonic()
            buffer += chunk[:-2]
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                if event.startswith(b"event: "):
                    name, _, data = event.partition(b"\n")
                    parsed = json.loads(data.removeprefix(b"data: "))
                    self.events.append((now, name[7:].decode(), parsed))

    def state(self) -> str:
        """The state the last status shown says."""
        for _, name, data in reversed(self.events):
            if name == "status":
                return str(data["state"])
            if name == "state":
                return str(data["status"]["state"])
        return ""

    def showing(self, state: str) -> Callable[[], bool]:
        """Whether the page shows `state` now."""
        return lambda: self.state() == state

    def shown(self, states: Collection[str], after: int) -> Callable[[], bool]:
        """Whether a status after event `after` has shown one of `states`."""
        return lambda: self.first_status_in(states, after) is not None

    def first_status_in(self, states: Collection[str], after: int) -> float | None:
        """When the first status after event `after` showing one of `states` arrived."""
        for at, name, data in self.events[after:]:
            if name == "status" and data["state"] in states:
                return at
        return None


@pytest.fixture
def served(tmp_path: Path) -> Iterator[ServiceChild]:
    """`cellctl serve --http` on the demo cell's simulators (no users file: loopback
    development mode, every visitor an admin)."""
    with service_in_child(tmp_path / "served", http=True) as child:
        yield child
        assert child.stop() == 0, child.err


@pytest_asyncio.fixture
async def page(served: ServiceChild) -> AsyncIterator[Page]:
    """An open page: /api/events read by a task."""
    assert served.web is not None
    reader, writer = await _http(served.web)
    writer.write(_request("GET", "/api/events", {"Accept": "text/event-stream"}))
    status, headers = await _head(reader)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    opened = Page(reader, writer, headers["set-cookie"].split(";", 1)[0])
    task = asyncio.create_task(opened.read())
    try:
        yield opened
    finally:
        task.cancel()
        writer.close()


@pytest.mark.asyncio
async def test_each_state_change_reaches_an_open_page_within_the_bound(
    served: ServiceChild, page: Page
) -> None:
    await wait_until(page.showing("Stopped"), ANSWER_WITHIN, "the first state")
    csrf = next(data["me"]["csrf"] for _, name, data in page.events if name == "state")
    assert served.web is not None
    reader, writer = await _http(served.web)
    headers = {"Cookie": page.cookie, "X-CSRF-Token": csrf, "Content-Type": "application/json"}

    async def ask(body: dict[str, Any]) -> None:
        writer.write(_request("POST", "/api/request", headers, json.dumps(body).encode()))
        async with asyncio.timeout(ANSWER_WITHIN):
            status, answer = await _head(reader)
            text = await reader.readexactly(int(answer["content-length"]))
        assert status == 200, text

    try:
        await ask({"action": "load", "name": "press-fit", "parameters": ["parts=5"]})
        for command, shows, then in (
            ("Reset", {"Resetting", "Idle"}, "Idle"),
            ("Start", {"Starting", "Execute"}, "Execute"),
            ("Hold", {"Holding", "Held"}, "Held"),
            ("Stop", {"Stopping", "Stopped"}, "Stopped"),
        ):
            seen = len(page.events)
            sent = time.monotonic()
            await ask({"action": "command", "command": command})
            await wait_until(
                page.shown(shows, seen), BOUND + ANSWER_WITHIN, f"{command} shown on the page"
            )
            arrived = page.first_status_in(shows, seen)
            assert arrived is not None
            assert arrived - sent < BOUND, f"{command}: {arrived - sent:.3f} s to the page"
            await wait_until(page.showing(then), ANSWER_WITHIN, f"{then} on the page")
    finally:
        writer.close()
