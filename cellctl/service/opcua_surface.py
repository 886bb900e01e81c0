"""The OPC UA surface of `cellctl serve`: an asyncua server whose address space is the PackML
object (status variables and methods, cellctl.service.api) and the cell's tags, in the
namespace NAMESPACE.

Every method and every write of a tag value is a Request to the command layer through the
`Bridge` (SurfaceThread marshals it to the control loop). An accepted call answers Good with
its String output `Result`; a refused one answers the Bad status of its kind (STATUS_OF) and
keeps the reason as the calling session's LastRefusal. A handler never raises: asyncua would
answer BadUnexpectedError, which tells a client nothing.

The address space is built by cellctl.service.opcua_nodes; a call's arguments become a Request
in cellctl.service.opcua_requests.

Runs on the surface's own loop (SurfaceThread): nothing here touches the control loop.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from typing import Protocol
from urllib.parse import urlparse

from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.errors import CellctlError
from cellctl.io.sim import init_opcua_server
from cellctl.service.api import (
    NAMESPACE,
    REQUIRED_ROLE,
    STATUS_OF,
    TAGS,
    Accepted,
    Action,
    Caller,
    Refused,
    Request,
    ServiceStatus,
)
from cellctl.service.bridge import ControllerTimeout as ControllerTimeout
from cellctl.service.opcua_nodes import (
    MethodHandler,
    StatusNodes,
    TagNodes,
    build_packml,
    build_tags,
    status_values,
    tag_datavalue,
    write_value,
)
from cellctl.service.opcua_requests import BadCall, build_request
from cellctl.service.opcua_sessions import CURRENT_SESSION as CURRENT_SESSION
from cellctl.service.opcua_sessions import ServiceLogins, ServiceServer, ServiceSession
from cellctl.textvalue import show
from cellctl.values import TagValue
from drivers.config import url_host
from drivers.opcua.server_limits import SERVER_LIMITS
from drivers.opcua.server_transport import HardenedServer
from drivers.opcua_types import VARIANT_TYPES, from_ua, ns0_node, status_code
from drivers.points import Access

log = logging.getLogger("cellctl.service.opcua")

# -- limits: idle, slow and vanished clients must not grow memory without bound ---------------
# The simulators keep to the same (drivers.opcua.server_limits has what each means).

#: The service's limits by name: sessions and connections at once, the longest session
#: timeout, the activation timeout, subscriptions in all, the largest message.
MAX_SESSIONS = SERVER_LIMITS.max_sessions
MAX_CONNECTIONS = SERVER_LIMITS.max_connections
MAX_SESSION_TIMEOUT_MS = SERVER_LIMITS.max_session_timeout_ms
ACTIVATION_TIMEOUT_S = SERVER_LIMITS.activation_timeout_s
MAX_SUBSCRIPTIONS = SERVER_LIMITS.max_subscriptions
MAX_MESSAGE_SIZE = SERVER_LIMITS.max_message_size


class SurfaceStartFailed(CellctlError):
    """The OPC UA server could not open its endpoint (a port in use, an address not here)."""

    exit_code = exitcodes.DEVICE_FAILURE


class BadEndpoint(CellctlError):
    """The endpoint to serve on is not an opc.tcp:// URL with a host."""


class Bridge(Protocol):
    """The service as the surface reaches it from its own loop."""

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """Carry a request out or refuse it; ControllerTimeout when no answer comes in time."""
        ...

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login or certificate."""
        ...


class ChannelSecurity(Protocol):
    """The channel security the server offers (cellctl.service.certs.ServerSecurity)."""

    async def apply(self, server: Server, on_untrusted: Callable[[str, str], None]) -> None:
        """Set the server's policies, certificate and trust (after init, before namespaces)."""
        ...

    def describe(self) -> str:
        """One line saying what is offered."""
        ...


#: (user name or None, password or None, peer) -> the Caller, or None when refused.
Authenticate = Callable[[str | None, str | None, str], Caller | None]


def may_force(caller: Caller | None) -> bool:
    """True when the caller's role may force tags (what a tag's UserAccessLevel shows)."""
    return caller is not None and caller.role >= REQUIRED_ROLE[Action.FORCE]


