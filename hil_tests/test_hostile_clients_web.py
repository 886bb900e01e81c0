"""The web view (`cellctl serve --http`) as hostile clients see it, over raw sockets on loopback:
garbage, half a request then silence, a body that never ends, huge headers and bodies, bad JSON,
many connections and many event streams. Each is answered with HTTP's own error (400, 408, 413,
503) or closed within the request deadline, a well-behaved client is still served, and the
server's file descriptors and memory come back.

The server is the one hil_tests/test_web_server.py starts (its `serve`, TableBackend, Client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import pytest_asyncio

from cellctl.testing import wait_until
from cellctl.web.context import MAX_BODY
from cellctl.web.events import MAX_STREAMS_PER_PEER
from cellctl.web.protocol import MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER
from hil_tests.test_web_server import Web, serve

#: The request deadline of the module's server (the product's is 10 s).
DEADLINE = 0.3
#: How long a test waits for an answer or a close that should come at once.
PROMPT = 3.0
#: Another host on loopback: the per-peer limits count it apart from 127.0.0.1.
OTHER_HOST = "127.0.0.2"


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Web]:
    """A web view without a users file (on loopback every visitor is admin), a short request
    deadline."""
    served = await serve(
        tmp_path_factory.mktemp("hostile-web"), None, ping=0.5, request_deadline=DEADLINE
    )
    yield served
    await served.thread.stop()
    assert served.failures == []


def port_of(web: Web) -> int:
    """The server's port."""
    return int(web.url.rsplit(":", 1)[1])


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the server from `source`."""
    return socket.create_connection(("127.0.0.1", port), timeout=PROMPT, source_address=(source, 0))


def until_closed(sock: socket.socket, within: float = PROMPT) -> tuple[bytes, bool]:
    """What the server sends until it closes, and whether it closed within `within` seconds."""
    got = b""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def exchange(port: int, data: bytes, source: str = "127.0.0.1") -> tuple[bytes, bool]:
    """Send `data` on a new connection: what came back until the server closed, and whether it
    did."""
    with connect(port, source) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # closed early: fine
            sock.sendall(data)
        return until_closed(sock)


def get(path: str, extra: str = "") -> bytes:
    """A GET of `path` that asks the server to close after answering."""
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n".encode()


def fds() -> int:
    """This process's open file descriptors (the server runs on a thread of it)."""
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    """This process's resident memory in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


async def served_well(web: Web, source: str = "127.0.0.1") -> None:
    """A well-behaved client is answered."""
    answer, closed = await asyncio.to_thread(exchange, port_of(web), get("/favicon.ico"), source)
    assert answer.startswith(b"HTTP/1.1 200") and closed, answer[:200]


async def session_of(web: Web) -> tuple[str, str]:
    """A session (without a users file: given to any loopback visitor): its cookie header
    value and its CSRF token."""
    answer, _ = await asyncio.to_thread(exchange, port_of(web), get("/api/state"))
    head, _, body = answer.partition(b"\r\n\r\n")
    cookie = next(
        line.split(b":", 1)[1].split(b";")[0].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"set-cookie: cellctl_session=")
    )
    return cookie, json.loads(body)["me"]["csrf"]


def post(path: str, body: bytes, cookie: str, csrf: str, *, length: int | None = None) -> bytes:
    """A POST of `body` (announced as `length` bytes) with the session's cookie and token."""
    announced = len(body) if length is None else length
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nCookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {announced}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


# -- garbage and silence ------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_garbage_is_answered_400_and_closed(web: Web) -> None:
    port = port_of(web)
    tls_hello = bytes.fromhex("16030100a5010000a10303") + os.urandom(32)
    for garbage in (
        os.urandom(2000) + b"\r\n\r\n",
        b"\x00" * 100 + b"\r\n\r\n",
        tls_hello + b"\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost 127.0.0.1\r\n\r\n",
        b"POST /api/request HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n",
    ):
        answer, closed = await asyncio.to_thread(exchange, port, garbage)
        assert answer.startswith(b"HTTP/1.1 400") and closed, (garbage[:40], answer[:100])
    await served_well(web)
    assert web.failures == []


