"""The field types of a cell file: names, Modbus addresses, NodeIds, endpoints, durations."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    WithJsonSchema,
)

from cellctl.durations import Duration
from cellctl.errors import InvalidField, quote
from cellctl.expr import names
from drivers.points import ModbusTable

TagName = Annotated[str, AfterValidator(names.expression_name("tag"))]
MethodName = Annotated[str, AfterValidator(names.expression_name("method"))]
DeviceName = Annotated[str, AfterValidator(names.label("device name", names.DEVICE))]
NonEmpty = Annotated[str, Field(min_length=1)]


@dataclass(frozen=True)
class ModbusAddress:
    """A Modbus address as written in a cell file: table, zero-based address, optional bit."""

    table: ModbusTable
    address: int
    bit: int | None = None

    def __str__(self) -> str:
        suffix = f".{self.bit}" if self.bit is not None else ""
        return f"{self.table.value}:{self.address}{suffix}"


# ASCII digits, few enough for int(): '１０' is no address, nor are 5000 digits (int() refuses).
_ADDRESS = re.compile(r"(coil|di|hr|ir):([0-9]{1,9})(?:\.([0-9]{1,9}))?", re.IGNORECASE)
_MODICON = re.compile(r"([0134])x?(\d{4,5})", re.IGNORECASE)
_MODICON_TABLE = {"0": "coil", "1": "di", "3": "ir", "4": "hr"}
_ADDRESS_FORMS = "coil:N, di:N, hr:N, ir:N, or hr:N.B / ir:N.B for a bit (N zero-based)"


def parse_address(value: object) -> ModbusAddress:
    """Parse 'hr:10', 'coil:0', 'ir:3.7'; a Modicon number (40001, '4x0001') gets a hint."""
    if isinstance(value, ModbusAddress):
        return value
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise InvalidField(f"{value!r} is not an address: write {_ADDRESS_FORMS}", "bad-address")
    text = str(value).strip()
    match = _ADDRESS.fullmatch(text)
    if match is None:
        modicon = _MODICON.fullmatch(text)
        if modicon is not None and int(modicon.group(2)) >= 1:
            table = _MODICON_TABLE[modicon.group(1)]
            hint = f"{table}:{int(modicon.group(2)) - 1}"
            raise InvalidField(
                f"{text!r} looks like a Modicon number; addresses are zero-based protocol "
                f"addresses: write {hint} for {text}",
                "bad-address",
            )
        what = quote(text)
        raise InvalidField(f"{what} is not an address: write {_ADDRESS_FORMS}", "bad-address")
    table = ModbusTable(match.group(1).lower())
    address = int(match.group(2))
    if address > 0xFFFF:
        raise InvalidField(f"{text!r}: {address} is out of range 0..65535", "bad-address")
    bit = int(match.group(3)) if match.group(3) is not None else None
    if bit is not None and table.is_bit_table:
        raise InvalidField(
            f"{text!r}: a bit (.B) is only for registers (hr:N.B, ir:N.B)", "bad-address"
        )
    if bit is not None and bit > 15:
        raise InvalidField(f"{text!r}: bit {bit} is out of range 0..15", "bad-address")
    return ModbusAddress(table, address, bit)


Address = Annotated[
    ModbusAddress,
    PlainValidator(parse_address),
    PlainSerializer(str),
    WithJsonSchema({"type": "string", "pattern": r"^(coil|di|hr|ir):\d+(\.\d+)?$"}),
]

_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"
_NODE_ID = re.compile(
    rf"(?:ns=(?P<ns>[0-9]{{1,9}});|nsu=[^;]+;)?"
    rf"(?:i=(?P<i>[0-9]{{1,12}})|s=.+|g={_GUID}|b=[A-Za-z0-9+/]+={{0,2}})",
    re.DOTALL,
)


def check_node_id(value: str) -> str:
    """Check the syntax of a NodeId string: 'ns=2;s=Robot.Busy', 'ns=3;i=1001', 'i=2253'."""
    match = _NODE_ID.fullmatch(value)
    hint = "write e.g. ns=2;s=Robot.Busy or ns=3;i=1001"
    if match is None:
        raise InvalidField(f"bad NodeId {quote(value)}: {hint}", "bad-node")
    if match.group("ns") is not None and int(match.group("ns")) > 0xFFFF:
        raise InvalidField(f"bad NodeId {value!r}: namespace index above 65535", "bad-node")
    if match.group("i") is not None and int(match.group("i")) > 0xFFFFFFFF:
        raise InvalidField(f"bad NodeId {value!r}: numeric id above 4294967295", "bad-node")
    return value


NodeId = Annotated[str, AfterValidator(check_node_id)]


def _matching(pattern: str, message: str, code: str) -> AfterValidator:
    """A check that a text matches `pattern` whole; `message` names the text at `{!r}`."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.fullmatch(value):
            raise InvalidField(message.format(value), code)
        return value

    return AfterValidator(check)


BrowseName = Annotated[
    str,
    _matching(
        r"(\d+:)?[^:\s][^:]*",
        "bad browse name {!r}: write the method's name with its namespace index, e.g. 2:Pick",
        "bad-browse-name",
    ),
]


def _check_endpoint(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme != "opc.tcp" or not parts.hostname:
        raise InvalidField(
            f"bad endpoint {value!r}: write opc.tcp://HOST:PORT/PATH", "bad-endpoint"
        )
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 0xFFFF:
        raise InvalidField(f"endpoint {value!r}: port must be 1..65535", "bad-endpoint")
    return value


Endpoint = Annotated[str, AfterValidator(_check_endpoint)]


EnvName = Annotated[
    str,
    _matching(
        r"[A-Za-z_][A-Za-z0-9_]*",
        "password_env {!r} must be the NAME of an environment variable (letters, digits, '_'), "
        "not the password",
        "bad-env-name",
    ),
]
PositiveDuration = Annotated[Duration, Field(gt=0)]

#: The config of every model of the cell file: unknown keys are refused, an entry never changes.
STRICT = ConfigDict(extra="forbid", frozen=True)
