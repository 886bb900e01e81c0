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

This module assembles the app (routes, middleware, errors); the handlers are in
cellctl.web.auth (sessions, login, pages) and cellctl.web.api (the JSON API), over
cellctl.web.context (what they work with).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cellctl.web.api import Views
from cellctl.web.auth import LOGIN_COOKIE, SESSION_COOKIE
from cellctl.web.context import STATIC, Login, WebBackend, WebContext
from drivers.config import is_loopback

__all__ = [
    "LOGIN_COOKIE",
    "PAGE_PATHS",
    "SESSION_COOKIE",
    "Login",
    "WebBackend",
    "WebContext",
    "create_app",
]

log = logging.getLogger("cellctl.web")

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


def create_app(web: WebContext) -> Starlette:
    """The web view's ASGI app."""
    views = Views(web)
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
