"""The OPC UA surface of `cellctl serve`: an asyncua server whose address space is the PackML
object (status variables and methods, cellctl.service.api) and the cell's tags, in the
namespace NAMESPACE.

Every method and every write of a tag value is a Request to the command layer through the
`Bridge` (SurfaceThread marshals it to the control loop). An accepted call answers Good with
its String output `Result`; a refused one answers the Bad status of its kind (STATUS_OF) and
keeps the reason as the calling session's LastRefusal. A handler never raises: asyncua would
answer BadUnexpectedError, which tells a client nothing.

Runs on the surface's own loop (SurfaceThread): nothing here touches the control loop.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlparse

from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.node import Node
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.control.machine import Command
from cellctl.errors import CellctlError
from cellctl.io.sim import init_opcua_server
from cellctl.service.api import (
    METHODS,
    MODE_NUMBERS,
    NAMESPACE,
    PACKML,
    REQUIRED_ROLE,
    STATE_NUMBERS,
    STATUS_OF,
    STATUS_VARIABLES,
    TAGS,
    Accepted,
    Action,
    Caller,
    Refused,
    Request,
    ServiceStatus,
)
from cellctl.service.opcua_sessions import CURRENT_SESSION as CURRENT_SESSION
from cellctl.service.opcua_sessions import ServiceLogins, ServiceServer, ServiceSession
from cellctl.textvalue import show
from cellctl.values import TagValue
from drivers.base import Quality
from drivers.config import url_host
from drivers.opcua_types import VARIANT_TYPES, from_ua, ns0_node, status_code
from drivers.points import Access, DataType

log = logging.getLogger("cellctl.service.opcua")

# -- limits: idle, slow and vanished clients must not grow memory without bound ---------------

#: Client sessions at once (BadTooManySessions beyond), and TCP connections at once (refused).
MAX_SESSIONS = 100
MAX_CONNECTIONS = 100
#: The longest session timeout a client may ask for: an idle or vanished client's session (and
#: its subscriptions) is closed this long after its last request.
MAX_SESSION_TIMEOUT_MS = 120_000.0
#: A connection that has not activated a session this long after connecting is closed.
ACTIVATION_TIMEOUT_S = 10.0
#: Subscriptions in the whole server; notifications kept per subscription for a slow client;
#: values queued per monitored item; lifetime and keep-alive counts a client may ask for.
MAX_SUBSCRIPTIONS = 200
MAX_UNACKED_MESSAGES = 100
MAX_QUEUE_SIZE = 100
MAX_LIFETIME_COUNT = 3_000
MAX_KEEP_ALIVE_COUNT = 1_000
#: The largest request or response (asyncua's default is 100 MB).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
_CHUNK = 65535


class SurfaceStartFailed(CellctlError):
    """The OPC UA server could not open its endpoint (a port in use, an address not here)."""

    exit_code = exitcodes.DEVICE_FAILURE


class BadEndpoint(CellctlError):
    """The endpoint to serve on is not an opc.tcp:// URL with a host."""


class ControllerTimeout(CellctlError):
    """The controller did not answer a request in time (the request may still be carried out)."""

    exit_code = exitcodes.DEVICE_FAILURE


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

#: A method input's Request field, by input name (Choice: `choice` of a command, else `value`).
_FIELDS: Mapping[str, str] = {
    "Mode": "value",
    "Name": "name",
    "Parameters": "parameters",
    "StepId": "name",
    "Value": "value",
    "Tag": "name",
    "Choice": "value",
}
#: The inputs that take a String array.
_ARRAY_INPUTS = frozenset({"Parameters"})


class _BadCall(Exception):
    """A call whose arguments do not fit the method: its status and the reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def variable_type(name: str) -> tuple[ua.VariantType, bool]:
    """A status variable's OPC UA type and whether it is an array (from STATUS_VARIABLES)."""
    kind = STATUS_VARIABLES[name].split(":", 1)[0].strip()
    return ua.VariantType[kind.removesuffix("[]")], kind.endswith("[]")