@pytest.mark.asyncio(loop_scope="module")
async def test_half_a_request_then_silence_is_closed_after_the_deadline(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    port = port_of(web)
    cookie, csrf = await session_of(web)

    def nothing() -> tuple[bytes, bool]:
        with connect(port) as sock:
            return until_closed(sock)

    def half_a_head() -> tuple[bytes, bool]:
        return exchange(port, b"GET /api/state HTTP/1.1\r\nHost: 127.0.0.1\r\nAcc")

    def half_a_body() -> tuple[bytes, bool]:
        return exchange(port, post("/api/request", b'{"action": "co', cookie, csrf, length=100))

    def trickle_after_a_response() -> tuple[bytes, bool]:
        # A keep-alive connection that gets its answer, then sends the next request a byte at a
        # time: each byte would restart uvicorn's own keep-alive timer.
        with connect(port) as sock:
            sock.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            first = sock.recv(65536)
            assert first.startswith(b"HTTP/1.1 200"), first[:100]
            started = time.monotonic()
            try:
                for byte in b"GET /favicon.ico HTTP/1.1\r\n" * 10:
                    sock.sendall(bytes([byte]))
                    if time.monotonic() - started > PROMPT:
                        return b"", False
                    # Paced, not a synchronisation: the point is that bytes come slowly.
                    time.sleep(DEADLINE / 10)
            except (BrokenPipeError, ConnectionResetError):
                return b"HTTP/1.1 408", True
            return until_closed(sock)

    started = time.monotonic()
    results = await asyncio.gather(
        *(
            asyncio.to_thread(case)
            for case in (nothing, half_a_head, half_a_body, trickle_after_a_response)
        )
    )
    took = time.monotonic() - started
    for name, (answer, closed) in zip(
        ("nothing", "half a head", "half a body", "a trickle"), results, strict=True
    ):
        assert closed, f"{name}: still open after {PROMPT} s"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), (name, answer[:100])
    assert results[1][0].startswith(b"HTTP/1.1 408")  # half a head is told why
    assert took >= DEADLINE
    # A body cut off by the deadline is no error of the app's (no traceback in the log).
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    await wait_until(lambda: web.thread.hub.streams == 0, what="nothing left open")
    await served_well(web)


