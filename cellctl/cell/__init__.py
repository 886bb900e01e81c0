"""The cell file: its model, loading with located errors, and the rules that span fields.

A cell file is loaded in three passes, so that every problem is reported at once:
YAML (yamlload: syntax, duplicates, encoding), pydantic (shape, types, ranges of each entry),
then the rules between entries (addresses, devices, endpoints, interlocks, safe state), which
run on every entry that passed its own validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cellctl import expr
from cellctl.durations import Duration, format_duration
from cellctl.errors import (
    BadValue,
    InvalidField,
    Problem,
    ValidationFailed,
    did_you_mean,
    quote,
)
from cellctl.expr import names
from cellctl.yamlload import (
    Describe,
    Where,
    YamlDocument,
    load_yaml,
    plain,
    scalar_offset,
    validation_problems,
)
from drivers import codecs
from drivers.base import Value
from drivers.errors import WriteRejected
from drivers.points import Access, DataType, ModbusTable, WordOrder

# ---------------------------------------------------------------------------------------------
# Field types


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


def _check_browse_name(value: str) -> str:
    if not re.fullmatch(r"(\d+:)?[^:\s][^:]*", value):
        raise InvalidField(
            f"bad browse name {value!r}: write the method's name with its namespace index, "
            "e.g. 2:Pick",
            "bad-browse-name",
        )
    return value


BrowseName = Annotated[str, AfterValidator(_check_browse_name)]


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


def _check_env_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        raise InvalidField(
            f"password_env {value!r} must be the NAME of an environment variable "
            "(letters, digits, '_'), not the password",
            "bad-env-name",
        )
    return value


PositiveDuration = Annotated[Duration, Field(gt=0)]


# ---------------------------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SimSpec(_Model):
    """The plant model that simulates a device, and optionally which tag plays each signal."""

    model: NonEmpty
    signals: dict[str, TagName] = {}


def _sim(value: object) -> object:
    return {"model": value} if isinstance(value, str) else value


Sim = Annotated[
    SimSpec,
    BeforeValidator(_sim),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string"},
                {
                    "type": "object",
                    "properties": {
                        "model": {"type": "string"},
                        "signals": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    "required": ["model"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class _Polled(_Model):
    poll: PositiveDuration = 0.1
    timeout: PositiveDuration = 1.0
    retries: int = Field(1, ge=0, le=10)
    sim: Sim | None = None


class _ModbusDevice(_Polled):
    word_order: WordOrder = WordOrder.ABCD
    max_gap: int = Field(0, ge=0, le=124)


class ModbusTcpDevice(_ModbusDevice):
    """A Modbus TCP device (or a unit behind a TCP gateway)."""

    driver: Literal["modbus-tcp"]
    host: NonEmpty
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=247)


class ModbusRtuDevice(_ModbusDevice):
    """A Modbus RTU device on a serial line."""

    driver: Literal["modbus-rtu"]
    port: NonEmpty
    # Unit 0 is broadcast on RTU: nobody answers it, so it cannot be read.
    unit: int = Field(1, ge=1, le=247)
    baudrate: int = Field(19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


SecurityPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]


class OpcuaDevice(_Model):
    """An OPC UA server; the password comes from the environment variable named by password_env."""

    driver: Literal["opcua"]
    endpoint: Endpoint
    publishing_interval: PositiveDuration = Field(
        0.1, validation_alias=AliasChoices("publishing_interval", "poll")
    )
    timeout: PositiveDuration = 1.0
    retries: int = Field(1, ge=0, le=10)
    security: SecurityPolicy = "None"
    cert: NonEmpty | None = None
    key: NonEmpty | None = None
    server_cert: NonEmpty | None = None
    # A folder of trusted server certificates (*.der, *.pem), for servers not pinned.
    trust_dir: NonEmpty | None = None
    user: NonEmpty | None = None
    password_env: Annotated[str, AfterValidator(_check_env_name)] | None = None
    # Declared only to refuse it with a useful message; never holds a value.
    password: Annotated[Any, WithJsonSchema({"not": {}})] = Field(None, exclude=True)
    sim: Sim | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _no_password(cls, value: object) -> None:
        raise InvalidField(
            "a password is never written in the cell file: put it in an environment variable "
            "and name that variable with password_env",
            "password-in-file",
        )

    @property
    def host(self) -> str:
        """The endpoint's host, lower-cased."""
        return (urlsplit(self.endpoint).hostname or "").lower()

    @property
    def port(self) -> int:
        """The endpoint's port (4840, OPC UA's registered port, when not written)."""
        return urlsplit(self.endpoint).port or 4840


class MemoryDevice(_Model):
    """An in-process device for tests and dry runs."""

    driver: Literal["memory"]
    poll: PositiveDuration = 0.02
    sim: Sim | None = None