def status_values(status: ServiceStatus, security: str) -> dict[str, str | int | list[str]]:
    """Each status variable's value (but LastRefusal, which each session reads for itself)."""
    prompt = status.prompt
    return {
        "Cell": status.cell,
        "State": status.state,
        "StateCurrent": STATE_NUMBERS.get(status.state, 0),
        "Mode": status.mode,
        "UnitModeCurrent": MODE_NUMBERS.get(status.mode, 0),
        "LegalCommands": list(status.legal),
        "BatchId": status.batch,
        "Recipe": status.recipe,
        "RecipeVersion": status.recipe_version,
        "RecipeSha256": status.recipe_sha256,
        "Parameters": [f"{k}={v}" for k, v in status.parameters.items()],
        "CurrentStep": status.step,
        "Produced": status.produced,
        "Rejected": status.rejected,
        "StopReason": status.stop_reason,
        "ActiveTrips": list(status.trips),
        "Prompt": f"{prompt.step_id}: {prompt.text} ({prompt.wants})" if prompt else "",
        "Paused": status.paused,
        "Breakpoints": list(status.breakpoints),
        "Forced": [f"{k}={v}" for k, v in status.forced.items()],
        "Recipes": list(status.recipes),
        "Security": status.security or security,
    }


def tag_datavalue(datatype: DataType, value: TagValue | None) -> ua.DataValue:
    """A tag variable's DataValue: the value as the node's type, its quality as the status and
    its reading's time as the source timestamp."""
    vtype = VARIANT_TYPES[datatype]
    now = ua.DateTime.now(datetime.UTC)
    if value is None:
        status = status_code(StatusCodes.BadWaitingForInitialData)
        return ua.DataValue(ua.Variant(), StatusCode=status, ServerTimestamp=now)
    source = ua.DateTime.fromtimestamp(value.device_time or value.timestamp, datetime.UTC)
    shown: object = None
    status = status_code(StatusCodes.Bad)
    if value.quality is not Quality.BAD and value.value is not None:
        try:
            shown = from_ua(datatype, value.value)
        except ValueError:
            log.warning("tag %s: value %r is not a %s", value.tag, value.value, datatype.value)
            status = status_code(StatusCodes.BadTypeMismatch)
        else:
            good = value.quality is Quality.GOOD
            status = status_code(StatusCodes.Good if good else StatusCodes.Uncertain)
    # A Bad value is a null Variant (asyncua would null it anyway: OPC UA Part 4, 7.7.1).
    variant = ua.Variant(shown, vtype) if shown is not None else ua.Variant()
    return ua.DataValue(variant, StatusCode=status, SourceTimestamp=source, ServerTimestamp=now)


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
        self._server: Server | None = None
        self._status_nodes: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
        self._shown: dict[str, object] = {}
        self._tag_nodes: dict[str, tuple[ua.NodeId, DataType]] = {}
        self._tags_shown: dict[str, TagValue] = {}

    @property
    def url(self) -> str:
        """The URL clients connect to (the bound port once started)."""
        return f"opc.tcp://{url_host(self._host)}:{self._port}{self._path}"

    async def start(self, status: ServiceStatus, tags: Mapping[str, TagValue]) -> str:
        """Build the address space with these values and listen; returns the URL."""
        iserver = ServiceServer(ServiceLogins(self._authenticate), MAX_SESSIONS)
        _limit(iserver)
        server = Server(iserver=iserver)
        await init_opcua_server(server)
        server.set_endpoint(self._endpoint)
        server.set_server_name(f"cellctl serve {self._cell.cell}")
        server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
        # asyncua's clock task makes stop() wait up to 1 s; run_clock ticks instead.
        server.disable_clock()
        server.limits = TransportLimits(
            max_recv_buffer=_CHUNK,
            max_send_buffer=_CHUNK,
            max_chunk_count=MAX_MESSAGE_SIZE // _CHUNK + 1,
            max_message_size=MAX_MESSAGE_SIZE,
        )
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
            assert isinstance(server.iserver, ServiceServer)
            await server.iserver.close_sessions()

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
        packml = await server.nodes.objects.add_object(
            _node(PACKML, idx), ua.QualifiedName(PACKML, idx)
        )
        values: dict[str, object] = {**status_values(status, self._security.describe())}
        values["LastRefusal"] = ""
        for name, description in STATUS_VARIABLES.items():
            vtype, array = variable_type(name)
            node_id = _node(f"{PACKML}.{name}", idx)
            node = await packml.add_variable(
                node_id,
                ua.QualifiedName(name, idx),
                ua.Variant(values[name], vtype),
                datatype=ns0_node(vtype.value),
            )
            await _describe(node, description)
            if array:
                await node.write_value_rank(ua.ValueRank.OneDimension)
                await node.write_attribute(
                    AttributeIds.ArrayDimensions,
                    ua.DataValue(ua.Variant([0], ua.VariantType.UInt32)),
                )
            self._status_nodes[name] = (node_id, vtype)
        self._shown = {k: v for k, v in values.items() if k != "LastRefusal"}
        assert isinstance(server.iserver, ServiceServer)
        server.iserver.last_refusal_node = self._status_nodes["LastRefusal"][0]
        string = ns0_node(ua.VariantType.String.value)
        for name, (inputs, action) in METHODS.items():
            arguments = [
                ua.Argument(
                    Name=arg,
                    DataType=string,
                    ValueRank=ua.ValueRank.OneDimension if arg in _ARRAY_INPUTS else -1,
                    ArrayDimensions=[0] if arg in _ARRAY_INPUTS else [],
                )
                for arg in inputs
            ]
            result = [ua.Argument(Name="Result", DataType=string, ValueRank=-1)]
            await packml.add_method(
                _node(f"{PACKML}.{name}", idx),
                ua.QualifiedName(name, idx),
                self._handler(name, inputs, action),
                arguments,
                result,
            )

    async def _build_tags(self, server: Server, idx: int, tags: Mapping[str, TagValue]) -> None:
        """Objects/Tags: one variable per cell tag, of the tag's type."""
        folder = await server.nodes.objects.add_folder(
            _node(TAGS, idx), ua.QualifiedName(TAGS, idx)
        )
        for name, tag in self._cell.tags.items():
            datatype = tag.datatype
            node_id = _node(f"{TAGS}.{name}", idx)
            vtype = VARIANT_TYPES[datatype]
            node = await folder.add_variable(
                node_id,
                ua.QualifiedName(name, idx),
                ua.Variant(_zero(datatype), vtype),
                datatype=ns0_node(vtype.value),
            )
            if tag.description:
                await _describe(node, tag.description)
            if tag.access is Access.RW:
                await node.set_writable()
            self._tag_nodes[name] = (node_id, datatype)
            await self._write(server, node_id, tag_datavalue(datatype, tags.get(name)))
            if name in tags:
                self._tags_shown[name] = tags[name]

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
            await self._write(server, node_id, ua.DataValue(ua.Variant(value, vtype)))
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
            await self._write(server, node_id, tag_datavalue(datatype, value))
            self._tags_shown[name] = value

    @staticmethod
    async def _write(server: Server, node_id: ua.NodeId, value: ua.DataValue) -> None:
        """Write a value into the address space; a refusal is a bug in this module."""
        status = await server.iserver.aspace.write_attribute_value(
            node_id, AttributeIds.Value, value
        )
        status.check()

    # -- clients' calls and writes -----------------------------------------------------------

    def _untrusted(self, who: str, reason: str) -> None:
        """A client certificate was refused: on record with the client's address."""
        session = CURRENT_SESSION.get()
        self._bridge.security_refused("certificate", who, session.peer if session else "", reason)

    def _handler(
        self, method: str, inputs: tuple[str, ...], action: Action
    ) -> Callable[..., Coroutine[Any, Any, list[ua.Variant] | ua.StatusCode]]:
        """The asyncua handler of one method: (parent, *args) -> [Result] or a Bad status."""

        async def handle(parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant] | ua.StatusCode:
            session = CURRENT_SESSION.get()
            if session is None:  # the server's own internal session: no caller to act for
                return status_code(StatusCodes.BadUserAccessDenied)
            try:
                request = build_request(method, inputs, action, args)
            except _BadCall as bad:
                session.refuse(bad.reason)
                return status_code(bad.status)
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


