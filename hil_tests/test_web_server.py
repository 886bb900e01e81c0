"""The web view's server (`cellctl serve --http`) on its own thread, driven by a plain HTTP
client on loopback: login and sessions, CSRF, the JSON API's answers and status codes, the
event stream, the automatic login of development mode, and the HTTPS rule.

The backend is a small table-driven stand-in for the service's core (a collaborator of the
server, not the code under test): it records each request and answers from `answer`, refusing
by role as the command layer does.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cellctl.cell import Cell, load_cell
from cellctl.service.api import (
    REQUIRED_ROLE,
    Accepted,
    Caller,
    RefusalKind,
    Refused,
    Request,
    ServiceStatus,
)
from cellctl.service.certs import CertDir, init_server
from cellctl.service.logins import Authenticator, LoginGuard
from cellctl.service.passwords import hash_password
from cellctl.service.users import UsersFile
from cellctl.testing import wait_until
from cellctl.values import TagValue
from cellctl.web.thread import WebThread
from cellctl.web.tls import HttpsRequired, check_https, pem_files
from drivers.base import Quality

CELL = """\
cell: webcell
devices:
  m: {driver: memory}
tags:
  m.run: {device: m, type: bool, access: rw}
  m.speed: {device: m, type: float64, access: rw, unit: mm/s}
  m.name: {device: m, type: string}
"""
#: A cheap scrypt cost: the tests log in many times.
CHEAP = 16
PASSWORDS = {"olga": "pw-olga", "vera": "pw-vera", "erik": "pw-erik"}
STATUS = ServiceStatus(
    cell="webcell", state="Stopped", mode="Production", legal=("Reset",), security=""
)
DETAIL = {
    "steps": [],
    "running": None,
    "started_at": None,
    "worst_case": None,
    "wait": None,
    "safe_state": None,
}
RECIPES = [{"name": "press-fit", "version": 3, "description": "", "parameters": []}]
REPORT = "<!DOCTYPE html><html><body><h1>B-1</h1></body></html>"
#: A generous bound for one event to reach an open stream (the bench measures the real figure).
EVENT_BOUND = 5.0


def users(anonymous: str = "none") -> UsersFile:
    """A users file: olga operator, vera viewer, erik engineer."""
    roles = {"olga": "operator", "vera": "viewer", "erik": "engineer"}
    return UsersFile.model_validate(
        {
            "anonymous": anonymous,
            "users": {
                name: {"role": role, "password": hash_password(PASSWORDS[name], n=CHEAP)}
                for name, role in roles.items()
            },
        }
    )


class TableBackend:
    """The service as the web view sees it: a status, tag values, listeners, `answer`."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.now = STATUS
        self.detail: dict[str, Any] | None = None
        self.values: dict[str, TagValue] = {
            "m.speed": TagValue("m.speed", "m", 1.5, Quality.GOOD, time.time()),
            "m.name": TagValue("m.name", "m", None, Quality.BAD, time.time(), "lost"),
        }
        self.requests: list[tuple[Caller, Request]] = []
        self.refusals: list[tuple[str, str, str, str]] = []
        self.answer: Callable[[Request], Accepted | Refused] = self.accept
        self.listeners: list[tuple[Callable[..., None], Callable[..., None]]] = []
        self.history_asked: list[int] = []
        self.on_control_loop: list[bool] = []

    @staticmethod
    def accept(request: Request) -> Accepted:
        """Accept anything, saying what it was."""
        return Accepted(f"done: {request.describe()}")

    def status(self) -> ServiceStatus:
        """The status now."""
        return self.now

    def tag_values(self) -> Mapping[str, TagValue]:
        """The latest tag values."""
        return dict(self.values)

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """Keep the listeners; returns their removal."""
        pair = (on_status, on_tags)
        self.listeners.append(pair)
        return lambda: self.listeners.remove(pair)

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """Record the request; refuse a role below the action's, else answer from `answer`."""
        self.on_control_loop.append(threading.current_thread() is threading.main_thread())
        self.requests.append((caller, request))
        needed = REQUIRED_ROLE[request.action]
        if caller.role < needed:
            return Refused(f"needs the {needed.label} role", RefusalKind.ROLE)
        return self.answer(request)

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login."""
        self.refusals.append((what, who, peer, reason))

    def batch_detail(self) -> dict[str, Any] | None:
        """The batch detail now."""
        return self.detail

    def recipes_info(self) -> list[dict[str, Any]]:
        """The released recipes."""
        self.on_control_loop.append(threading.current_thread() is threading.main_thread())
        return RECIPES

    def history(self, last: int) -> list[dict[str, Any]]:
        """The last batches: one."""
        self.history_asked.append(last)
        return [{"batch": "B-1", "end": "Complete"}]

    def report_html(self, batch: str) -> str | None:
        """B-1's report; None for any other batch."""
        return REPORT if batch == "B-1" else None

    def publish(self, status: ServiceStatus) -> None:
        """A new status, to every listener (as the core does on the control loop)."""
        self.now = status
        for on_status, _ in list(self.listeners):
            on_status(status)

    def publish_tags(self, values: Mapping[str, TagValue]) -> None:
        """Changed tag values, to every listener."""
        self.values.update(values)
        for _, on_tags in list(self.listeners):
            on_tags(values)


