"""The OPC UA driver's service calls: bounded requests, reads, method lookup, node checks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.base import Reading
from drivers.config import OpcuaConfig
from drivers.errors import BadResponse, BadStatus, DeviceTimeout, NotConnected, PointMismatch
from drivers.health import Backoff, HealthTracker, TracksHealth
from drivers.opcua.faults import SESSION_GONE
from drivers.opcua.nodes import (
    argument_problems,
    browse_path,
    node_id_of,
    point_problems,
    to_reading,
)
from drivers.opcua.watch import Watch
from drivers.opcua_types import status_code, status_name
from drivers.points import MethodSpec, OpcuaPoint, Point

T = TypeVar("T")

# Reconnect delays after a lost connection grow up to this cap (seconds).
RECONNECT_CAP = 5.0
# The largest message the client takes from a server (asyncua's default lets the server choose,
# up to 100 MB): a 10 MB string or a million-element array is refused, not allocated. Our own
# servers keep to the same size (drivers.opcua.server_limits).
MAX_MESSAGE_SIZE = 4 * 1024 * 1024
# A message over the size limit, ours (asyncua then closes the connection) or the server's.
TOO_LARGE = ("BadRequestTooLarge", "BadResponseTooLarge")
# Tags named in the message of a read whose answer was refused.
SHOWN_TAGS = 5


class OpcuaRequests(TracksHealth):
    """Requests to one OPC UA server on the current session, each bounded, errors mapped."""

    def __init__(
        self,
        config: OpcuaConfig,
        points: Sequence[OpcuaPoint] = (),
        methods: Sequence[MethodSpec] = (),
    ) -> None:
        self.name = config.name
        self.config = config
        self._points = tuple(points)
        self._methods = tuple(methods)
        self._tracker = HealthTracker(config.name)
        self._client: Client | None = None
        self._method_ids: dict[str, ua.NodeId] = {}
        # The session's state (see OpcuaSession), kept here beside the client it goes with.
        # True from a connect() that succeeded, or failed for a passing reason, until close():
        # only then is the session (re)opened in the background.
        self._running = False
        # True once the server's nodes were checked against the cell file.
        self._verified = False
        # Why the session was last lost, without the device's name: the reason of the BAD
        # readings a watch hears while health is LOST.
        self._lost_reason = "lost"
        self._watches: list[Watch] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Delays restarts after background work failed, so that a failure that recurs on every
        # session cannot spin; reset by a connect() that succeeds.
        self._failures = Backoff(cap=RECONNECT_CAP)

    async def _request(
        self, what: str, call: Callable[[Client], Awaitable[T]], attempts: int = 1
    ) -> T:
        """One service call bounded by limits.timeout (retried on timeout), errors mapped."""
        timeout = self.config.limits.timeout
        endpoint = self.config.endpoint
        last: Exception | None = None
        for _ in range(attempts):
            client = self._client
            if client is None:
                raise NotConnected.about(self.name, f"{what}: not connected to {endpoint}")
            try:
                # Not wait_for: on 3.11 it returns the result and drops a cancellation that
                # races with the answer, and a cancelled background task would live on.
                async with asyncio.timeout(timeout):
                    return await call(client)
            except TimeoutError as err:
                last = err
            except (ConnectionError, OSError) as err:
                raise NotConnected.about(
                    self.name, f"{what}: connection to {endpoint} failed: {err}"
                ) from err
            except UaStatusCodeError as err:
                name = status_name(status_code(err.code))
                reason = f"{what}: {endpoint} answered {name}"
                if name in TOO_LARGE:
                    limit = f"{MAX_MESSAGE_SIZE // 1024 // 1024} MiB"
                    raise BadResponse.about(
                        self.name,
                        f"{what}: {endpoint}: {name}: a message larger than the limit "
                        f"({limit} here) was refused",
                    ) from err
                if name.startswith(SESSION_GONE):
                    # Not an answer about the request: the session or channel is gone, though
                    # the TCP link may live on. Fail the session, so that it is opened again.
                    raise NotConnected.about(self.name, reason) from err
                raise BadStatus(f"{self.name}: {reason}", name, reason=reason) from err
            except UaError as err:
                raise BadResponse.about(self.name, f"{what}: {endpoint}: {err}") from err
        raise DeviceTimeout.about(
            self.name, f"{what}: no answer from {endpoint} within {timeout:g} s × {attempts}"
        ) from last

    async def _read(self, opc: Sequence[OpcuaPoint]) -> list[Reading]:
        """Read the points' values in one request."""
        if not opc:
            return []
        ids = [node_id_of(self.name, p.name, p.node_id) for p in opc]
        attempts = self.config.limits.retries + 1
        try:
            values = await self._request(
                f"read {len(opc)} point(s)",
                lambda c: c.uaclient.read_attributes(ids, AttributeIds.Value),
                attempts,
            )
        except BadResponse as err:
            # The answer as a whole was refused (too large, garbled): the tags are the clue to
            # which value is to blame.
            names = ", ".join(p.name for p in opc[:SHOWN_TAGS])
            more = f" and {len(opc) - SHOWN_TAGS} more" if len(opc) > SHOWN_TAGS else ""
            raise BadResponse.about(self.name, f"{err.reason} (tags {names}{more})") from err
        now = time.time()
        return [to_reading(self.name, p, dv, now) for p, dv in zip(opc, values, strict=True)]

    async def _method_id(self, method: MethodSpec) -> ua.NodeId:
        """The NodeId of a method, found by its browse name on its object (cached per session)."""
        if method.name not in self._method_ids:
            found = await self._find_methods([method])
            result = found[0]
            if isinstance(result, str):
                raise PointMismatch(f"{self.name} {method.name}: {result}")
            self._method_ids[method.name] = result
        return self._method_ids[method.name]

    async def _find_methods(self, methods: Sequence[MethodSpec]) -> list[ua.NodeId | str]:
        """Each method's NodeId, or why it was not found, in one TranslateBrowsePaths request."""
        paths = [browse_path(self.name, method) for method in methods]
        results = await self._request(
            "find methods", lambda c: c.uaclient.translate_browsepaths_to_nodeids(paths)
        )
        found: list[ua.NodeId | str] = []
        for method, result in zip(methods, results, strict=True):
            if result.StatusCode.is_good() and result.Targets:
                target = result.Targets[0].TargetId  # an ExpandedNodeId: keep the plain NodeId
                found.append(ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType))
            else:
                found.append(f"no method {method.browse_name} on {method.object_node}")
        return found

    async def _check(self, client: Client) -> list[str]:
        """Compare declared points and methods with the server; one message per difference."""
        problems: list[str] = []
        attributes = (
            AttributeIds.DataType,
            AttributeIds.AccessLevel,
            AttributeIds.UserAccessLevel,
        )
        to_read: list[ua.ReadValueId] = []
        checked: list[OpcuaPoint] = []
        for point in self._points:
            try:
                node = node_id_of(self.name, point.name, point.node_id)
            except PointMismatch as err:
                problems.append(str(err))
                continue
            checked.append(point)
            to_read += [ua.ReadValueId(NodeId=node, AttributeId=a) for a in attributes]
        methods: list[MethodSpec] = []
        for method in self._methods:
            try:
                path = browse_path(self.name, method)
            except PointMismatch as err:
                problems.append(str(err))
                continue
            methods.append(method)
            to_read.append(
                ua.ReadValueId(NodeId=path.StartingNode, AttributeId=AttributeIds.NodeClass)
            )
        params = ua.ReadParameters(NodesToRead=to_read)
        values = (
            await self._request("check nodes", lambda c: c.uaclient.read(params)) if to_read else []
        )
        for i, point in enumerate(checked):
            problems += point_problems(point, *values[3 * i : 3 * i + 3])
        if methods:
            problems += await self._method_problems(methods, values[3 * len(checked) :])
        return problems

    async def _method_problems(
        self, methods: Sequence[MethodSpec], object_classes: Sequence[ua.DataValue]
    ) -> list[str]:
        """Missing objects or methods, and argument lists that differ from the cell file."""
        problems: list[str] = []
        found = await self._find_methods(methods)
        for method, node_class, result in zip(methods, object_classes, found, strict=True):
            where = f"{method.name} {method.object_node} {method.browse_name}"
            if node_class.StatusCode is not None and node_class.StatusCode.is_bad():
                problems.append(f"{where}: no object {method.object_node} on the server")
                continue
            if isinstance(result, str):
                problems.append(f"{where}: {result}")
                continue
            self._method_ids[method.name] = result
            inputs = await self._arguments(result, "InputArguments")
            declared_in = [arg.datatype for arg in method.args]
            problems += argument_problems(where, "argument", inputs, declared_in, method)
            if method.result is not None:
                outputs = await self._arguments(result, "OutputArguments")
                problems += argument_problems(where, "result", outputs, [method.result], method)
        return problems

    async def _arguments(self, method_id: ua.NodeId, prop: str) -> list[ua.Argument]:
        """A method's InputArguments or OutputArguments property ([] when it has none)."""
        client = self._client
        if client is None:
            raise NotConnected.about(self.name, f"not connected to {self.config.endpoint}")
        method = client.get_node(method_id)

        async def read(_c: Client) -> list[ua.Argument]:
            try:
                child: Node = await method.get_child(f"0:{prop}")
            except UaStatusCodeError:
                return []
            value = await child.read_value()
            return list(value or [])

        return await self._request(f"read {prop} of {method_id.to_string()}", read)

    def _mismatch(self, problems: list[str]) -> PointMismatch:
        """One PointMismatch listing every difference."""
        return PointMismatch.about(
            self.name,
            f"{len(problems)} difference(s) between the cell file and "
            f"{self.config.endpoint}:\n  " + "\n  ".join(problems),
        )

    def _opcua_point(self, point: Point) -> OpcuaPoint:
        if not isinstance(point, OpcuaPoint):
            raise PointMismatch.about(self.name, f"{point.describe()} is not an OPC UA point")
        return point