def build_request(
    method: str, inputs: tuple[str, ...], action: Action, args: Sequence[ua.Variant]
) -> Request:
    """The Request a call of `method` with these arguments makes; _BadCall when they do not
    fit (count or type)."""
    if len(args) < len(inputs):
        missing = ", ".join(inputs[len(args) :])
        raise _BadCall(StatusCodes.BadArgumentsMissing, f"{method}: missing {missing}")
    if len(args) > len(inputs):
        takes = ", ".join(inputs) or "no arguments"
        raise _BadCall(StatusCodes.BadTooManyArguments, f"{method} takes {takes}")
    fields: dict[str, Any] = {}
    for name, arg in zip(inputs, args, strict=True):
        field = "choice" if name == "Choice" and action is Action.COMMAND else _FIELDS[name]
        fields[field] = _text(method, name, arg)
    command = Command(method) if action is Action.COMMAND else None
    return Request(action, command=command, **fields)


def _text(method: str, name: str, arg: ua.Variant) -> str | tuple[str, ...]:
    """An input as the text (or texts) a Request holds; a null input is '' (or no texts)."""
    value = arg.Value
    if value is None:
        return () if name in _ARRAY_INPUTS else ""
    if arg.VariantType == ua.VariantType.String:
        if name in _ARRAY_INPUTS and isinstance(value, list):
            return tuple(v or "" for v in value)
        if name not in _ARRAY_INPUTS and isinstance(value, str):
            return value
    wanted = "a String array" if name in _ARRAY_INPUTS else "a String"
    raise _BadCall(
        StatusCodes.BadInvalidArgument,
        f"{method}: {name} must be {wanted} (got {arg.VariantType.name})",
    )