Device = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | OpcuaDevice | MemoryDevice, Field(discriminator="driver")
]
DRIVERS: dict[str, type[_Model]] = {
    "modbus-tcp": ModbusTcpDevice,
    "modbus-rtu": ModbusRtuDevice,
    "opcua": OpcuaDevice,
    "memory": MemoryDevice,
}

INTEGER_TYPES = tuple(codecs.INT_RANGES)
# Beyond any type's range; checked first so that float arithmetic never overflows.
_LARGEST = 2**64


class Tag(_Model):
    """A named value on a device: its addressing, type, access, scaling and write limits."""

    device: DeviceName
    address: Address | None = None
    node: NodeId | None = None
    key: NonEmpty | None = None
    type: DataType | None = None
    length: int | None = Field(None, ge=1, le=125)
    word_order: WordOrder | None = None
    access: Access = Access.RO
    unit: str | None = None
    scale: FiniteFloat = 1.0
    offset: FiniteFloat = 0.0
    min: FiniteFloat | None = None
    max: FiniteFloat | None = None
    description: str | None = None

    @field_validator("scale")
    @classmethod
    def _scale_not_zero(cls, value: float) -> float:
        if value == 0:
            raise InvalidField("scale must not be 0", "bad-value")
        return value

    @field_validator("max")
    @classmethod
    def _max_not_below_min(cls, value: float | None, info: ValidationInfo) -> float | None:
        low = info.data.get("min")
        if value is not None and low is not None and value < low:
            raise InvalidField(f"max {value:g} is below min {low:g}", "bad-value")
        return value

    @model_validator(mode="after")
    def _type_stated(self) -> Tag:
        if self.address is None and self.type is None:
            raise InvalidField(
                "missing required key 'type' (OPC UA and memory tags state it)", "missing"
            )
        return self

    @property
    def datatype(self) -> DataType:
        """The stated type, else bool for coils, discrete inputs and bits, uint16 for registers."""
        if self.type is not None:
            return self.type
        assert self.address is not None  # _type_stated
        if self.address.table.is_bit_table or self.address.bit is not None:
            return DataType.BOOL
        return DataType.UINT16

    @property
    def scaled(self) -> bool:
        """True when engineering values differ from raw ones (numeric type, scale or offset set)."""
        numeric = self.datatype not in (DataType.BOOL, DataType.STRING)
        return numeric and (self.scale != 1 or self.offset != 0)

    def to_raw(self, value: Value) -> Value:
        """The raw device value of an engineering value: (value − offset) / scale, ints rounded."""
        if not self.scaled or isinstance(value, bool) or not isinstance(value, int | float):
            return value
        raw = (value - self.offset) / self.scale
        if self.datatype in INTEGER_TYPES and math.isfinite(raw):
            return math.floor(abs(raw) + 0.5) * (1 if raw >= 0 else -1)  # half away from zero
        return raw

    def from_raw(self, raw: Value) -> Value:
        """The engineering value of a raw device value: raw × scale + offset."""
        if not self.scaled or isinstance(raw, bool) or not isinstance(raw, int | float):
            return raw
        # 15 significant digits drop the float noise of the multiplication (12.3, not 12.300…01).
        return float(f"{raw * self.scale + self.offset:.15g}")

    def check_value(self, value: object) -> Value:
        """An engineering value checked for a write: type, min/max, raw range; raises BadValue."""
        datatype = self.datatype
        if datatype is DataType.BOOL:
            if not isinstance(value, bool):
                raise BadValue(f"expects true or false, got {value!r}")
            return value
        if datatype is DataType.STRING:
            if not isinstance(value, str):
                raise BadValue(f"expects a string, got {value!r}")
            self._check_raw(value)
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadValue(f"expects a number, got {value!r}")
        if isinstance(value, int) and abs(value) > _LARGEST:
            raise BadValue(f"{value} is out of range for {datatype.value}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadValue(f"expects a finite number, got {value!r}")
        whole = isinstance(value, int) or value.is_integer()
        if not self.scaled and datatype in INTEGER_TYPES and not whole:
            raise BadValue(f"expects a whole number for {datatype.value}, got {value!r}")
        if self.min is not None and value < self.min:
            raise BadValue(f"{value!r} is below the minimum {self.min:g}")
        if self.max is not None and value > self.max:
            raise BadValue(f"{value!r} is above the maximum {self.max:g}")
        raw = self._check_raw(self.to_raw(value))
        return float(value) if self.scaled else raw

    def _check_raw(self, raw: Value) -> Value:
        datatype = self.datatype
        try:
            checked = codecs.check_value(datatype, raw)
            if datatype is DataType.STRING and self.address is not None:
                codecs.encode_registers(datatype, checked, length=self.length or 1)
        except WriteRejected as err:
            raw_is = f"raw value after scale/offset is {raw!r}: " if self.scaled else ""
            raise BadValue(f"{raw_is}{err}") from None
        return checked


class Method(_Model):
    """An OPC UA method: the object node, its browse name, ordered arguments, result type."""

    device: DeviceName
    node: NodeId
    method: BrowseName
    args: dict[Annotated[str, AfterValidator(names.expression_name("argument"))], DataType] = {}
    result: DataType | None = None
    description: str | None = None


class Interlock(_Model):
    """A condition watched on every tag update; when true, the action is taken."""

    name: Annotated[str, AfterValidator(names.label("interlock name"))]
    when: NonEmpty
    action: Literal["hold", "stop", "abort"]
    description: str | None = None


class Heartbeat(_Model):
    """The controller's life signal to one device: written every `period` while the controller
    runs (a counter that wraps, or a bit that toggles); the device's PLC brings its outputs to
    their safe state when the value has not changed for `timeout`."""

    tag: TagName
    period: PositiveDuration
    timeout: PositiveDuration


SafeValue = Annotated[
    Any, BeforeValidator(plain), WithJsonSchema({"type": ["boolean", "number", "string"]})
]


class Ready(_Model):
    """What Resetting waits for before the cell is Idle: a condition over the cell's tags,
    true within `timeout` after Resetting's writes (else Resetting stops the cell)."""

    when: NonEmpty
    timeout: PositiveDuration = 10.0


class Cell(_Model):
    """A cell file: the cell's devices, tags, methods, interlocks, safe state and reset."""

    cell: Annotated[str, AfterValidator(names.label("cell name"))]
    description: str | None = None
    devices: dict[DeviceName, Device] = Field(min_length=1)
    tags: dict[TagName, Tag] = {}
    methods: dict[MethodName, Method] = {}
    interlocks: list[Interlock] = []
    safe_state: dict[str, SafeValue] = {}
    #: Safe-state tags that Unholding sets back to the value the recipe last wrote (level
    #: outputs such as a conveyor's run; never a trigger such as a press's cycle start).
    restore_on_unhold: list[str] = []
    #: Life signals the controller writes while it runs, at most one per device.
    heartbeat: list[Heartbeat] = []
    #: What Resetting writes to prepare the cell for a batch; None: the safe state.
    reset: dict[str, SafeValue] | None = None
    #: What Resetting waits for once it has written (None: nothing).
    ready: Ready | None = None
    _source: Path | None = PrivateAttr(None)

    @property
    def source(self) -> Path | None:
        """The file the cell was loaded from."""
        return self._source

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file (certificates) are resolved against."""
        return self._source.parent if self._source is not None else Path.cwd()

    @property
    def reset_values(self) -> dict[str, Any]:
        """What Resetting writes, in cell-file order: `reset`, else the safe state."""
        return dict(self.safe_state if self.reset is None else self.reset)

    @property
    def ready_tags(self) -> list[str]:
        """The tags `ready` names, in cell-file order."""
        named = expr.parse(self.ready.when).names if self.ready is not None else frozenset()
        return [t for t in self.tags if t in named]

    @property
    def heartbeat_tags(self) -> list[str]:
        """The heartbeat tags, in cell-file order (only the controller writes them)."""
        return [beat.tag for beat in self.heartbeat]


# ---------------------------------------------------------------------------------------------
# Loading


def load_cell(path: Path) -> Cell:
    """Load and validate a cell file; raises ValidationFailed carrying every problem."""
    return cell_from_document(load_yaml(path), path)


def check_cell_file(path: Path) -> list[Problem]:
    """Every problem of a cell file, sorted by line; an empty list when it is valid."""
    try:
        load_cell(path)
    except ValidationFailed as err:
        return err.problems
    return []


def cell_from_document(doc: YamlDocument, source: Path | None = None) -> Cell:
    """Validate a loaded YAML document as a cell file; raises ValidationFailed."""
    problems = list(doc.problems)
    cell: Cell | None = None
    try:
        cell = Cell.model_validate(doc.data)
    except ValidationError as err:
        problems.extend(validation_problems(doc, err, _describer(doc)))
    if isinstance(doc.data, dict):
        problems.extend(_Rules(doc, doc.data).run())
    if problems or cell is None:
        raise ValidationFailed(sorted(problems, key=lambda p: (p.line, p.col)))
    cell._source = source
    return cell


_SECTIONS = {
    "devices": "device",
    "tags": "tag",
    "methods": "method",
    "safe_state": "safe_state",
    "reset": "reset",
}


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    keys: list[str] = []
    for name, info in model.model_fields.items():
        keys.append(name)
        if isinstance(info.validation_alias, AliasChoices):
            keys.extend(str(choice) for choice in info.validation_alias.choices)
    return tuple(dict.fromkeys(keys))


def _describer(doc: YamlDocument) -> Describe:
    """Names the device, tag, method or interlock a pydantic error's loc points into."""

    def describe(loc: tuple[str | int, ...]) -> Where:
        section = loc[0] if loc else None
        if section == "ready" and len(loc) >= 2:
            return Where("ready", loc[1:], _keys(Ready))
        if len(loc) < 2 or section not in (*_SECTIONS, "interlocks", "heartbeat"):
            return Where("cell file", loc, _keys(Cell))
        rest = loc[2:]
        models: dict[str, type[BaseModel]] = {"tags": Tag, "methods": Method}
        model = models.get(str(section))
        if section == "interlocks":
            raw = doc.data["interlocks"][loc[1]] if doc.has(loc[:2]) else None
            label = raw.get("name") if isinstance(raw, dict) else None
            name = f"interlock {label}" if label else f"interlock #{int(loc[1]) + 1}"
            model = Interlock
        elif section == "heartbeat":
            raw = doc.data["heartbeat"][loc[1]] if doc.has(loc[:2]) else None
            tag = raw.get("tag") if isinstance(raw, dict) else None
            name = f"heartbeat {tag}" if isinstance(tag, str) else f"heartbeat #{int(loc[1]) + 1}"
            model = Heartbeat
        else:
            name = f"{_SECTIONS[str(section)]} {loc[1]}"
        if section == "devices" and rest and rest[0] in DRIVERS:
            model, rest = DRIVERS[str(rest[0])], rest[1:]
        if rest[:1] == ("sim",) and len(rest) > 1:
            model = SimSpec
        return Where(name, rest, _keys(model) if model is not None else ())

    return describe


# ---------------------------------------------------------------------------------------------
# Rules between entries


_M = TypeVar("_M")


def _valid(section: Any, adapter: TypeAdapter[_M]) -> Iterator[tuple[str, _M]]:
    """The entries of a mapping section that pass their own validation (others were reported)."""
    if not isinstance(section, dict):
        return
    for name, raw in section.items():
        try:
            yield str(name), adapter.validate_python(raw)
        except ValidationError:
            continue


_DEVICE_ADAPTER: TypeAdapter[Any] = TypeAdapter(Device)
_TAG_ADAPTER = TypeAdapter(Tag)
_METHOD_ADAPTER = TypeAdapter(Method)
_HEARTBEAT_ADAPTER = TypeAdapter(Heartbeat)
_MODBUS = ("modbus-tcp", "modbus-rtu")
_TABLE_NAMES = {
    ModbusTable.COIL: "coil",
    ModbusTable.DISCRETE_INPUT: "discrete input",
    ModbusTable.HOLDING_REGISTER: "holding register",
    ModbusTable.INPUT_REGISTER: "input register",
}


class _Rules:
    """The rules that span fields and entries, each problem located at what is at fault."""

    def __init__(self, doc: YamlDocument, data: dict[Any, Any]) -> None:
        self.doc = doc
        self.data = data
        self.problems: list[Problem] = []
        self.devices: dict[str, Any] = dict(_valid(data.get("devices"), _DEVICE_ADAPTER))
        self.tags: dict[str, Tag] = dict(_valid(data.get("tags"), _TAG_ADAPTER))
        self.methods: dict[str, Method] = dict(_valid(data.get("methods"), _METHOD_ADAPTER))
        self.raw_devices = self._names("devices")
        self.raw_tags = self._names("tags")
        # The driver of every device that names a known one, valid or not: tag rules need
        # only the driver, so a device with a bad port does not hide its tags' problems.
        raw_devices = data.get("devices")
        self.drivers: dict[str, str] = {
            str(name): raw["driver"]
            for name, raw in (raw_devices.items() if isinstance(raw_devices, dict) else ())
            if isinstance(raw, dict) and str(raw.get("driver")) in DRIVERS
        }

    def _names(self, section: str) -> set[str]:
        raw = self.data.get(section)
        return {str(name) for name in raw} if isinstance(raw, dict) else set()

    def add(
        self,
        loc: tuple[str | int, ...],
        code: str,
        message: str,
        *,
        key: bool = False,
        col_offset: int = 0,
    ) -> None:
        self.problems.append(self.doc.problem(loc, code, message, key=key, col_offset=col_offset))

    def line(self, loc: tuple[str | int, ...]) -> int:
        return self.doc.position(loc, key=True)[0]

    def run(self) -> list[Problem]:
        self.check_devices()
        self.check_tags()
        self.check_overlaps()
        self.check_methods()
        self.check_interlocks()
        self.check_safe_state()
        self.check_restore_on_unhold()
        self.check_heartbeat()
        self.check_reset()
        self.check_ready()
        return self.problems

    # -- devices ---------------------------------------------------------------------------

    def check_devices(self) -> None:
        units: dict[tuple[str, int], str] = {}
        lines: dict[str, str] = {}
        servers: dict[tuple[str, int], str] = {}
        for name, device in self.devices.items():
            loc: tuple[str | int, ...] = ("devices", name)
            if isinstance(device, ModbusTcpDevice | ModbusRtuDevice):
                bus = (
                    f"{host_key(device.host)}:{device.port}"
                    if isinstance(device, ModbusTcpDevice)
                    else device.port
                )
                first = units.setdefault((bus, device.unit), name)
                if first != name:
                    self.add(
                        (*loc, "unit"),
                        "unit-conflict",
                        f"device {name}: unit {device.unit} on {bus} is already device "
                        f"{first} (line {self.line(('devices', first))})",
                    )
            if isinstance(device, ModbusRtuDevice):
                first = lines.setdefault(device.port, name)
                other = self.devices[first]
                if _serial(other) != _serial(device):
                    self.add(
                        (*loc, "port"),
                        "serial-conflict",
                        f"device {name}: baudrate, parity, stopbits and bytesize on "
                        f"{device.port} must be those of device {first} "
                        f"(line {self.line(('devices', first))}): one line, one setting",
                    )
            if isinstance(device, ModbusTcpDevice | OpcuaDevice):
                self._check_server(name, device, servers)
            if isinstance(device, OpcuaDevice):
                self._check_security(name, device)
            if device.sim is not None:
                for signal, tag in device.sim.signals.items():
                    owner = self.tags.get(tag)
                    if tag not in self.raw_tags or (owner is not None and owner.device != name):
                        self.add(
                            (*loc, "sim", "signals", signal),
                            "unknown-tag",
                            f"device {name}: sim signal {signal!r} names {tag!r}, which is "
                            f"not a tag of device {name}",
                        )

    def _check_server(
        self,
        name: str,
        device: ModbusTcpDevice | OpcuaDevice,
        servers: dict[tuple[str, int], str],
    ) -> None:
        """One TCP port serves one thing: one OPC UA server, or Modbus units behind one gateway."""
        key = (host_key(device.host), device.port)
        first = servers.setdefault(key, name)
        if first == name:
            return
        other = self.devices[first]
        where = "endpoint" if isinstance(device, OpcuaDevice) else "port"
        at = f"{first} (line {self.line(('devices', first))})"
        if isinstance(device, ModbusTcpDevice) and isinstance(other, ModbusTcpDevice):
            return  # units behind one gateway share its connection
        if isinstance(device, OpcuaDevice) and isinstance(other, OpcuaDevice):
            if device.endpoint.rstrip("/") == other.endpoint.rstrip("/"):
                message = f"endpoint {device.endpoint} is already device {at}"
            else:
                message = (
                    f"endpoint {device.endpoint} shares host and port with device {at}; "
                    "an OPC UA server serves one address space per port: use another port"
                )
        else:
            message = f"{key[0]}:{key[1]} is already used by device {at} with another protocol"
        self.add(("devices", name, where), "endpoint-conflict", f"device {name}: {message}")

    def _check_security(self, name: str, device: OpcuaDevice) -> None:
        loc: tuple[str | int, ...] = ("devices", name)
        if device.security != "None":
            for field in ("cert", "key"):
                if getattr(device, field) is None:
                    self.add(
                        (*loc, "security"),
                        "missing",
                        f"device {name}: security {device.security} needs {field!r} "
                        "(the client certificate and its private key)",
                    )
        if device.user is not None and device.password_env is None:
            self.add(
                (*loc, "user"),
                "missing",
                f"device {name}: user {device.user!r} needs password_env, the name of the "
                "environment variable that holds the password",
            )
        if device.user is not None and device.server_cert is None and device.trust_dir is None:
            # The driver refuses it too: a server not known would receive the password.
            self.add(
                (*loc, "user"),
                "untrusted-server",
                f"device {name}: user {device.user!r} needs the server's certificate: pin it "
                "with server_cert or name a trust_dir that holds it, or any server answering at "
                f"{device.endpoint} would receive the password",
            )
        if device.password_env is not None and device.user is None:
            self.add((*loc, "password_env"), "missing", f"device {name}: password_env needs a user")
        for field in ("server_cert", "trust_dir"):
            if device.security == "None" and getattr(device, field) is not None:
                # Without a secure channel no certificate is asked for: the setting would
                # look like protection and check nothing.
                self.add(
                    (*loc, field),
                    "insecure-trust",
                    f"device {name}: {field} is checked only on a secured channel: set "
                    "security to Basic256Sha256_Sign or Basic256Sha256_SignAndEncrypt "
                    f"(with cert and key), or remove {field}",
                )
        if device.user is not None and device.security != "Basic256Sha256_SignAndEncrypt":
            # The driver refuses it too: without encryption the password may cross the network
            # in clear text.
            self.add(
                (*loc, "user"),
                "insecure-password",
                f"device {name}: user {device.user!r} needs security "
                "Basic256Sha256_SignAndEncrypt, or the password could cross the network in "
                "clear text",
            )

    # -- tags --------------------------------------------------------------------------------

    def check_tags(self) -> None:
        for name, tag in self.tags.items():
            loc: tuple[str | int, ...] = ("tags", name)
            subject = f"tag {name}"
            if tag.device not in self.raw_devices:
                hint = did_you_mean(tag.device, self.raw_devices)
                self.add(
                    (*loc, "device"),
                    "unknown-device",
                    f"{subject}: unknown device {tag.device!r}{hint}",
                )
            self._check_numbers(name, tag)
            driver = self.drivers.get(tag.device)
            if driver is not None:
                self._check_addressing(name, tag, driver)

    def _check_addressing(self, name: str, tag: Tag, driver: str) -> None:
        loc: tuple[str | int, ...] = ("tags", name)
        subject = f"tag {name}"
        on = f"device {tag.device} is {driver}"
        if driver in _MODBUS:
            allowed, required = {"address", "length", "word_order"}, "address"
        elif driver == "opcua":
            allowed, required = {"node"}, "node"
        else:
            allowed, required = {"key"}, None
        for field in ("address", "node", "key", "length", "word_order"):
            if getattr(tag, field) is not None and field not in allowed:
                self.add(
                    (*loc, field), "wrong-driver", f"{subject}: {field!r} does not apply, {on}"
                )
        if required is not None and getattr(tag, required) is None:
            example = "address: hr:0" if required == "address" else "node: ns=2;s=Name"
            self.add(
                loc,
                "missing",
                f"{subject}: missing required key {required!r} ({on}; e.g. {example})",
            )
        if driver in _MODBUS and tag.address is not None:
            self._check_modbus(name, tag)

    def _check_modbus(self, name: str, tag: Tag) -> None:
        loc: tuple[str | int, ...] = ("tags", name)
        subject = f"tag {name}"
        address = tag.address
        assert address is not None
        table = address.table
        datatype = tag.datatype
        if (table.is_bit_table or address.bit is not None) and datatype is not DataType.BOOL:
            what = "a register bit" if address.bit is not None else f"a {_TABLE_NAMES[table]}"
            self.add(
                (*loc, "type"),
                "type-mismatch",
                f"{subject}: {address} is {what}, which holds a bool, not {datatype.value}",
            )
            return
        if datatype is DataType.STRING and tag.length is None:
            self.add(
                loc,
                "missing",
                f"{subject}: missing required key 'length' (a string's size in registers)",
            )
        if tag.length is not None and datatype is not DataType.STRING:
            self.add(
                (*loc, "length"),
                "type-mismatch",
                f"{subject}: length applies to strings only, not {datatype.value}",
            )
        if tag.access is Access.RW and not table.writable:
            self.add(
                (*loc, "access"),
                "read-only",
                f"{subject}: {address} is a {_TABLE_NAMES[table]}, read-only by protocol; "
                "access rw is not possible",
            )
        end = _span(tag)[1]
        if end > 0x10000:
            self.add(
                (*loc, "address"),
                "bad-address",
                f"{subject}: {datatype.value} at {address} runs past address 65535",
            )

    def _check_numbers(self, name: str, tag: Tag) -> None:
        loc: tuple[str | int, ...] = ("tags", name)
        subject = f"tag {name}"
        if tag.datatype in (DataType.BOOL, DataType.STRING):
            for field, default in (("scale", 1.0), ("offset", 0.0), ("min", None), ("max", None)):
                if getattr(tag, field) != default:
                    self.add(
                        (*loc, field),
                        "type-mismatch",
                        f"{subject}: {field} applies to numbers, not {tag.datatype.value}",
                    )

    def check_overlaps(self) -> None:
        """Two tags on one device must not share a register, bit, coil, node or key."""
        self._check_same_handle()
        whole: dict[tuple[str, ModbusTable, int], str] = {}
        bits: dict[tuple[str, ModbusTable, int], dict[int, str]] = {}
        for name, tag in self.tags.items():
            address = tag.address
            if self.drivers.get(tag.device) not in _MODBUS or address is None:
                continue
            start, end = _span(tag)
            clash: str | None = None
            for register in range(start, min(end, 0x10000)):
                slot = (tag.device, address.table, register)
                if address.bit is None:
                    clash = (
                        clash or whole.get(slot) or next(iter(bits.get(slot, {}).values()), None)
                    )
                else:
                    clash = clash or whole.get(slot) or bits.get(slot, {}).get(address.bit)
            if clash is not None:
                first = self.tags[clash]
                self.add(
                    ("tags", name, "address"),
                    "address-overlap",
                    f"tag {name}: {address} overlaps tag {clash} ({_describe_span(first)}, "
                    f"line {self.line(('tags', clash))}) on device {tag.device}",
                )
                continue
            for register in range(start, min(end, 0x10000)):
                slot = (tag.device, address.table, register)
                if address.bit is None:
                    whole[slot] = name
                else:
                    bits.setdefault(slot, {})[address.bit] = name

    def _check_same_handle(self) -> None:
        """Two tags on one OPC UA node or one memory key are a copy-and-paste error."""
        first: dict[tuple[str, str], str] = {}
        for name, tag in self.tags.items():
            driver = self.drivers.get(tag.device)
            if driver == "opcua" and tag.node is not None:
                field, handle = "node", tag.node
            elif driver == "memory":
                field, handle = "key", tag.key or name
            else:
                continue
            other = first.setdefault((tag.device, handle), name)
            if other != name:
                self.add(
                    ("tags", name, field),
                    "address-overlap",
                    f"tag {name}: {field} {handle} is already tag {other} "
                    f"(line {self.line(('tags', other))}) on device {tag.device}",
                )

    # -- methods, interlocks, safe state ------------------------------------------------------

    def check_methods(self) -> None:
        for name, method in self.methods.items():
            loc: tuple[str | int, ...] = ("methods", name)
            if name in self.raw_tags:
                self.add(loc, "duplicate-name", f"method {name}: a tag has the same name", key=True)
            driver = self.drivers.get(method.device)
            if method.device not in self.raw_devices:
                hint = did_you_mean(method.device, self.raw_devices)
                self.add(
                    (*loc, "device"),
                    "unknown-device",
                    f"method {name}: unknown device {method.device!r}{hint}",
                )
            elif driver is not None and driver != "opcua":
                self.add(
                    (*loc, "device"),
                    "wrong-driver",
                    f"method {name}: device {method.device} is {driver}; "
                    "methods need an OPC UA device",
                )

    def _kinds(self) -> dict[str, expr.Kind | None]:
        """What each tag yields in an expression (None: the tag's own entry is invalid)."""
        kinds: dict[str, expr.Kind | None] = dict.fromkeys(self.raw_tags)
        kinds.update({name: expr.kind_of(tag.datatype) for name, tag in self.tags.items()})
        return kinds

    def _check_condition(self, loc: tuple[str | int, ...], subject: str, when: object) -> None:
        """A condition over the cell's tags (`when` of an interlock or of `ready`)."""
        if not isinstance(when, str) or not when:
            return  # reported by pydantic
        for error in _expression_problems(when, self._kinds()):
            self.add(
                loc,
                "expression",
                f"{subject}: when: {error.message}",
                col_offset=scalar_offset(when, error.col),
            )

    def check_interlocks(self) -> None:
        raw = self.data.get("interlocks")
        if not isinstance(raw, list):
            return
        names: dict[str, int] = {}
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                continue  # reported by pydantic
            loc: tuple[str | int, ...] = ("interlocks", index)
            name, when = item.get("name"), item.get("when")
            subject = f"interlock {name}" if isinstance(name, str) else f"interlock #{index + 1}"
            if isinstance(name, str) and name in names:
                first = self.doc.position(("interlocks", names[name]))[0]
                self.add(
                    (*loc, "name"),
                    "duplicate-name",
                    f"{subject}: name used twice (first at line {first})",
                )
            if isinstance(name, str):
                names.setdefault(name, index)
            self._check_condition((*loc, "when"), subject, when)

    def check_safe_state(self) -> None:
        self._check_written("safe_state", "the safe state")

    def _check_written(self, section: str, writer: str) -> None:
        """A mapping of rw tags to values of their type, which `writer` writes."""
        raw = self.data.get(section)
        if not isinstance(raw, dict):
            return
        for name, value in raw.items():
            loc: tuple[str | int, ...] = (section, str(name))
            tag = self.tags.get(str(name))
            if str(name) not in self.raw_tags:
                hint = did_you_mean(str(name), self.raw_tags)
                self.add(loc, "unknown-tag", f"{section}: unknown tag {name!r}{hint}", key=True)
            elif tag is None:
                continue
            elif tag.access is not Access.RW:
                self.add(
                    loc,
                    "read-only",
                    f"{section}: tag {name} is read-only; {writer} writes rw tags",
                    key=True,
                )
            else:
                try:
                    tag.check_value(plain(value))
                except BadValue as err:
                    self.add(loc, "bad-value", f"{section} {name}: {err}")

    def check_reset(self) -> None:
        self._check_written("reset", "Resetting")
        raw, beats = self.data.get("reset"), self.data.get("heartbeat")
        if not isinstance(raw, dict) or not isinstance(beats, list):
            return
        for index, beat in enumerate(beats):
            name = beat.get("tag") if isinstance(beat, dict) else None
            if isinstance(name, str) and name in raw:
                self.add(
                    ("reset", name),
                    "heartbeat-in-reset",
                    f"reset: tag {name} is a heartbeat (line "
                    f"{self.line(('heartbeat', index))}); only the heartbeat writes it",
                    key=True,
                )

    def check_ready(self) -> None:
        raw = self.data.get("ready")
        if isinstance(raw, dict):
            self._check_condition(("ready", "when"), "ready", raw.get("when"))

    def check_restore_on_unhold(self) -> None:
        raw = self.data.get("restore_on_unhold")
        safe = self.data.get("safe_state")
        if not isinstance(raw, list):
            return
        safe_tags = {str(t) for t in safe} if isinstance(safe, dict) else set()
        for index, name in enumerate(raw):
            if not isinstance(name, str):
                continue  # the model reports the type
            loc: tuple[str | int, ...] = ("restore_on_unhold", index)
            if name not in self.raw_tags:
                hint = did_you_mean(name, self.raw_tags)
                self.add(loc, "unknown-tag", f"restore_on_unhold: unknown tag {name!r}{hint}")
            elif name not in safe_tags:
                self.add(
                    loc,
                    "not-in-safe-state",
                    f"restore_on_unhold: tag {name} is not in the safe state; only what the "
                    "safe state changed is restored",
                )

    def check_heartbeat(self) -> None:
        raw = self.data.get("heartbeat")
        if not isinstance(raw, list):
            return
        safe = self.data.get("safe_state")
        safe_tags = {str(t) for t in safe} if isinstance(safe, dict) else set()
        watched: dict[str, int] = {}  # device -> index of its first heartbeat
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                continue  # reported by pydantic
            loc: tuple[str | int, ...] = ("heartbeat", index)
            name = item.get("tag")
            if isinstance(name, str):
                self._check_heartbeat_tag(index, name, watched, safe_tags)
            try:
                beat = _HEARTBEAT_ADAPTER.validate_python(item)
            except ValidationError:
                continue  # reported by pydantic
            if beat.period >= beat.timeout:
                self.add(
                    (*loc, "period"),
                    "bad-value",
                    f"heartbeat {beat.tag}: period {format_duration(beat.period)} must be "
                    f"shorter than timeout {format_duration(beat.timeout)} (the device trips "
                    "when the value has not changed for timeout; give it several periods)",
                )

    def _check_heartbeat_tag(
        self, index: int, name: str, watched: dict[str, int], safe_tags: set[str]
    ) -> None:
        loc: tuple[str | int, ...] = ("heartbeat", index, "tag")
        subject = f"heartbeat {name}"
        tag = self.tags.get(name)
        if name not in self.raw_tags:
            hint = did_you_mean(name, self.raw_tags)
            self.add(loc, "unknown-tag", f"{subject}: unknown tag {name!r}{hint}")
            return
        if tag is None:
            return  # the tag's own problems are reported at the tag
        if tag.access is not Access.RW:
            self.add(
                loc,
                "read-only",
                f"{subject}: the tag is read-only; the controller writes its heartbeat: "
                "give the tag access: rw",
            )
        datatype = tag.datatype
        if datatype is not DataType.BOOL and datatype not in INTEGER_TYPES:
            self.add(
                loc,
                "type-mismatch",
                f"{subject}: a heartbeat is a counter (an integer type such as uint16) or a "
                f"toggling bool, not {datatype.value}",
            )
        elif datatype in INTEGER_TYPES and (
            tag.scaled or tag.min is not None or tag.max is not None
        ):
            self.add(
                loc,
                "type-mismatch",
                f"{subject}: a heartbeat counter runs through its type's whole range and wraps: "
                "remove scale, offset, min and max from the tag",
            )
        if name in safe_tags:
            self.add(
                loc,
                "heartbeat-in-safe-state",
                f"{subject}: the tag is also in the safe state (line "
                f"{self.line(('safe_state', name))}); only the heartbeat writes it",
            )
        first = watched.setdefault(tag.device, index)
        if first != index:
            other = self.data["heartbeat"][first].get("tag")
            self.add(
                loc,
                "duplicate-heartbeat",
                f"{subject}: device {tag.device} already has heartbeat {other} (line "
                f"{self.line(('heartbeat', first))}); a device watches one heartbeat",
            )


def host_key(host: str) -> str:
    """A host as compared for conflicts: 'localhost' is 127.0.0.1, case does not matter."""
    host = host.lower().strip("[]")
    return "127.0.0.1" if host == "localhost" else host


def _serial(device: ModbusRtuDevice) -> tuple[int, str, int, int]:
    return device.baudrate, device.parity, device.stopbits, device.bytesize


def _span(tag: Tag) -> tuple[int, int]:
    """The first and one-past-last address a Modbus tag occupies."""
    address = tag.address
    assert address is not None
    if address.table.is_bit_table or address.bit is not None:
        return address.address, address.address + 1
    datatype = tag.datatype
    width = (tag.length or 1) if datatype is DataType.STRING else codecs.register_count(datatype)
    return address.address, address.address + width


def _describe_span(tag: Tag) -> str:
    start, end = _span(tag)
    assert tag.address is not None
    if end - start <= 1:
        return f"{tag.address}, {tag.datatype.value}"
    return f"{tag.address.table.value}:{start}..{end - 1}, {tag.datatype.value}"


def _expression_problems(
    text: str, kinds: dict[str, expr.Kind | None]
) -> list[expr.ExpressionError]:
    try:
        parsed = expr.parse(text)
    except expr.ExpressionError as err:
        return [err]
    return expr.check(parsed, kinds, expect=expr.Kind.BOOL)