# -- a plain HTTP client ------------------------------------------------------------------------


@dataclass
class Answer:
    """An HTTP answer: status, headers, body."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)

    @property
    def text(self) -> str:
        """The body as text."""
        return self.body.decode()

    def cookies(self) -> list[str]:
        """The Set-Cookie headers."""
        return self.headers.get_all("set-cookie") or []


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Client:
    """A browser's HTTP side: a cookie jar, no redirects followed (a test sees each 303)."""

    base: str
    context: ssl.SSLContext | None = None
    jar: CookieJar = field(default_factory=CookieJar)

    def __post_init__(self) -> None:
        handlers: list[Any] = [urllib.request.HTTPCookieProcessor(self.jar), _NoRedirect()]
        if self.context is not None:
            handlers.append(urllib.request.HTTPSHandler(context=self.context))
        self.opener = urllib.request.build_opener(*handlers)

    def fetch(
        self,
        path: str,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        method: str | None = None,
    ) -> Answer:
        """One request (blocking): its answer, whatever the status."""
        request = urllib.request.Request(
            self.base + path, data=data, headers=dict(headers or {}), method=method
        )
        try:
            with self.opener.open(request, timeout=10) as response:
                return Answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.headers, error.read())

    async def get(self, path: str) -> Answer:
        """GET, off the test's loop (the control loop must stay free)."""
        return await asyncio.to_thread(self.fetch, path)

    async def post_form(self, path: str, fields: Mapping[str, str]) -> Answer:
        """POST a urlencoded form."""
        from urllib.parse import urlencode

        body = urlencode(fields).encode()
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        return await asyncio.to_thread(self.fetch, path, body, headers, "POST")

    async def post_json(
        self, path: str, body: Any, headers: Mapping[str, str] | None = None
    ) -> Answer:
        """POST a JSON body (bytes as they are) with these headers."""
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return await asyncio.to_thread(self.fetch, path, data, sent, "POST")

    async def login(self, user: str, password: str | None = None) -> Answer:
        """Log in through the form (its own pre-session token)."""
        form = await self.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None, form.text
        return await self.post_form(
            "/login",
            {"csrf": token[1], "user": user, "password": password or PASSWORDS[user]},
        )

    async def csrf(self) -> str:
        """The session's CSRF token, as the pages carry it."""
        state = await self.get("/api/state")
        assert state.status == 200, state.text
        return str(state.json()["me"]["csrf"])


# -- servers ------------------------------------------------------------------------------------


@dataclass
class Web:
    """A started WebThread, its backend and the failures it reported."""

    backend: TableBackend
    thread: WebThread
    url: str
    failures: list[BaseException]

    def client(self, context: ssl.SSLContext | None = None) -> Client:
        """A new browser on this server."""
        return Client(self.url, context)


