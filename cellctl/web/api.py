"""The web view's JSON API: the request mapping (parse_request), the state and its event
stream, requests for the command layer, the recipes, the history and a batch's report."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from starlette.requests import Request as HttpRequest
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from cellctl.control.packml import Command
from cellctl.errors import CellctlError
from cellctl.service.api import Accepted, Action, RefusalKind, Request
from cellctl.service.bridge import ControllerTimeout
from cellctl.web.auth import SessionViews
from cellctl.web.context import MAX_BODY, REPORT_CSP, STATIC, api_error, peer_of, read_body
from cellctl.web.events import EventStream
from cellctl.web.sessions import same_token

log = logging.getLogger("cellctl.web")

#: The most batches /api/history lists.
MAX_HISTORY = 1000

#: The HTTP status of each kind of refusal.
STATUS_OF_REFUSAL: Mapping[RefusalKind, int] = {
    RefusalKind.ROLE: 403,
    RefusalKind.STATE: 409,
    RefusalKind.INPUT: 400,
    RefusalKind.INTERNAL: 500,
}


class _Unavailable(Exception):
    """What the web view asked of the service could not be had now: the message says why."""


class BadBody(ValueError):
    """A request body that is not what the API takes: the message says what is wrong."""


def parse_request(body: bytes) -> Request:
    """The api.Request a POST /api/request body asks for; BadBody naming what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise BadBody('the body is not JSON: send {"action": ..., ...}') from None
    except RecursionError:  # '[[[[...' 64 KiB deep: json's decoder recurses per level
        raise BadBody('the body is JSON nested too deeply: send {"action": ..., ...}') from None
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


class Views(SessionViews):
    """The app's handlers over one WebContext: the session ones and the API."""

    # -- the API ---------------------------------------------------------------------------------

    async def state(self, request: HttpRequest) -> Response:
        """GET /api/state: me, the status, the batch detail, every tag."""
        session, new = await self._who(request)
        if session is None:
            return api_error(401, "log in first: /login")
        response = JSONResponse(self.web.hub.state(self.me(session)))
        response.headers["Cache-Control"] = "no-store"
        if new:
            self._set_session(response, session)
        return response

    async def events(self, request: HttpRequest) -> Response:
        """GET /api/events: the event stream (state first, then changes)."""
        session, new = await self._who(request)
        if session is None:
            return api_error(401, "log in first: /login")
        hub = self.web.hub
        peer = request.client.host if request.client is not None else ""
        subscriber = hub.subscribe(session.token, peer)
        if subscriber is None:
            return api_error(503, "too many pages are open on this server: close some")
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
            return api_error(401, "log in first: /login")
        if not same_token(request.headers.get("x-csrf-token"), session.csrf):
            return api_error(403, "missing or wrong X-CSRF-Token: reload the page")
        if not self._same_origin(request):
            return api_error(403, "a request from another site's page is refused")
        body = await read_body(request)
        if body is None:
            return self._malformed(
                request, session.caller.name, 413, f"the body is over {MAX_BODY} bytes"
            )
        try:
            wanted = parse_request(body)
        except BadBody as bad:
            return self._malformed(request, session.caller.name, 400, str(bad))
        caller = replace(session.caller, via="web", peer=peer_of(request))
        try:
            answer = await self.web.bridge.submit(caller, wanted)
        except ControllerTimeout as late:
            return api_error(504, str(late))
        if isinstance(answer, Accepted):
            return JSONResponse({"accepted": True, "result": answer.result})
        return JSONResponse(
            {"accepted": False, "reason": answer.reason, "kind": answer.kind.value},
            STATUS_OF_REFUSAL[answer.kind],
        )

    @staticmethod
    def _malformed(request: HttpRequest, who: str, status: int, reason: str) -> Response:
        """A request the API cannot read: refused with `reason`, and logged (it never reaches
        the command layer, so the journal does not have it)."""
        log.warning(
            "web: a request of %s from %s refused (%d): %s", who, peer_of(request), status, reason
        )
        return api_error(status, reason)

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
            return api_error(401, "log in first: /login")
        try:
            return JSONResponse(await self._read(self.web.backend.recipes_info))
        except _Unavailable as error:
            return api_error(503, str(error))

    async def history(self, request: HttpRequest) -> Response:
        """GET /api/history?last=N: the journal's last batches."""
        if (await self._who(request))[0] is None:
            return api_error(401, "log in first: /login")
        text = request.query_params.get("last", "20")
        try:
            last = int(text)
        except ValueError:
            return api_error(400, f"last={text}: a whole number of batches")
        if not 1 <= last <= MAX_HISTORY:
            return api_error(400, f"last={text}: from 1 to {MAX_HISTORY}")
        try:
            return JSONResponse(await self._journal(self.web.backend.history, last))
        except _Unavailable as error:
            return api_error(503, str(error))

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
        response.headers["Content-Security-Policy"] = REPORT_CSP
        return response

    async def favicon(self, request: HttpRequest) -> Response:
        """GET /favicon.ico: the icon (the SVG one)."""
        return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")