# -- big headers, bodies, bad JSON ---------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_huge_headers_and_bodies_are_refused_not_buffered(web: Web) -> None:
    port = port_of(web)
    cookie, csrf = await session_of(web)
    # h11 refuses a head over 16 KiB that comes in pieces (400), the server one in a single read.
    for head in (
        get("/api/state", f"X-Big: {'a' * 100_000}\r\n"),
        get("/api/state", "".join(f"X-{i}: {i}\r\n" for i in range(5000))),
    ):
        answer, closed = await asyncio.to_thread(exchange, port, head)
        assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 431")) and closed, answer[:100]
    # Announced beyond the limit: refused from the head, the body never read.
    declared = post("/api/request", b"", cookie, csrf, length=100 * 1024 * 1024)
    answer, closed = await asyncio.to_thread(exchange, port, declared)
    assert answer.startswith(b"HTTP/1.1 413") and closed, answer[:100]
    assert f"over {MAX_BODY} bytes".encode() in answer

    def chunked() -> tuple[bytes, bool]:
        # No length announced: read up to the limit, then refused; the rest is never kept.
        head = post("/api/request", b"", cookie, csrf).replace(
            b"Content-Length: 0", b"Transfer-Encoding: chunked"
        )
        with connect(port) as sock:
            sock.sendall(head)
            chunk = b"%x\r\n%s\r\n" % (16384, b"[" * 16384)
            try:
                for _ in range(64):  # 1 MiB: far beyond the limit
                    sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return until_closed(sock)

    before = rss_kib()
    answer, closed = await asyncio.to_thread(chunked)
    assert answer.startswith(b"HTTP/1.1 413") and closed, answer[:100]
    assert rss_kib() - before < 16 * 1024  # MiB of body not kept
    await served_well(web)


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_json_and_wrong_types_are_400_with_a_message(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    port = port_of(web)
    cookie, csrf = await session_of(web)
    asked = len(web.backend.requests)
    for body, says in (
        (b"\xff\xfe{}", "not JSON"),
        (b"[" * 60_000, "nested too deeply"),
        (b'{"action": ' * 5_000, "nested too deeply"),
        (b"1" * 5000, "not JSON"),
        (b'"\\ud800"', "JSON object"),
        (b'{"action": ["command"]}', "action"),
        (b'{"action": "command", "command": null}', "command must be a string"),
        (b'{"action": "load", "name": "r", "parameters": [1, 2]}', "parameters"),
        (b'{"action": "force", "name": "m.speed", "value": 2.5}', "value must be a string"),
        (b'{"action": "ack", "action ": 1}', "unknown field"),
    ):
        with caplog.at_level("WARNING", logger="cellctl.web"):
            answer, closed = await asyncio.to_thread(
                exchange, port, post("/api/request", body, cookie, csrf)
            )
        head, _, text = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and closed, (body[:40], answer[:200])
        assert says in json.loads(text)["error"], (body[:40], text)
        assert any(says in r.getMessage() for r in caplog.records), says  # on record
        caplog.clear()
    assert len(web.backend.requests) == asked  # none reached the command layer


# -- many connections, many streams ---------------------------------------------------------------


@contextmanager
def held(port: int, count: int, source: str = "127.0.0.1") -> Iterator[list[socket.socket]]:
    """`count` connections from `source`, each with half a request sent; closed after."""
    with ExitStack() as stack:
        socks = []
        for _ in range(count):
            sock = stack.enter_context(connect(port, source))
            sock.sendall(b"GET /api/state HTTP/1.1\r\n")
            socks.append(sock)
        yield socks


@pytest.mark.asyncio(loop_scope="module")
async def test_one_host_cannot_take_every_connection(tmp_path: Path) -> None:
    # A server of its own: its requests have the product's deadline, so the held ones stay.
    web = await serve(tmp_path, None)
    try:
        port = port_of(web)
        await served_well(web)  # warm-up: the first request allocates what all share
        baseline = fds()

        def flood() -> tuple[tuple[bytes, bool], tuple[bytes, bool]]:
            with held(port, MAX_CONNECTIONS_PER_PEER):
                beyond = exchange(port, get("/favicon.ico"))
                other = exchange(port, get("/favicon.ico"), OTHER_HOST)
                return beyond, other

        (beyond, closed), (other, _) = await asyncio.to_thread(flood)
        assert beyond.startswith(b"HTTP/1.1 503") and closed, beyond[:100]
        assert b"too many connections" in beyond
        assert other.startswith(b"HTTP/1.1 200"), other[:100]
        await wait_until(lambda: fds() <= baseline + 2, what="the connections' fds released")
        await served_well(web)
    finally:
        await web.thread.stop()
    assert web.failures == []


@pytest.mark.asyncio(loop_scope="module")
async def test_event_streams_are_capped_per_host_and_another_host_is_served(web: Web) -> None:
    port = port_of(web)

    def streams() -> tuple[list[bytes], bytes, bytes]:
        with ExitStack() as stack:
            firsts = []
            for _ in range(MAX_STREAMS_PER_PEER):
                sock = stack.enter_context(connect(port))
                sock.sendall(get("/api/events").replace(b"Connection: close\r\n", b""))
                firsts.append(sock.recv(65536))
            beyond = exchange(port, get("/api/events"))[0]
            with connect(port, OTHER_HOST) as sock:
                sock.sendall(get("/api/events"))
                other = sock.recv(65536)
            return firsts, beyond, other

    firsts, beyond, other = await asyncio.to_thread(streams)
    assert all(first.startswith(b"HTTP/1.1 200") for first in firsts)
    assert beyond.startswith(b"HTTP/1.1 503") and b"too many pages" in beyond, beyond[:200]
    assert other.startswith(b"HTTP/1.1 200") and b"text/event-stream" in other, other[:200]
    await wait_until(lambda: web.thread.hub.streams == 0, what="every stream forgotten")


@pytest.mark.extended
@pytest.mark.timeout(120)
@pytest.mark.asyncio(loop_scope="module")
async def test_ten_thousand_connections_leave_fds_and_memory_bounded(tmp_path: Path) -> None:
    deadline = 2.0
    web = await serve(tmp_path, None, request_deadline=deadline)
    try:
        port = port_of(web)
        await served_well(web)
        fds_before, rss_before = fds(), rss_kib()
        hosts = [f"127.0.0.{i}" for i in range(1, 6)]  # 5 x 128 = 640: beyond the total too
        count = 10_000

        def flood() -> tuple[int, float]:
            with ExitStack() as stack:
                for i in range(count):
                    sock = stack.enter_context(
                        socket.create_connection(
                            ("127.0.0.1", port), timeout=10, source_address=(hosts[i % 5], 0)
                        )
                    )
                    with contextlib.suppress(OSError):  # refused and closed already
                        sock.sendall(b"GET /api/state HTTP/1.1\r\n")
                # Beyond the caps each was answered 503 and closed: the server holds at most
                # MAX_CONNECTIONS of its own beside our `count` client sockets.
                wait_until(
                    lambda: fds() - fds_before - count <= MAX_CONNECTIONS + 16,
                    within=10.0,
                    what="the refused connections closed",
                )
                held_fds = fds() - fds_before - count
                # The held ones time out: then a newcomer is served though the flood's sockets
                # are still open on this side.
                started = time.monotonic()
                while not exchange(port, get("/favicon.ico"), "127.0.0.99")[0].startswith(
                    b"HTTP/1.1 200"
                ):
                    assert time.monotonic() - started < deadline + PROMPT, "never served"
                return held_fds, time.monotonic() - started

        held_fds, waited = await asyncio.to_thread(flood)
        assert held_fds <= MAX_CONNECTIONS + 16
        assert waited < deadline + PROMPT
        await wait_until(lambda: fds() <= fds_before + 2, within=10.0, what="fds released")
        assert rss_kib() - rss_before < 64 * 1024
        await served_well(web)
    finally:
        await web.thread.stop()
    assert web.failures == []
