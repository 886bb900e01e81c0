"""The web view's Starlette app: the pages, the login, the JSON API and the event stream.

Every handler runs on the web view's own loop. What it needs of the service goes through the
control bridge (cellctl.service.bridge) to the control loop: requests, the recipes, the history,
a report, refused logins. The live state comes from the Hub (cellctl.web.events), which the
web thread keeps current.

Who a visitor is: a session (cellctl.web.sessions) from the login form, or given without one
when the service lets anyone in (no users file, on loopback: admin; `anonymous: viewer`: a
viewer). Every POST proves it comes from a page of this server: a CSRF token (the session's in
the X-CSRF-Token header for the API; the login page's own, cookie and form field, for /login),
and an Origin header, when there is one, equal to the server's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellctl.control.packml import Command
from cellctl.errors import CellctlError
from cellctl.service.api import Accepted, Action, Backend, Caller, RefusalKind, Refused, Request
from cellctl.service.bridge import ControllerTimeout
from cellctl.service.logins import LoginRefused
from cellctl.web import pages
from cellctl.web.events import PING, SLOW_CLIENT, EventStream, Hub
from cellctl.web.sessions import Session, SessionStore, new_token, same_token
from drivers.config import is_loopback

__all__ = ["LOGIN_COOKIE", "SESSION_COOKIE", "WebBackend", "WebContext", "create_app"]

log = logging.getLogger("cellctl.web")

#: The session cookie and the login page's own pre-session token.
SESSION_COOKIE = "cellctl_session"
LOGIN_COOKIE = "cellctl_login"
#: The largest request body read (a request is a few hundred bytes; a login too).
MAX_BODY = 64 * 1024
#: The most batches /api/history lists.
MAX_HISTORY = 1000
STATIC = Path(__file__).parent / "static"

#: The HTTP status of each kind of refusal.
STATUS_OF_REFUSAL: Mapping[RefusalKind, int] = {
    RefusalKind.ROLE: 403,
    RefusalKind.STATE: 409,
    RefusalKind.INPUT: 400,
    RefusalKind.INTERNAL: 500,
}

#: The pages: path -> page name (cellctl.web.pages.render).
PAGE_PATHS: Mapping[str, str] = {
    "/": "cell",
    "/batch": "batch",
    "/tags": "tags",
    "/recipes": "recipes",
    "/history": "history",
}

#: Sent with every response: no framing, no sniffing, no referrer beyond this server.
_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}
_RAW_HEADERS = [(k.lower().encode(), v.encode()) for k, v in _HEADERS.items()]
#: No inline style either: the pages have none (the JS sets custom properties through the
#: CSSOM, which a CSP does not govern).
_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The journal's report has its CSS inline, and no script.
_REPORT_CSP = (
    "default-src 'self'; script-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class WebBackend(Backend, Protocol):
    """The service as the web view needs it, beyond what every surface does: the journal's
    history and reports."""

    def history(self, last: int) -> list[dict[str, Any]]:
        """The journal's last batches as `cellctl history --json` prints them."""
        ...

    def report_html(self, batch: str) -> str | None:
        """A batch's HTML report (as `cellctl report --format html`), None for an unknown one."""
        ...