async def serve(
    tmp: Path,
    users_file: UsersFile | None,
    *,
    addr: str = "127.0.0.1",
    tls: tuple[Path, Path] | None = None,
    ping: float = 15.0,
    slow_client: float = 30.0,
    request_deadline: float = 10.0,
) -> Web:
    """A web view on addr, port 0, over a fresh TableBackend, started."""
    cell = tmp / "cell.yaml"
    if not cell.exists():
        cell.write_text(CELL)
    backend = TableBackend(load_cell(cell))
    authenticator = Authenticator(users_file, True, LoginGuard(), via="web")
    failures: list[BaseException] = []
    thread = WebThread(
        backend,
        addr,
        0,
        authenticator.login,
        tls,
        failures.append,
        ping=ping,
        slow_client=slow_client,
        request_deadline=request_deadline,
    )
    return Web(backend, thread, await thread.start(), failures)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def web(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Web]:
    """One web view with a users file for the module's tests (they reset the backend)."""
    served = await serve(tmp_path_factory.mktemp("web"), users(), ping=0.5)
    yield served
    await served.thread.stop()
    assert served.failures == []


@pytest.fixture
def backend(web: Web) -> TableBackend:
    """The module server's backend, accepting, with no requests or refusals recorded."""
    web.backend.answer = TableBackend.accept
    web.backend.requests.clear()
    web.backend.refusals.clear()
    return web.backend


def cookie(answer: Answer, name: str) -> str:
    """The Set-Cookie header that sets `name`."""
    found = [c for c in answer.cookies() if c.startswith(f"{name}=")]
    assert found, answer.cookies()
    return found[0]


# -- login and sessions -------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_login_gives_an_httponly_samesite_strict_session(
    web: Web, backend: TableBackend
) -> None:
    browser = web.client()
    form = await browser.get("/login")
    assert form.status == 200
    assert 'name="user"' in form.text and 'name="password"' in form.text
    assert "httponly" in cookie(form, "cellctl_login").lower()
    done = await browser.login("olga")
    assert done.status == 303 and done.headers["location"] == "/"
    session = cookie(done, "cellctl_session").lower()
    assert "httponly" in session and "samesite=strict" in session and "path=/" in session
    assert "secure" not in session  # plain HTTP on loopback: a Secure cookie would never return
    state = await browser.get("/api/state")
    assert state.status == 200
    me = state.json()["me"]
    assert (me["user"], me["role"]) == ("olga", "operator") and len(me["csrf"]) >= 40
    page = await browser.get("/")
    assert page.status == 200 and "text/html" in page.headers["content-type"]
    assert f'<meta name="csrf-token" content="{me["csrf"]}">' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"]  # no inline anything
    assert backend.refusals == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_wrong_password_is_401_with_the_reason_and_on_record(
    web: Web, backend: TableBackend
) -> None:
    browser = web.client()
    refused = await browser.login("olga", "not-it")
    assert refused.status == 401
    assert "wrong user name or password" in refused.text
    assert not [c for c in refused.cookies() if c.startswith("cellctl_session=")]
    await wait_until(lambda: backend.refusals != [], what="the refusal on record")
    what, who, peer, reason = backend.refusals[0]
    assert (what, who, reason) == ("login", "olga", "wrong user name or password")
    assert peer.startswith("127.0.0.1:")
    assert (await browser.get("/api/state")).status == 401


@pytest.mark.asyncio(loop_scope="module")
async def test_a_login_without_the_forms_token_is_refused(web: Web, backend: TableBackend) -> None:
    browser = web.client()
    await browser.get("/login")  # the cookie, but the form field is missing or wrong
    for fields in ({}, {"csrf": "guessed"}):
        answer = await browser.post_form(
            "/login", {**fields, "user": "olga", "password": "pw-olga"}
        )
        assert answer.status == 403
        assert not [c for c in answer.cookies() if c.startswith("cellctl_session=")]
    assert (await browser.get("/api/state")).status == 401


