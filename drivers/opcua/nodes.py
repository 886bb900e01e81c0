"""OPC UA nodes as the cell file names them: NodeIds, browse paths, checks, readings."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, cast

from asyncua import ua
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError

from drivers.base import Quality, Reading
from drivers.errors import PointMismatch
from drivers.opcua_types import (
    datatype_name,
    datatype_node,
    from_ua,
    ns0_node,
    parse_node_id,
    status_name,
)
from drivers.points import Access, MethodSpec, OpcuaPoint


def node_id_of(device: str, what: str, text: str) -> ua.NodeId:
    """Parse a NodeId string; PointMismatch naming the tag when the cell file's text is invalid."""
    try:
        return parse_node_id(text)
    except ValueError as err:
        raise PointMismatch(f"{device} {what}: {err}") from err


def browse_path(device: str, method: MethodSpec) -> ua.BrowsePath:
    """The path from a method's object to the method; PointMismatch for malformed cell-file text."""
    start = node_id_of(device, method.name, method.object_node)
    try:
        name = ua.QualifiedName.from_string(method.browse_name)
    except (UaError, ValueError) as err:
        raise PointMismatch(
            f"{device} {method.name}: invalid browse name {method.browse_name!r}: {err}"
        ) from err
    element = ua.RelativePathElement(
        ReferenceTypeId=ns0_node(ObjectIds.HasComponent),
        IsInverse=cast(ua.Boolean, False),  # asyncua's marker class; the value is a bool
        IncludeSubtypes=cast(ua.Boolean, True),
        TargetName=name,
    )
    return ua.BrowsePath(start, ua.RelativePath([element]))


def point_problems(
    point: OpcuaPoint, datatype: ua.DataValue, access: ua.DataValue, user_access: ua.DataValue
) -> list[str]:
    """How one variable on the server differs from its declaration."""
    where = f"{point.name} {point.node_id}"
    status = datatype.StatusCode
    if status is not None and status.is_bad():
        if status.value == StatusCodes.BadNodeIdUnknown:
            return [f"{where}: no such node on the server"]
        if status.value == StatusCodes.BadAttributeIdInvalid:
            return [f"{where}: not a variable"]
        return [f"{where}: cannot read its DataType: {status_name(status)}"]
    problems: list[str] = []
    server_type = datatype.Value.Value if datatype.Value is not None else None
    if server_type != datatype_node(point.datatype):
        shown = (
            datatype_name(server_type) if isinstance(server_type, ua.NodeId) else repr(server_type)
        )
        problems.append(f"{where}: server says {shown}, cell file says {point.datatype.value}")
    no_read: list[str] = []
    no_write: list[str] = []
    for label, value in (("AccessLevel", access), ("UserAccessLevel", user_access)):
        bits = value.Value.Value if value.Value is not None else None
        if not isinstance(bits, int):
            problems.append(f"{where}: cannot read its {label}: {status_name(value.StatusCode)}")
            continue
        if not bits & (1 << ua.AccessLevel.CurrentRead):
            no_read.append(label)
        if point.access is Access.RW and not bits & (1 << ua.AccessLevel.CurrentWrite):
            no_write.append(label)
    if no_read:
        problems.append(f"{where}: server does not allow reading ({', '.join(no_read)})")
    if no_write:
        problems.append(
            f"{where}: cell file says rw, server does not allow writing ({', '.join(no_write)})"
        )
    return problems


def argument_problems(
    where: str,
    kind: str,
    server: Sequence[ua.Argument],
    declared: Sequence[Any],
    method: MethodSpec,
) -> list[str]:
    """Differences in count and type between a method's server-side and declared arguments."""
    if len(server) != len(declared):
        noun = "arguments" if kind == "argument" else "results"
        return [f"{where}: server has {len(server)} {noun}, cell file declares {len(declared)}"]
    problems: list[str] = []
    for i, (arg, datatype) in enumerate(zip(server, declared, strict=True)):
        if arg.DataType != datatype_node(datatype):
            label = method.args[i].name if kind == "argument" else "result"
            problems.append(
                f"{where}: {kind} {label} server says {datatype_name(arg.DataType)}, "
                f"cell file says {datatype.value}"
            )
    return problems


def to_reading(device: str, point: OpcuaPoint, datavalue: ua.DataValue, now: float) -> Reading:
    """A Reading from a DataValue: BAD with the status name, or the value as its Python type."""
    where = f"{device} {point.name} {point.node_id}"
    status = datavalue.StatusCode
    if status is not None and status.is_bad():
        return Reading(None, now, Quality.BAD, f"{where}: {status_name(status)}")
    raw = datavalue.Value.Value if datavalue.Value is not None else None
    try:
        value = from_ua(point.datatype, raw)
    except ValueError as err:
        return Reading(None, now, Quality.BAD, f"{where}: {err}")
    stamp = datavalue.SourceTimestamp or datavalue.ServerTimestamp
    device_time = epoch(stamp) if stamp is not None else None
    if status is not None and status.is_uncertain():
        return Reading(
            value, now, Quality.UNCERTAIN, f"{where}: {status_name(status)}", device_time
        )
    return Reading(value, now, device_time=device_time)


def epoch(stamp: datetime.datetime) -> float:
    """An OPC UA timestamp (UTC; naive ones are UTC too) as seconds since the epoch."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()