class OpcuaSurface:
    """The asyncua server of one served cell: build it and listen with `start`, keep it current
    with `apply_status` and `apply_tags`, close it with `stop` (all on the surface's loop)."""

    def __init__(
        self,
        bridge: Bridge,
        endpoint: str,
        security: ChannelSecurity,
        authenticate: Authenticate,
        cell: Cell,
    ) -> None:
        url = urlparse(endpoint)
        try:
            port = url.port or 0
        except ValueError:  # not a number, or out of range
            port = -1
        if url.scheme != "opc.tcp" or not url.hostname or port < 0:
            raise BadEndpoint(f"endpoint {endpoint!r}: give an opc.tcp://HOST:PORT URL")
        self._bridge = bridge
        self._endpoint = endpoint
        self._host = url.hostname
        self._port = port
        self._path = url.path
        self._security = security
        self._authenticate = authenticate
        self._cell = cell
        self._server: HardenedServer | None = None
        self._status_nodes: StatusNodes = {}
        self._shown: dict[str, object] = {}
        self._tag_nodes: TagNodes = {}
        self._tags_shown: dict[str, TagValue] = {}

    @property
    def url(self) -> str:
        """The URL clients connect to (the bound port once started)."""
        return f"opc.tcp://{url_host(self._host)}:{self._port}{self._path}"

    async def start(self, status: ServiceStatus, tags: Mapping[str, TagValue]) -> str:
        """Build the address space with these values and listen; returns the URL."""
        iserver = ServiceServer(ServiceLogins(self._authenticate), SERVER_LIMITS)
        server = HardenedServer(iserver)
        await init_opcua_server(server)
        server.set_endpoint(self._endpoint)
        server.set_server_name(f"cellctl serve {self._cell.cell}")
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        # asyncua's clock task makes stop() wait up to 1 s; run_clock ticks instead.
        server.disable_clock()
        await self._security.apply(server, self._untrusted)
        idx = await server.register_namespace(NAMESPACE)
        await self._build_packml(server, idx, status)
        await self._build_tags(server, idx, tags)
        iserver.tag_nodes = {
            node: tag
            for tag, (node, _) in self._tag_nodes.items()
            if self._cell.tags[tag].access is Access.RW
        }
        iserver.tag_writer = self._write_tag
        iserver.may_write_tags = may_force
        try:
            await server.start()
        except OSError as err:
            raise SurfaceStartFailed(
                f"cannot serve OPC UA on {self._endpoint}: {err.strerror or err}"
            ) from err
        assert server.bserver is not None
        self._port = int(server.bserver.port)
        self._server = server
        log.info("OPC UA server listening on %s (%s)", self.url, self._security.describe())
        return self.url

    async def stop(self) -> None:
        """Close the endpoint and every session."""
        server, self._server = self._server, None
        if server is not None:
            await server.stop()

    async def run_clock(self) -> None:
        """Keep the server's CurrentTime ticking once a second, until cancelled."""
        node = ns0_node(ObjectIds.Server_ServerStatus_CurrentTime)
        while True:
            server = self._server
            if server is not None:
                now = ua.DateTime.now(datetime.UTC)
                variant = ua.Variant(now, ua.VariantType.DateTime)
                await server.write_attribute_value(node, ua.DataValue(variant))
            await asyncio.sleep(1.0)

    # -- building --------------------------------------------------------------------------------

    async def _build_packml(self, server: Server, idx: int, status: ServiceStatus) -> None:
        """Objects/PackML: every status variable and every method."""
        values: dict[str, object] = {**status_values(status, self._security.describe())}
        values["LastRefusal"] = ""
        self._status_nodes = await build_packml(server, idx, values, self._handler)
        self._shown = {k: v for k, v in values.items() if k != "LastRefusal"}
        assert isinstance(server.iserver, ServiceServer)
        server.iserver.last_refusal_node = self._status_nodes["LastRefusal"][0]

    async def _build_tags(self, server: Server, idx: int, tags: Mapping[str, TagValue]) -> None:
        """Objects/Tags: one variable per cell tag, of the tag's type."""
        self._tag_nodes = await build_tags(server, idx, self._cell, tags)
        self._tags_shown = {name: tags[name] for name in self._tag_nodes if name in tags}

    # -- keeping it current ------------------------------------------------------------------

    async def apply_status(self, status: ServiceStatus) -> None:
        """Write the status variables whose value changed."""
        server = self._server
        if server is None:
            return
        for name, value in status_values(status, self._security.describe()).items():
            if self._shown.get(name) == value:
                continue
            node_id, vtype = self._status_nodes[name]
            await write_value(server, node_id, ua.DataValue(ua.Variant(value, vtype)))
            self._shown[name] = value

    async def apply_tags(self, values: Mapping[str, TagValue]) -> None:
        """Write the tag variables of these values (tags the cell does not have are skipped)."""
        server = self._server
        if server is None:
            return
        for name, value in values.items():
            node = self._tag_nodes.get(name)
            if node is None or self._tags_shown.get(name) == value:
                continue
            node_id, datatype = node
            await write_value(server, node_id, tag_datavalue(datatype, value))
            self._tags_shown[name] = value

    # -- clients' calls and writes -----------------------------------------------------------

    def _untrusted(self, who: str, reason: str) -> None:
        """A client certificate was refused: on record with the client's address."""
        session = CURRENT_SESSION.get()
        self._bridge.security_refused("certificate", who, session.peer if session else "", reason)

    def _handler(self, method: str, inputs: tuple[str, ...], action: Action) -> MethodHandler:
        """The asyncua handler of one method: (parent, *args) -> [Result] or a Bad status."""

        async def handle(
            parent: ua.NodeId, *args: ua.Variant
        ) -> list[ua.Variant] | ua.StatusCode | ua.CallMethodResult:
            session = CURRENT_SESSION.get()
            if session is None:  # the server's own internal session: no caller to act for
                return status_code(StatusCodes.BadUserAccessDenied)
            try:
                request = build_request(method, inputs, action, args)
            except BadCall as bad:
                session.refuse(bad.reason)
                if bad.argument is None:
                    return status_code(bad.status)
                # Which argument is of the wrong type (OPC UA Part 4, 5.11.2.4).
                results = [status_code(StatusCodes.Good)] * len(args)
                results[bad.argument] = status_code(StatusCodes.BadTypeMismatch)
                return ua.CallMethodResult(
                    StatusCode=status_code(bad.status), InputArgumentResults=results
                )
            answer = await self._submit(session, request, method)
            if isinstance(answer, Accepted):
                return [ua.Variant(answer.result, ua.VariantType.String)]
            return answer

        return handle

    async def _write_tag(
        self, session: ServiceSession, tag: str, written: ua.DataValue
    ) -> ua.StatusCode:
        """A client's write of a tag value: a Force request."""
        datatype = self._tag_nodes[tag][1]
        vtype = VARIANT_TYPES[datatype]
        variant = written.Value
        got = variant.VariantType.name if variant is not None else "nothing"
        if variant is None or variant.VariantType != vtype or variant.is_array:
            session.refuse(f"{TAGS}.{tag} is a {vtype.name}: write a {vtype.name} (got {got})")
            return status_code(StatusCodes.BadTypeMismatch)
        try:
            value = from_ua(datatype, variant.Value)
        except ValueError as err:
            session.refuse(f"{TAGS}.{tag}: {err}")
            return status_code(StatusCodes.BadOutOfRange)
        request = Request(Action.FORCE, name=tag, value=show(value, datatype))
        answer = await self._submit(session, request, f"write {TAGS}.{tag}")
        if isinstance(answer, Accepted):
            return status_code(StatusCodes.Good)
        return answer

    async def _submit(
        self, session: ServiceSession, request: Request, what: str
    ) -> Accepted | ua.StatusCode:
        """The request through the command layer: Accepted, or the Bad status of a refusal,
        of a timeout or of a failure, whose reason becomes the session's LastRefusal."""
        caller = session.caller
        if caller is None:
            session.refuse(f"{what}: this session has not logged in")
            return status_code(StatusCodes.BadUserAccessDenied)
        try:
            answer = await self._bridge.submit(caller, request)
        except ControllerTimeout as late:
            session.refuse(f"{what}: {late}")
            return status_code(StatusCodes.BadTimeout)
        except Exception as err:
            # Never raised to asyncua: it would answer BadUnexpectedError and log a traceback.
            log.exception("%s for %s failed", what, caller.name)
            session.refuse(f"{what}: internal error ({type(err).__name__}: {err}); see the log")
            return status_code(StatusCodes.BadInternalError)
        if isinstance(answer, Refused):
            session.refuse(answer.reason)
            return status_code(getattr(StatusCodes, STATUS_OF[answer.kind]))
        return answer