@pytest.mark.asyncio(loop_scope="module")
async def test_a_login_with_an_empty_token_and_no_cookie_is_refused(web: Web) -> None:
    # Another site's form: its browser sends no SameSite=Strict login cookie, and the form
    # says csrf="" — an empty token must not match the missing one.
    browser = web.client()
    answer = await browser.post_form("/login", {"csrf": "", "user": "olga", "password": "pw-olga"})
    assert answer.status == 403
    assert not [c for c in answer.cookies() if c.startswith("cellctl_session=")]
    assert (await browser.get("/api/state")).status == 401


@pytest.mark.asyncio(loop_scope="module")
async def test_without_a_session_pages_go_to_login_and_the_api_answers_401(web: Web) -> None:
    browser = web.client()
    for page in ("/", "/batch", "/tags", "/recipes", "/history", "/history/B-1/report"):
        answer = await browser.get(page)
        assert (answer.status, answer.headers["location"]) == (303, "/login"), page
    for api in ("/api/state", "/api/events", "/api/recipes", "/api/history"):
        answer = await browser.get(api)
        assert answer.status == 401 and "log in" in answer.json()["error"], api
    icon = await browser.get("/favicon.ico")
    assert icon.status == 200 and b"<svg" in icon.body[:400]


@pytest.mark.asyncio(loop_scope="module")
async def test_logout_ends_the_session(web: Web) -> None:
    browser = web.client()
    await browser.login("olga")
    csrf = await browser.csrf()
    assert (await browser.post_form("/logout", {"csrf": "wrong"})).status == 403
    assert (await browser.get("/api/state")).status == 200
    out = await browser.post_form("/logout", {"csrf": csrf})
    assert (out.status, out.headers["location"]) == (303, "/login")
    assert (await browser.get("/api/state")).status == 401


@pytest.mark.asyncio(loop_scope="module")
async def test_logout_ends_the_sessions_open_event_streams(web: Web) -> None:
    # Another tab of the same browser must not go on showing the cell after a logout.
    browser = web.client()
    await browser.login("olga")
    csrf = await browser.csrf()
    stream = await asyncio.to_thread(Stream, browser)
    try:
        assert (await asyncio.to_thread(stream.next))[0] == "state"
        await browser.post_form("/logout", {"csrf": csrf})
        with pytest.raises(EOFError):
            await asyncio.to_thread(stream.next)
    finally:
        stream.close()
    await wait_until(lambda: web.thread.hub.streams == 0, what="the stream forgotten")


