"""An asyncua server that exposes one device's process image with the cell file's exact NodeIds."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import reprlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds

from drivers.base import Value
from drivers.config import url_host
from drivers.opcua.server_limits import SERVER_LIMITS, LimitedServer, ServerLimits
from drivers.opcua.server_transport import HardenedServer
from drivers.opcua_types import datatype_node, from_ua, ns0_node, parse_node_id, to_variant
from drivers.points import Access, MethodSpec, OpcuaPoint
from drivers.sim.image import ProcessImage
from drivers.sim.opcua_cache import default_cache_dir, init_with_cache
from drivers.sim.opcua_methods import MethodCallback
from drivers.sim.plant.base import MethodHandler

log = logging.getLogger("drivers.sim.opcua")

# The asyncua server logs every call and connection at INFO; keep it to warnings unless the
# application configured that logger itself.
_QUIET_LOGGERS = ("asyncua.server", "asyncua.common")


class OpcuaSimServer:
    """Serves one device's ProcessImage over OPC UA on `host` (127.0.0.1); satisfies SimServer."""

    def __init__(
        self,
        endpoint: str,
        image: ProcessImage,
        methods: Sequence[MethodSpec] = (),
        handlers: Mapping[str, MethodHandler] | None = None,
        cache_dir: Path | None = None,
        host: str = "127.0.0.1",
        limits: ServerLimits = SERVER_LIMITS,
    ) -> None:
        url = urlparse(endpoint)
        if url.scheme != "opc.tcp":
            raise ValueError(f"{image.device}: endpoint {endpoint!r} is not an opc.tcp:// URL")
        self._image = image
        self._points = image.points_of(OpcuaPoint, "an OPC UA point")
        self._methods = tuple(methods)
        self._handlers = dict(handlers or {})
        self._cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._host = host
        self._limits = limits
        self._port = url.port or 0
        self._path = url.path or "/"
        self._node_ids = {
            tag: _parse_node_id(image.device, tag, p.node_id) for tag, p in self._points.items()
        }
        self._tags_by_node: dict[ua.NodeId, list[str]] = {}
        for tag, node_id in self._node_ids.items():
            self._tags_by_node.setdefault(node_id, []).append(tag)
        self._server: HardenedServer | None = None
        self._prepared: HardenedServer | None = None
        self._clock: asyncio.Task[None] | None = None

    @property
    def endpoint(self) -> str:
        """The URL clients connect to, with the actual port once started."""
        return f"opc.tcp://{url_host(self._host)}:{self._port}{self._path}"

    @property
    def port(self) -> int:
        """The TCP port (0 until the first start when asked for a free one)."""
        return self._port

    async def prepare(self) -> None:
        """Build the address space without opening the endpoint (the slow part of a start)."""
        if self._server is not None or self._prepared is not None:
            return
        for name in _QUIET_LOGGERS:
            logger = logging.getLogger(name)
            if logger.level == logging.NOTSET:
                logger.setLevel(logging.WARNING)
        # The service's limits and hardened transport: a simulator meets the same hostile and
        # vanishing clients (drivers.opcua.server_limits, drivers.opcua.server_transport).
        server = HardenedServer(LimitedServer(self._limits))
        await init_with_cache(server, self._cache_dir)
        server.set_endpoint(self.endpoint)
        server.set_server_name(f"cellctl simulator {self._image.device}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        # asyncua's clock task sleeps 1 s and stop() waits for it; ours is cancelled at once.
        server.disable_clock()
        await self._build(server)
        server.subscribe_server_callback(CallbackType.PostWrite, self._on_post_write)
        self._prepared = server

    async def start(self) -> None:
        """Listen (preparing first if needed); a restart reuses the same port."""
        if self._server is not None:
            return
        await self.prepare()
        server, self._prepared = self._prepared, None
        assert server is not None
        # The nodes hold the image as prepare() found it: what the model changed since was
        # published to no server (a robot that ended its move while killed would stay busy).
        # From here on publish() reaches this address space, also while the endpoint opens.
        self._server = server
        try:
            await self.publish(self._image.device, self._image.snapshot())
            await server.start()
        except BaseException:
            self._server = None
            raise
        assert server.bserver is not None
        self._port = int(server.bserver.port)
        self._clock = asyncio.create_task(_run_clock(server))
        log.info("%s: OPC UA simulator listening on %s", self._image.device, self.endpoint)

    async def stop(self) -> None:
        """Close the endpoint and every client connection (a killed device)."""
        server, self._server = self._server, None
        clock, self._clock = self._clock, None
        if clock is not None:
            clock.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await clock
        if server is not None:
            await server.stop()

    async def _publish_model_changes(self) -> None:
        """Publish what a method handler changed before its answer leaves, so a client that
        reads `busy` right after `Pick` returned never sees the value from before the call."""
        changed = self._image.take_dirty()
        if changed:
            await self.publish(self._image.device, changed)

    async def publish(self, device: str, values: dict[str, Value]) -> None:
        """Write model values into the nodes, each as a Variant of its point's type."""
        if device != self._image.device:
            raise KeyError(f"OPC UA simulator of {self._image.device!r} has no device {device!r}")
        server = self._server
        if server is None:
            return  # a stopped device: start() loads the image's values
        now = ua.DateTime.now(datetime.UTC)
        for tag, value in values.items():
            variant = to_variant(self._points[tag].datatype, value)
            datavalue = ua.DataValue(variant, SourceTimestamp=now, ServerTimestamp=now)
            await server.write_attribute_value(self._node_ids[tag], datavalue)

    async def _build(self, server: Server) -> None:
        """Namespaces, method objects, variables and methods, with the cell file's NodeIds."""
        wanted = [n.NamespaceIndex for n in self._node_ids.values()]
        wanted += [
            _parse_node_id(self._image.device, m.name, m.object_node).NamespaceIndex
            for m in self._methods
        ]
        namespaces = await server.get_namespace_array()
        while len(namespaces) <= max(wanted, default=0):
            await server.register_namespace(f"urn:cellctl:sim:ns{len(namespaces)}")
            namespaces = await server.get_namespace_array()
        objects = await self._add_objects(server)
        for tag, point in self._points.items():
            node_id = self._node_ids[tag]
            parent = _parent_of(node_id, objects) or server.nodes.objects
            variant = to_variant(point.datatype, self._image.get(tag))
            name = ua.QualifiedName(str(node_id.Identifier), node_id.NamespaceIndex)
            node = await parent.add_variable(
                node_id, name, variant, datatype=datatype_node(point.datatype)
            )
            if point.access is Access.RW:
                await node.set_writable()
        for method in self._methods:
            await self._add_method(server, method, objects)

    async def _add_objects(self, server: Server) -> dict[ua.NodeId, Any]:
        """The objects the methods live on, created under Objects unless they already exist."""
        objects: dict[ua.NodeId, Any] = {}
        for method in self._methods:
            node_id = _parse_node_id(self._image.device, method.name, method.object_node)
            if node_id in objects:
                continue
            node = server.get_node(node_id)
            exists = server.read_attribute_value(node_id, AttributeIds.NodeClass)
            if exists.StatusCode is not None and exists.StatusCode.is_bad():
                name = ua.QualifiedName(str(node_id.Identifier), node_id.NamespaceIndex)
                node = await server.nodes.objects.add_object(node_id, name)
            objects[node_id] = node
        return objects

    async def _add_method(
        self, server: Server, spec: MethodSpec, objects: dict[ua.NodeId, Any]
    ) -> None:
        """Add one method with its declared argument and result types."""
        parent = objects[_parse_node_id(self._image.device, spec.name, spec.object_node)]
        qname = ua.QualifiedName.from_string(spec.browse_name)
        inputs = [
            ua.Argument(Name=arg.name, DataType=datatype_node(arg.datatype), ValueRank=-1)
            for arg in spec.args
        ]
        outputs = []
        if spec.result is not None:
            outputs.append(
                ua.Argument(Name="result", DataType=datatype_node(spec.result), ValueRank=-1)
            )
        callback = MethodCallback(
            self._image.device, spec, self._handlers.get(qname.Name), self._publish_model_changes
        )
        # Passing the namespace index lets the server number the method node in that namespace.
        await parent.add_method(qname.NamespaceIndex, qname.Name, callback.call, inputs, outputs)

    def _on_post_write(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """Copy every value a client wrote successfully into the process image."""
        if not event.is_external:
            return
        params: ua.WriteParameters = event.request_params
        results: list[ua.StatusCode] = event.response_params
        for item, status in zip(params.NodesToWrite, results, strict=False):
            if item.AttributeId != AttributeIds.Value or not status.is_good():
                continue
            for tag in self._tags_by_node.get(item.NodeId, ()):
                raw = item.Value.Value.Value if item.Value.Value is not None else None
                try:
                    value = from_ua(self._points[tag].datatype, raw)
                except ValueError:
                    log.warning(
                        "%s: client wrote %s to %s, not a value of its type",
                        self._image.device,
                        reprlib.repr(raw),  # bounded: a client chooses its size
                        tag,
                    )
                    continue
                self._image.accept_client_write(tag, value)


async def _run_clock(server: Server) -> None:
    """Keep the server's CurrentTime ticking once a second, as asyncua's own clock would."""
    node = ns0_node(ObjectIds.Server_ServerStatus_CurrentTime)
    while True:
        now = datetime.datetime.now(datetime.UTC)
        await server.write_attribute_value(
            node, ua.DataValue(ua.Variant(now, ua.VariantType.DateTime))
        )
        await asyncio.sleep(1.0)


def _parse_node_id(device: str, what: str, text: str) -> ua.NodeId:
    """A NodeId from its string form; ValueError naming the device and tag if it is malformed."""
    try:
        return parse_node_id(text)
    except ValueError as err:
        raise ValueError(f"{device}: {what}: {err}") from err


def _parent_of(node_id: ua.NodeId, objects: Mapping[ua.NodeId, Any]) -> Any:
    """The method object a variable belongs to by name ('Robot.Busy' under 'Robot'), if any."""
    if not isinstance(node_id.Identifier, str):
        return None
    for object_id, node in objects.items():
        if (
            object_id.NamespaceIndex == node_id.NamespaceIndex
            and isinstance(object_id.Identifier, str)
            and node_id.Identifier.startswith(object_id.Identifier + ".")
        ):
            return node
    return None
