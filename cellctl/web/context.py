"""What the web view's handlers work with: the service, the bridge to the control loop, the
login, and the small helpers every handler shares (the peer, a bounded body, an API error)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from starlette.requests import ClientDisconnect
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse

from cellctl.service.api import Accepted, Backend, Caller, Refused, Request
from cellctl.service.logins import LoginRefused
from cellctl.web.events import PING, SLOW_CLIENT, Hub
from cellctl.web.sessions import SessionStore

#: The largest request body read (a request is a few hundred bytes; a login too).
MAX_BODY = 64 * 1024
STATIC = Path(__file__).parent / "static"
#: No inline style either: the pages have none (the JS sets custom properties through the
#: CSSOM, which a CSP does not govern).
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: The journal's report has its CSS inline, and no script.
REPORT_CSP = (
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


def peer_of(request: HttpRequest) -> str:
    """The client as HOST:PORT (logins and records name it)."""
    client = request.client
    if client is None:
        return ""
    host = f"[{client.host}]" if ":" in client.host else client.host
    return f"{host}:{client.port}"


def api_error(status: int, message: str) -> JSONResponse:
    """An API error: `{"error": message}`."""
    return JSONResponse({"error": message}, status)


async def read_body(request: HttpRequest) -> bytes | None:
    """The request's body, or None when it is over MAX_BODY bytes, or the client left before
    sending it all (closed by the request deadline, cellctl.web.protocol: nobody reads the
    answer then)."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        return None
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return None
    except ClientDisconnect:
        return None
    return bytes(body)