# -- CSRF and the request mapping ---------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_post_without_the_right_token_or_from_another_origin_is_refused(
    web: Web, backend: TableBackend
) -> None:
    browser = web.client()
    await browser.login("olga")
    csrf = await browser.csrf()
    start = {"action": "command", "command": "Reset"}
    for headers in (
        {},
        {"X-CSRF-Token": "x" * len(csrf)},
        {"X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    ):
        refused = await browser.post_json("/api/request", start, headers)
        assert refused.status == 403, headers
        assert "error" in refused.json()
    assert backend.requests == []  # nothing submitted
    own = web.url
    accepted = await browser.post_json("/api/request", start, {"X-CSRF-Token": csrf, "Origin": own})
    assert accepted.status == 200
    assert accepted.json() == {"accepted": True, "result": "done: Reset"}
    [(caller, _)] = backend.requests
    assert (caller.user, caller.via, caller.peer[:10]) == ("olga", "web", "127.0.0.1:")
    assert backend.on_control_loop[-1]  # carried to the control loop


@pytest.mark.asyncio(loop_scope="module")
async def test_a_viewers_post_is_refused_403_by_the_backend(
    web: Web, backend: TableBackend
) -> None:
    browser = web.client()
    await browser.login("vera")
    csrf = await browser.csrf()
    answer = await browser.post_json(
        "/api/request", {"action": "command", "command": "Start"}, {"X-CSRF-Token": csrf}
    )
    assert answer.status == 403
    assert answer.json() == {"accepted": False, "reason": "needs the operator role", "kind": "role"}
    [(caller, _)] = backend.requests
    assert (caller.user, caller.role.label) == ("vera", "viewer")


@pytest.mark.asyncio(loop_scope="module")
async def test_each_kind_of_answer_has_its_status(web: Web, backend: TableBackend) -> None:
    browser = web.client()
    await browser.login("erik")
    token = {"X-CSRF-Token": await browser.csrf()}
    for kind, status in (
        (RefusalKind.STATE, 409),
        (RefusalKind.INPUT, 400),
        (RefusalKind.INTERNAL, 500),
    ):
        backend.answer = lambda _request, kind=kind: Refused(f"no: {kind.value}", kind)
        answer = await browser.post_json(
            "/api/request", {"action": "force", "name": "m.speed", "value": "2"}, token
        )
        assert answer.status == status
        assert answer.json() == {"accepted": False, "reason": f"no: {kind.value}", "kind": kind}
    backend.answer = TableBackend.accept
    load = {"action": "load", "name": "press-fit", "parameters": ["parts=2"]}
    assert (await browser.post_json("/api/request", load, token)).json()["result"] == (
        "done: load press-fit parts=2"
    )
    unhold = {"action": "command", "command": "unhold", "choice": "retry"}
    assert (await browser.post_json("/api/request", unhold, token)).status == 200
    assert backend.requests[-1][1] == Request(
        backend.requests[-1][1].action, command=backend.requests[-1][1].command, choice="retry"
    )
    asked = len(backend.requests)
    for body, says in (
        (b"{not json", "not JSON"),
        ([1, 2], "JSON object"),
        ({"action": "fly"}, "action 'fly'"),
        ({"name": "m.speed"}, "missing action"),
        ({"action": "command", "command": "Jump"}, "command 'Jump'"),
        ({"action": "load", "name": "x", "parameters": "parts=2"}, "parameters"),
        ({"action": "force", "name": 3}, "name must be a string"),
        ({"action": "ack", "extra": 1}, "unknown field"),
    ):
        answer = await browser.post_json("/api/request", body, token)
        assert answer.status == 400, body
        assert says in answer.json()["error"], (body, answer.json())
    assert len(backend.requests) == asked  # none reached the backend


@pytest.mark.asyncio(loop_scope="module")
async def test_recipes_history_and_reports_come_from_the_backend(
    web: Web, backend: TableBackend
) -> None:
    browser = web.client()
    await browser.login("vera")
    recipes = await browser.get("/api/recipes")
    assert (recipes.status, recipes.json()) == (200, RECIPES)
    assert backend.on_control_loop[-1]
    history = await browser.get("/api/history?last=7")
    assert history.json() == [{"batch": "B-1", "end": "Complete"}]
    assert backend.history_asked[-1] == 7
    assert (await browser.get("/api/history?last=many")).status == 400
    report = await browser.get("/history/B-1/report")
    assert (report.status, report.text) == (200, REPORT)
    assert (await browser.get("/history/B-9/report")).status == 404


# -- the event stream ---------------------------------------------------------------------------


class Stream:
    """An open /api/events stream read event by event (blocking: call through to_thread)."""

    def __init__(self, browser: Client) -> None:
        request = urllib.request.Request(browser.base + "/api/events")
        self.response = browser.opener.open(request, timeout=EVENT_BOUND)
        self.comments = 0

    def next(self) -> tuple[str, Any]:
        """The next event's name and data (comments counted and skipped)."""
        name, data = "", ""
        while True:
            line = self.response.readline().decode()
            if line == "":
                raise EOFError("the stream ended")
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments += 1
            elif line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
            elif line == "" and name:
                return name, json.loads(data)

    def until(self, tag: str, value: Any) -> None:
        """Read events until one says `tag` has `value`."""
        while True:
            name, data = self.next()
            if name == "tags" and tag in data and data[tag]["value"] == value:
                return

    def ping(self) -> str:
        """The next comment line."""
        while not (line := self.response.readline().decode()).startswith(":"):
            if line == "":
                raise EOFError("the stream ended")
        return line.rstrip("\n")

    def close(self) -> None:
        """Close the connection."""
        self.response.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_the_stream_starts_with_the_state_then_carries_each_change(
    web: Web, backend: TableBackend
) -> None:
    browser = web.client()
    await browser.login("olga")
    stream = await asyncio.to_thread(Stream, browser)
    try:
        assert stream.response.headers["content-type"].startswith("text/event-stream")
        name, state = await asyncio.to_thread(stream.next)
        assert name == "state"
        assert state["me"]["user"] == "olga"
        assert state["status"]["state"] == "Stopped" and state["status"]["prompt"] is None
        assert state["tags"]["m.speed"] == {
            "value": 1.5,
            "unit": "mm/s",
            "quality": "good",
            "at": backend.values["m.speed"].timestamp,
            "error": None,
            "writable": True,
        }
        assert state["tags"]["m.name"]["quality"] == "bad"
        assert state["tags"]["m.name"]["error"] == "lost"
        sent = time.monotonic()
        backend.detail = DETAIL
        backend.publish(replace(STATUS, state="Resetting", legal=("Stop", "Abort"), seq=1))
        name, status = await asyncio.to_thread(stream.next)
        assert (name, status["state"], status["legal"]) == (
            "status",
            "Resetting",
            ["Stop", "Abort"],
        )
        assert time.monotonic() - sent < EVENT_BOUND
        name, detail = await asyncio.to_thread(stream.next)
        assert (name, detail) == ("detail", DETAIL)
        backend.publish_tags({"m.run": TagValue("m.run", "m", True, Quality.GOOD, time.time())})
        name, tags = await asyncio.to_thread(stream.next)
        assert name == "tags" and set(tags) == {"m.run"} and tags["m.run"]["value"] is True
        assert web.thread.hub.streams == 1
        # Idle: a ping comment (every 0.5 s on this server) keeps the stream open.
        assert await asyncio.to_thread(stream.ping) == ": ping"
    finally:
        stream.close()
        backend.detail = None
    await wait_until(lambda: web.thread.hub.streams == 0, what="the closed stream forgotten")


# -- development mode, the HTTPS rule -----------------------------------------------------------


def _raw_get(port: int, path: str, host: str) -> bytes:
    """A GET with this Host header on 127.0.0.1:port: the answer's status line and headers."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := sock.recv(4096)):
            answer += chunk
        return answer.split(b"\r\n\r\n")[0]


@pytest.mark.asyncio(loop_scope="module")
async def test_plain_http_answers_only_a_loopback_host(tmp_path: Path) -> None:
    # DNS rebinding: another site's name resolved to 127.0.0.1 makes its page same-origin
    # with this server (its Origin passes); without a users file it would be an admin.
    web = await serve(tmp_path, None)
    try:
        port = int(web.url.rsplit(":", 1)[1])
        for host in (f"evil.example:{port}", "evil.example", ""):
            head = await asyncio.to_thread(_raw_get, port, "/api/state", host)
            assert head.startswith(b"HTTP/1.1 421"), (host, head)
            assert b"cellctl_session" not in head
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}"):
            head = await asyncio.to_thread(_raw_get, port, "/api/state", host)
            assert head.startswith(b"HTTP/1.1 200"), (host, head)
    finally:
        await web.thread.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_without_a_users_file_every_visitor_on_loopback_is_admin(tmp_path: Path) -> None:
    web = await serve(tmp_path, None)
    try:
        browser = web.client()
        page = await browser.get("/tags")
        assert page.status == 200
        assert "httponly" in cookie(page, "cellctl_session").lower()
        me = (await browser.get("/api/state")).json()["me"]
        assert (me["user"], me["role"]) == (None, "admin")
        # An open stream ends when the server stops: the stop is not held up by it.
        stream = await asyncio.to_thread(Stream, browser)
        assert (await asyncio.to_thread(stream.next))[0] == "state"
    finally:
        started = time.monotonic()
        await web.thread.stop()
        assert time.monotonic() - started < 5.0
    with pytest.raises(EOFError):
        await asyncio.to_thread(stream.next)
    assert web.failures == []


@pytest.mark.asyncio(loop_scope="module")
async def test_a_page_that_reads_nothing_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    web = await serve(tmp_path, None, slow_client=0.5)
    backend = web.backend
    try:
        port = int(web.url.rsplit(":", 1)[1])
        stuck = socket.socket()
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills soon
        stuck.connect(("127.0.0.1", port))
        stuck.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reader = await asyncio.to_thread(Stream, web.client())
        await wait_until(lambda: web.thread.hub.streams == 2, what="both streams open")
        big = "x" * 200_000
        for i in range(100):  # 20 MB at most: more than the socket buffers hold
            value = big + str(i)
            backend.publish_tags({"m.name": TagValue("m.name", "m", value, Quality.GOOD, i)})
            await asyncio.to_thread(reader.until, "m.name", value)  # the page that reads has it
            if web.thread.hub.streams < 2:
                break
        await wait_until(lambda: web.thread.hub.streams == 1, what="the stuck page dropped")
        # The page that reads still gets each change.
        backend.publish_tags({"m.name": TagValue("m.name", "m", "last", Quality.GOOD, 1.0)})
        await asyncio.to_thread(reader.until, "m.name", "last")
        reader.close()
        stuck.close()
    finally:
        await web.thread.stop()
    assert web.failures == []


@pytest.mark.asyncio(loop_scope="module")
async def test_anonymous_viewer_gets_a_viewer_session_without_a_form(tmp_path: Path) -> None:
    web = await serve(tmp_path, users("viewer"))
    try:
        me = (await web.client().get("/api/state")).json()["me"]
        assert (me["user"], me["role"]) == (None, "viewer")
    finally:
        await web.thread.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_beyond_loopback_the_web_view_needs_https(tmp_path: Path) -> None:
    certdir = CertDir(tmp_path / "certs")
    with pytest.raises(HttpsRequired, match="certs init"):
        check_https("192.0.2.10", certdir)
    assert check_https("127.0.0.1", certdir) is None  # loopback: plain HTTP
    cell = tmp_path / "cell.yaml"
    cell.write_text(CELL)
    thread = WebThread(
        TableBackend(load_cell(cell)),
        "0.0.0.0",
        0,
        lambda *a: None,
        None,
        lambda e: None,  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(HttpsRequired):
        await thread.start()
    init_server(certdir, ["127.0.0.1"])
    assert check_https("192.0.2.10", certdir) == certdir


@pytest.mark.asyncio(loop_scope="module")
async def test_with_the_services_certificate_the_server_speaks_tls(tmp_path: Path) -> None:
    certdir = CertDir(tmp_path / "certs")
    init_server(certdir, ["127.0.0.1"])
    with pem_files(certdir) as (certfile, keyfile):
        assert (certfile.stat().st_mode & 0o777, keyfile.stat().st_mode & 0o777) == (0o600, 0o600)
        web = await serve(tmp_path, users(), tls=(certfile, keyfile))
        trust = ssl.create_default_context(cafile=str(certfile))
    assert not certfile.exists() and not keyfile.exists()  # loaded once, then removed
    try:
        assert web.url.startswith("https://127.0.0.1:")
        browser = web.client(trust)
        done = await browser.login("olga")
        assert done.status == 303
        assert "secure" in cookie(done, "cellctl_session").lower()
        # Plain HTTP on the same port gets no page.
        port = int(web.url.rsplit(":", 1)[1])
        plain = await asyncio.to_thread(_plain_http, port)
        assert not plain.startswith(b"HTTP/1.1 200")
    finally:
        await web.thread.stop()


def _plain_http(port: int) -> bytes:
    """What a plain-HTTP request to a port answers (b'' when the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            return sock.recv(100)
        except (ConnectionResetError, TimeoutError):
            return b""
