"""The service's asyncua sessions: each one knows its user, answers its own LastRefusal, and
hands writes of tag variables to the command layer.

Why subclasses: asyncua 2.1 calls a method handler with `(parent, *args)` only, never the
session or its user, and its permission rulesets run only on secured channels. So
`ServiceSession` sets the contextvar `CURRENT_SESSION` to itself while its `call`, `read`,
`write`, `create_session` and `activate_session` run (asyncua awaits the method handlers,
the certificate validator and calls the UserManager inside them, in the same context), and
`ServiceServer` makes sessions of that class (its `session_class`). Roles are checked by the
command layer, never here: every logged-in session's asyncua role is `UserRole.User`
(asyncua's Admin could add and delete nodes, and its Anonymous may do nothing at all on a
secured channel).

- `PackML.LastRefusal` is read per session: the reason of that session's last refused call,
  kept on the session object (the address space holds only '').
- A write of the Value of a `Tags.<tag>` node goes to `ServiceServer.tag_writer` (the surface
  makes it a Force request) instead of the address space; writes of any other node or
  attribute take asyncua's own path (read-only nodes: BadUserAccessDenied).
- A tag node's UserAccessLevel is read per session: writable only for a user whose role may
  force (what generic clients show; the command layer still decides).
- Limits (sessions, timeouts, subscriptions, publishing interval, values that do not fit a
  node) are the simulators' too: drivers.opcua.server_limits.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from cellctl.service.api import Caller
from drivers.config import url_host
from drivers.opcua.server_limits import LimitedServer, LimitedSession, ServerLimits
from drivers.opcua_types import status_code

log = logging.getLogger("cellctl.service.opcua")

#: The session whose request is being served now (None outside a client's request).
CURRENT_SESSION: ContextVar[ServiceSession | None] = ContextVar("CURRENT_SESSION", default=None)

#: Writes a tag for a session: (session, tag name, the written DataValue) -> status.
TagWriter = Callable[["ServiceSession", str, ua.DataValue], Awaitable[ua.StatusCode]]


@dataclass
class ServiceUser(User):
    """An asyncua user that carries the Caller the service's login gave it."""

    caller: Caller | None = None


