"""Who a visitor is, and the pages that need no more: the session cookie, the visitor let in
without a form, the Origin check, the pages' HTML shells, the login form, login and logout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import HTMLResponse, RedirectResponse, Response

from cellctl.service.logins import LoginRefused
from cellctl.web import pages
from cellctl.web.context import PAGE_CSP, WebContext, api_error, peer_of, read_body
from cellctl.web.sessions import Session, new_token, same_token

#: The session cookie and the login page's own pre-session token.
SESSION_COOKIE = "cellctl_session"
LOGIN_COOKIE = "cellctl_login"


class SessionViews:
    """The handlers of who is asking (sessions, login, logout, the pages) over one WebContext."""

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
            response.headers["Content-Security-Policy"] = PAGE_CSP
            response.headers["Cache-Control"] = "no-store"
            if new:
                self._set_session(response, session)
            return response

        return show

    def _login_page(self, request: HttpRequest, reason: str | None, status: int) -> Response:
        """The login form with its pre-session token (kept, or a new one in a cookie)."""
        token = request.cookies.get(LOGIN_COOKIE) or new_token()
        response = HTMLResponse(pages.login_page(reason, token), status)
        response.headers["Content-Security-Policy"] = PAGE_CSP
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
                return api_error(403, "log out from a page of this server (its CSRF token)")
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
        body = await read_body(request)
        if body is None:
            return None
        from urllib.parse import parse_qsl

        try:
            return dict(parse_qsl(body.decode(), keep_blank_values=True))
        except UnicodeDecodeError:
            return {}