class Bridge(Protocol):
    """The control loop as the web view reaches it (cellctl.service.bridge.ControlBridge)."""

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """`backend.submit` on the control loop."""
        ...

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` on the control loop."""
        ...

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """`backend.security_refused` on the control loop."""
        ...


#: The service's login: (user name or None, password or None, peer) -> Caller or a refusal.
Login = Callable[[str | None, str | None, str], Caller | LoginRefused]


@dataclass
class WebContext:
    """What the app works with: the service (its methods called only through the bridge), the
    live state, the sessions, the login, and whether it is served over HTTPS."""

    backend: WebBackend
    bridge: Bridge
    hub: Hub
    sessions: SessionStore
    login: Login
    secure: bool
    ping: float = PING
    slow_client: float = SLOW_CLIENT


class _Unavailable(Exception):
    """What the web view asked of the service could not be had now: the message says why."""


class BadBody(ValueError):
    """A request body that is not what the API takes: the message says what is wrong."""


def create_app(web: WebContext) -> Starlette:
    """The web view's ASGI app."""
    views = _Views(web)
    routes = [
        *(Route(path, views.page(name), methods=["GET"]) for path, name in PAGE_PATHS.items()),
        Route("/login", views.login_form, methods=["GET"]),
        Route("/login", views.login, methods=["POST"]),
        Route("/logout", views.logout, methods=["POST"]),
        Route("/api/state", views.state, methods=["GET"]),
        Route("/api/events", views.events, methods=["GET"]),
        Route("/api/request", views.request, methods=["POST"]),
        Route("/api/recipes", views.recipes, methods=["GET"]),
        Route("/api/history", views.history, methods=["GET"]),
        Route("/history/{batch}/report", views.report, methods=["GET"]),
        Route("/favicon.ico", views.favicon, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC, check_dir=False), name="static"),
    ]
    middleware = [Middleware(_SecurityHeaders)]
    if not web.secure:
        middleware.append(Middleware(_LoopbackHostOnly))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_error},
    )


class _SecurityHeaders:
    """Adds _HEADERS to every HTTP response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in _RAW_HEADERS if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port ('[::1]:8480' -> '::1')."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


class _LoopbackHostOnly:
    """Plain HTTP (loopback only) answers only a Host that names loopback: a page of another
    site whose name it rebinds to 127.0.0.1 (DNS rebinding) is its own origin, so its Origin
    check passes, and without a users file every visitor is an admin. (Over HTTPS the
    certificate's names refuse such a page.)"""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            if not is_loopback(host_name(host)):
                response = PlainTextResponse(
                    f"this server answers only to a loopback address (127.0.0.1, localhost), "
                    f"not to {host!r}",
                    421,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _http_error(request: HttpRequest, error: Exception) -> Response:
    """404, 405 and the like: JSON under /api/, plain text elsewhere."""
    assert isinstance(error, HTTPException)
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": error.detail}, error.status_code)
    return Response(error.detail, error.status_code, media_type="text/plain")


def peer_of(request: HttpRequest) -> str:
    """The client as HOST:PORT (logins and records name it)."""
    client = request.client
    if client is None:
        return ""
    host = f"[{client.host}]" if ":" in client.host else client.host
    return f"{host}:{client.port}"


def _error(status: int, message: str) -> JSONResponse:
    """An API error: `{"error": message}`."""
    return JSONResponse({"error": message}, status)


def parse_request(body: bytes) -> Request:
    """The api.Request a POST /api/request body asks for; BadBody naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadBody('the body is not JSON: send {"action": ..., ...}') from None
    if not isinstance(data, dict):
        raise BadBody('the body must be a JSON object: {"action": ..., ...}')
    actions = ", ".join(a.value for a in Action)
    known = {"action", "command", "name", "value", "choice", "parameters"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise BadBody(f"unknown field(s) {', '.join(unknown)} (fields: {', '.join(sorted(known))})")
    if "action" not in data:
        raise BadBody(f"missing action (one of {actions})")
    try:
        action = Action(str(data["action"]))
    except ValueError:
        raise BadBody(f"action {data.get('action')!r}: one of {actions}") from None
    texts: dict[str, str] = {}
    for name in ("command", "name", "value", "choice"):
        value = data.get(name, "")
        if not isinstance(value, str):
            raise BadBody(f"{name} must be a string, not {type(value).__name__}")
        texts[name] = value
    parameters = data.get("parameters", [])
    if not isinstance(parameters, list) or not all(isinstance(p, str) for p in parameters):
        raise BadBody('parameters must be a list of "NAME=VALUE" strings')
    command: Command | None = None
    if action is Action.COMMAND:
        by_name = {c.value.lower(): c for c in Command}
        command = by_name.get(texts["command"].strip().lower())
        if command is None:
            commands = ", ".join(c.value for c in Command)
            raise BadBody(f"command {texts['command']!r}: one of {commands}")
    elif texts["command"]:
        raise BadBody(f"command is for the action command, not {action.value}")
    return Request(
        action,
        command=command,
        name=texts["name"],
        value=texts["value"],
        choice=texts["choice"],
        parameters=tuple(parameters),
    )


class _Views:
    """The app's handlers over one WebContext."""

    def __init__(self, web: WebContext) -> None:
        self.web = web

    # -- who is asking ---------------------------------------------------------------------------

    def _session(self, request: HttpRequest) -> Session | None:
        """The request's live session, if its cookie names one."""
        return self.web.sessions.get(request.cookies.get(SESSION_COOKIE))

    async def _who(self, request: HttpRequest) -> tuple[Session | None, bool]:
        """The request's session, or one given without a form when the service lets any
        visitor in (then True: its cookie must be set on the response)."""
        session = self._session(request)
        if session is not None:
            return session, False
        answer = await asyncio.to_thread(self.web.login, None, None, peer_of(request))
        if isinstance(answer, LoginRefused):
            return None, False
        return self.web.sessions.create(answer), True

    def _set_session(self, response: Response, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            session.token,
            httponly=True,
            samesite="strict",
            path="/",
            secure=self.web.secure,
        )

    @staticmethod
    def me(session: Session) -> dict[str, Any]:
        """The `me` object of /api/state and the pages: user, role, csrf."""
        return {
            "user": session.caller.user,
            "role": session.caller.role.label,
            "csrf": session.csrf,
        }

    def _same_origin(self, request: HttpRequest) -> bool:
        """False when the request has an Origin other than this server's."""
        origin = request.headers.get("origin")
        if origin is None:
            return True
        host = request.headers.get("host", "")
        scheme = "https" if self.web.secure else "http"
        return origin == f"{scheme}://{host}"

    # -- pages -----------------------------------------------------------------------------------

    def page(self, name: str) -> Callable[[HttpRequest], Awaitable[Response]]:
        """The handler of one page: its HTML shell for the session, else to /login."""

        async def show(request: HttpRequest) -> Response:
            session, new = await self._who(request)
            if session is None:
                return RedirectResponse("/login", 303)
            response = HTMLResponse(pages.render(name, self.me(session)))
            response.headers["Content-Security-Policy"] = _PAGE_CSP
            response.headers["Cache-Control"] = "no-store"
            if new:
                self._set_session(response, session)
            return response

        return show

    def _login_page(self, request: HttpRequest, reason: str | None, status: int) -> Response:
        """The login form with its pre-session token (kept, or a new one in a cookie)."""
        token = request.cookies.get(LOGIN_COOKIE) or new_token()
        response = HTMLResponse(pages.login_page(reason, token), status)
        response.headers["Content-Security-Policy"] = _PAGE_CSP
        response.headers["Cache-Control"] = "no-store"
        response.set_cookie(
            LOGIN_COOKIE, token, httponly=True, samesite="strict", path="/", secure=self.web.secure
        )
        return response

    async def login_form(self, request: HttpRequest) -> Response:
        """GET /login: the form."""
        return self._login_page(request, None, 200)

    async def login(self, request: HttpRequest) -> Response:
        """POST /login: user and password through the service's login; a session and to /
        when it takes them, else the form again with the reason (401, on record)."""
        form = await self._form(request)
        if form is None or not self._same_origin(request):
            return self._login_page(request, "the form is too large or from another site", 403)
        # The cookie must be there: without it an empty form field would equal the empty
        # token (a form posted from another site carries no SameSite=Strict cookie).
        login_token = request.cookies.get(LOGIN_COOKIE) or ""
        if not login_token or not same_token(form.get("csrf"), login_token):
            return self._login_page(
                request, "the login form has expired: log in again on this page", 403
            )
        name, password = form.get("user", "").strip(), form.get("password", "")
        if not name:
            return self._login_page(request, "enter your user name", 401)
        peer = peer_of(request)
        answer = await asyncio.to_thread(self.web.login, name, password, peer)
        if isinstance(answer, LoginRefused):
            self.web.bridge.security_refused("login", name, peer, answer.reason)
            return self._login_page(request, answer.reason, 401)
        self._drop(request.cookies.get(SESSION_COOKIE))
        session = self.web.sessions.create(answer)
        response = RedirectResponse("/", 303)
        self._set_session(response, session)
        response.delete_cookie(LOGIN_COOKIE, path="/")
        return response

    async def logout(self, request: HttpRequest) -> Response:
        """POST /logout (form field csrf: the session's token, or the login page's): the
        session forgotten, to /login."""
        form = await self._form(request)
        session = self._session(request)
        if session is not None:
            given = (form or {}).get("csrf") or request.headers.get("x-csrf-token")
            login_token = request.cookies.get(LOGIN_COOKIE) or ""
            proven = same_token(given, session.csrf) or (
                bool(login_token) and same_token(given, login_token)
            )
            if not proven or not self._same_origin(request):
                return _error(403, "log out from a page of this server (its CSRF token)")
            self._drop(session.token)
        response = RedirectResponse("/login", 303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    def _drop(self, token: str | None) -> None:
        """Forget a session and end its open event streams."""
        if token:
            self.web.sessions.drop(token)
            self.web.hub.end_session(token)

    @staticmethod
    async def _form(request: HttpRequest) -> dict[str, str] | None:
        """A small urlencoded form's text fields, or None when it is too large."""
        body = await _body(request)
        if body is None:
            return None
        from urllib.parse import parse_qsl

        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            return {}

    # -- the API ---------------------------------------------------------------------------------

    async def state(self, request: HttpRequest) -> Response:
        """GET /api/state: me, the status, the batch detail, every tag."""
        session, new = await self._who(request)
        if session is None:
            return _error(401, "log in first: /login")
        response = JSONResponse(self.web.hub.state(self.me(session)))
        response.headers["Cache-Control"] = "no-store"
        if new:
            self._set_session(response, session)
        return response

    async def events(self, request: HttpRequest) -> Response:
        """GET /api/events: the event stream (state first, then changes)."""
        session, new = await self._who(request)
        if session is None:
            return _error(401, "log in first: /login")
        hub = self.web.hub
        peer = request.client.host if request.client is not None else ""
        subscriber = hub.subscribe(session.token, peer)
        if subscriber is None:
            return _error(503, "too many pages are open on this server: close some")
        response = EventStream(
            hub,
            subscriber,
            hub.state(self.me(session)),
            ping=self.web.ping,
            slow_client=self.web.slow_client,
        )
        if new:
            self._set_session(response, session)
        return response

    async def request(self, request: HttpRequest) -> Response:
        """POST /api/request: a request for the command layer, as the session's caller."""
        session = self._session(request)
        if session is None:
            return _error(401, "log in first: /login")
        if not same_token(request.headers.get("x-csrf-token"), session.csrf):
            return _error(403, "missing or wrong X-CSRF-Token: reload the page")
        if not self._same_origin(request):
            return _error(403, "a request from another site's page is refused")
        body = await _body(request)
        if body is None:
            return _error(413, f"the body is over {MAX_BODY} bytes")
        try:
            wanted = parse_request(body)
        except BadBody as bad:
            return _error(400, str(bad))
        caller = replace(session.caller, via="web", peer=peer_of(request))
        try:
            answer = await self.web.bridge.submit(caller, wanted)
        except ControllerTimeout as late:
            return _error(504, str(late))
        if isinstance(answer, Accepted):
            return JSONResponse({"accepted": True, "result": answer.result})
        return JSONResponse(
            {"accepted": False, "reason": answer.reason, "kind": answer.kind.value},
            STATUS_OF_REFUSAL[answer.kind],
        )

    async def _read(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A backend method that reads, called on the control loop; _Unavailable when the
        controller does not answer in time or the method fails with a CellctlError (the
        journal unreadable, say)."""
        try:
            return await self.web.bridge.call(fn, *args)
        except (ControllerTimeout, CellctlError) as error:
            raise _Unavailable(str(error)) from None

    async def _journal(self, fn: Callable[..., Any], *args: Any) -> Any:
        """A read of the journal, in a worker thread (never on the control loop: a long
        report would hold it up); _Unavailable when the journal cannot be read."""
        try:
            return await asyncio.to_thread(fn, *args)
        except CellctlError as error:
            raise _Unavailable(str(error)) from None

    async def recipes(self, request: HttpRequest) -> Response:
        """GET /api/recipes: the released recipes and their parameters."""
        if (await self._who(request))[0] is None:
            return _error(401, "log in first: /login")
        try:
            return JSONResponse(await self._read(self.web.backend.recipes_info))
        except _Unavailable as error:
            return _error(503, str(error))

    async def history(self, request: HttpRequest) -> Response:
        """GET /api/history?last=N: the journal's last batches."""
        if (await self._who(request))[0] is None:
            return _error(401, "log in first: /login")
        text = request.query_params.get("last", "20")
        try:
            last = int(text)
        except ValueError:
            return _error(400, f"last={text}: a whole number of batches")
        if not 1 <= last <= MAX_HISTORY:
            return _error(400, f"last={text}: from 1 to {MAX_HISTORY}")
        try:
            return JSONResponse(await self._journal(self.web.backend.history, last))
        except _Unavailable as error:
            return _error(503, str(error))

    async def report(self, request: HttpRequest) -> Response:
        """GET /history/{batch}/report: the batch's HTML report; 404 for an unknown batch."""
        if (await self._who(request))[0] is None:
            return RedirectResponse("/login", 303)
        batch = request.path_params["batch"]
        try:
            html = await self._journal(self.web.backend.report_html, batch)
        except _Unavailable as error:
            return Response(str(error), 503, media_type="text/plain")
        if html is None:
            return Response(f"no batch {batch} in the journal", 404, media_type="text/plain")
        response = HTMLResponse(html)
        response.headers["Content-Security-Policy"] = _REPORT_CSP
        return response

    async def favicon(self, request: HttpRequest) -> Response:
        """GET /favicon.ico: the icon (the SVG one)."""
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


async def _body(request: HttpRequest) -> bytes | None:
    """The request's body, or None when it is over MAX_BODY bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return None
    return bytes(body)
