"""DataType ↔ OPC UA type mapping and value conversion, shared by the driver and the simulator."""

from __future__ import annotations

import math
import reprlib

from asyncua import ua
from asyncua.ua.object_ids import ObjectIdNames
from asyncua.ua.uaerrors import UaError

from drivers.base import Value
from drivers.codecs import FLOAT32_MAX, INT_RANGES, shortest_float32
from drivers.points import DataType

VARIANT_TYPES: dict[DataType, ua.VariantType] = {
    DataType.BOOL: ua.VariantType.Boolean,
    DataType.INT16: ua.VariantType.Int16,
    DataType.UINT16: ua.VariantType.UInt16,
    DataType.INT32: ua.VariantType.Int32,
    DataType.UINT32: ua.VariantType.UInt32,
    DataType.INT64: ua.VariantType.Int64,
    DataType.UINT64: ua.VariantType.UInt64,
    DataType.FLOAT32: ua.VariantType.Float,
    DataType.FLOAT64: ua.VariantType.Double,
    DataType.STRING: ua.VariantType.String,
}


def status_code(code: int) -> ua.StatusCode:
    """A StatusCode from its number (asyncua annotates it as its ua.UInt32 marker class)."""
    return ua.StatusCode(ua.UInt32(code))


def ns0_node(identifier: int) -> ua.NodeId:
    """A numeric NodeId in namespace 0 (asyncua annotates the parts with marker classes)."""
    return ua.NodeId(ua.Int32(identifier), ua.Int16(0))


def variant_type(datatype: DataType) -> ua.VariantType:
    """The OPC UA built-in type that carries a value of this type."""
    return VARIANT_TYPES[datatype]


def datatype_node(datatype: DataType) -> ua.NodeId:
    """The NodeId of the OPC UA DataType node (ns=0) for this type."""
    # Built-in types 1..25 have DataType nodes with the same numeric identifier.
    return ns0_node(VARIANT_TYPES[datatype].value)


def datatype_name(node: ua.NodeId) -> str:
    """A DataType NodeId as a person reads it: 'Double' for ns=0;i=11, else the NodeId string."""
    if node.NamespaceIndex == 0 and isinstance(node.Identifier, int):
        name = ObjectIdNames.get(node.Identifier)
        if name is not None:
            return str(name)
    return str(node.to_string())


def to_variant(datatype: DataType, value: Value) -> ua.Variant:
    """A Variant of exactly the point's type (a plain int is refused by Int32 and Double nodes)."""
    return ua.Variant(value, VARIANT_TYPES[datatype])


def from_ua(datatype: DataType, value: object) -> Value:
    """A value received from a server as the point's Python type; ValueError if it does not fit."""
    if datatype is DataType.BOOL:
        if isinstance(value, bool):
            return value
    elif datatype is DataType.STRING:
        if isinstance(value, str):
            return value
    elif datatype in (DataType.FLOAT32, DataType.FLOAT64):
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if datatype is DataType.FLOAT64 or not math.isfinite(number):
                return number
            if abs(number) <= FLOAT32_MAX:
                return shortest_float32(number)
    elif isinstance(value, int) and not isinstance(value, bool):
        low, high = INT_RANGES[datatype]
        if low <= value <= high:
            return value
    kind = type(value).__name__
    if isinstance(value, list | tuple):
        kind = f"{kind} of {len(value)} values"
    # reprlib: the server chooses the value's size (a 10 MB string, a million-element array)
    # and the message goes into every BAD reading and log line.
    raise ValueError(f"value {reprlib.repr(value)} ({kind}) is not a {datatype.value}")


def status_name(status: ua.StatusCode | None) -> str:
    """The symbolic name of a status code ('BadNodeIdUnknown'); Good for None."""
    if status is None:
        return "Good"
    # The low 16 bits are info bits (overflow, limits), not part of the code's name.
    return str(status_code(status.value & 0xFFFF0000).name)


def parse_node_id(text: str) -> ua.NodeId:
    """A NodeId from its string form ('ns=2;s=Robot.Busy'); ValueError when it is malformed."""
    try:
        return ua.NodeId.from_string(text)
    except (UaError, ValueError) as err:
        raise ValueError(f"invalid NodeId {text!r}: {err}") from err