def _node(name: str, idx: int) -> ua.NodeId:
    """The NodeId `name` in namespace `idx` (asyncua annotates the parts with marker classes)."""
    return ua.NodeId(ua.String(name), ua.Int16(idx))


def _zero(datatype: DataType) -> object:
    """A value of the type for a variable's creation (its status says there is none yet)."""
    if datatype is DataType.BOOL:
        return False
    if datatype is DataType.STRING:
        return ""
    if datatype in (DataType.FLOAT32, DataType.FLOAT64):
        return 0.0
    return 0


async def _describe(node: Node, text: str) -> None:
    """Set a node's Description (what browsing clients show beside it)."""
    variant = ua.Variant(ua.LocalizedText(text), ua.VariantType.LocalizedText)
    await node.write_attribute(AttributeIds.Description, ua.DataValue(variant))


def _limit(iserver: ServiceServer) -> None:
    """asyncua's server-side limits (see the constants above)."""
    iserver.max_connections = MAX_CONNECTIONS
    iserver.max_session_timeout_ms = MAX_SESSION_TIMEOUT_MS
    iserver.max_pending_activation_seconds = ACTIVATION_TIMEOUT_S
    iserver.max_subscriptions = MAX_SUBSCRIPTIONS
    iserver.max_unacked_messages_per_subscription = MAX_UNACKED_MESSAGES
    iserver.max_monitored_item_queue_size = MAX_QUEUE_SIZE
    iserver.max_lifetime_count = MAX_LIFETIME_COUNT
    iserver.max_keep_alive_count = MAX_KEEP_ALIVE_COUNT