class ServiceLogins(UserManager):
    """asyncua's UserManager over the service's login: `authenticate(name, password, peer)`
    says who the caller is, or None (asyncua then answers BadUserAccessDenied)."""

    def __init__(self, authenticate: Callable[[str | None, str | None, str], Caller | None]):
        self._authenticate = authenticate

    def get_user(
        self,
        iserver: InternalServer,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        """asyncua's hook, called (synchronously) while a session activates."""
        session = CURRENT_SESSION.get()
        try:
            caller = self._authenticate(username, password, session.peer if session else "")
        except Exception:
            # Raised into asyncua it would answer BadInternalError: a refusal says more.
            log.exception("the login of %r failed", username)
            return None
        if caller is None:
            return None
        return ServiceUser(role=UserRole.User, name=caller.user, caller=caller)


class ServiceSession(LimitedSession):
    """A client's session: binds itself to CURRENT_SESSION while it serves a request, and keeps
    the reason of its last refused call."""

    iserver: ServiceServer

    def __init__(self, internal_server: ServiceServer, *args: Any, **kwargs: Any) -> None:
        super().__init__(internal_server, *args, **kwargs)
        #: Why this session's last refused call was refused ('' until one is).
        self.last_refusal = ""
        self._refused_at: ua.DateTime | None = None

    @property
    def caller(self) -> Caller | None:
        """Who logged in on this session (None before activation)."""
        return self.user.caller if isinstance(self.user, ServiceUser) else None

    @property
    def peer(self) -> str:
        """The client's address as 'host:port' (asyncua names a session by its peer)."""
        name: object = self.name
        if isinstance(name, tuple) and len(name) >= 2:
            return f"{url_host(str(name[0]))}:{name[1]}"
        return str(name)

    def refuse(self, reason: str) -> None:
        """Keep `reason` as this session's LastRefusal."""
        self.last_refusal = reason
        self._refused_at = ua.DateTime.now(datetime.UTC)

    async def create_session(
        self, params: ua.CreateSessionParameters, sockname: tuple[str, int] | None = None
    ) -> ua.CreateSessionResult:
        """asyncua's session creation, with this session current (a refused client certificate
        is recorded with its peer)."""
        token = CURRENT_SESSION.set(self)
        try:
            return await super().create_session(params, sockname)
        finally:
            CURRENT_SESSION.reset(token)

    def activate_session(
        self, params: ua.ActivateSessionParameters, peer_certificate: bytes | None
    ) -> ua.ActivateSessionResult:
        """asyncua's activation, with this session current (the login reads its peer)."""
        token = CURRENT_SESSION.set(self)
        try:
            return super().activate_session(params, peer_certificate)
        finally:
            CURRENT_SESSION.reset(token)

    async def call(self, params: list[ua.CallMethodRequest]) -> list[ua.CallMethodResult]:
        """asyncua's method calls, with this session current (the handlers read it)."""
        token = CURRENT_SESSION.set(self)
        try:
            return await super().call(params)
        finally:
            CURRENT_SESSION.reset(token)

    async def read(self, params: ua.ReadParameters) -> list[ua.DataValue]:
        """asyncua's read, then this session's own answers (LastRefusal, tag access)."""
        token = CURRENT_SESSION.set(self)
        try:
            results = await super().read(params)
        finally:
            CURRENT_SESSION.reset(token)
        return [
            self._own(item, result)
            for item, result in zip(params.NodesToRead, results, strict=True)
        ]

    def _own(self, item: ua.ReadValueId, result: ua.DataValue) -> ua.DataValue:
        """The answer for this session where it differs from the address space's."""
        server = self.iserver
        if item.NodeId == server.last_refusal_node and item.AttributeId == AttributeIds.Value:
            now = ua.DateTime.now(datetime.UTC)
            return ua.DataValue(
                ua.Variant(self.last_refusal, ua.VariantType.String),
                SourceTimestamp=self._refused_at or now,
                ServerTimestamp=now,
            )
        if item.AttributeId == AttributeIds.UserAccessLevel and item.NodeId in server.tag_nodes:
            level = ua.AccessLevel.CurrentRead.mask
            if server.may_write_tags(self.caller):
                level |= ua.AccessLevel.CurrentWrite.mask
            return ua.DataValue(ua.Variant(level, ua.VariantType.Byte))
        return result

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        """Tag values to the tag writer, everything else through asyncua, in one answer."""
        token = CURRENT_SESSION.set(self)
        try:
            return await self._write(params)
        finally:
            CURRENT_SESSION.reset(token)

    async def _write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        tags = self.iserver.tag_nodes
        writer = self.iserver.tag_writer
        items = list(params.NodesToWrite)
        ours = [
            i
            for i, item in enumerate(items)
            if writer is not None and item.AttributeId == AttributeIds.Value and item.NodeId in tags
        ]
        if not ours:
            return await super().write(params)
        results: list[ua.StatusCode] = [status_code(StatusCodes.Good)] * len(items)
        others = [i for i in range(len(items)) if i not in ours]
        if others:
            rest = ua.WriteParameters(NodesToWrite=[items[i] for i in others])
            for i, status in zip(others, await super().write(rest), strict=True):
                results[i] = status
        assert writer is not None
        for i in ours:
            results[i] = await writer(self, tags[items[i].NodeId], items[i].Value)
        return results


class ServiceServer(LimitedServer):
    """A LimitedServer making ServiceSessions."""

    session_class = ServiceSession

    def __init__(self, user_manager: UserManager, limits: ServerLimits) -> None:
        super().__init__(limits, user_manager=user_manager)
        #: PackML.LastRefusal's NodeId, read per session (set once the node exists).
        self.last_refusal_node: ua.NodeId | None = None
        #: The tag variables' NodeIds and their tag names.
        self.tag_nodes: Mapping[ua.NodeId, str] = {}
        #: Where writes of tag values go (None: asyncua's own write).
        self.tag_writer: TagWriter | None = None
        #: Whether a caller's role may force tags (what a tag's UserAccessLevel shows).
        self.may_write_tags: Callable[[Caller | None], bool] = lambda caller: False
