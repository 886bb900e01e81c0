"""The cell file's model: tags, methods, interlocks, heartbeats, ready, and the cell itself."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    Field,
    FiniteFloat,
    PrivateAttr,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from cellctl import expr
from cellctl.cell.devices import Device
from cellctl.cell.fields import (
    STRICT,
    Address,
    BrowseName,
    DeviceName,
    MethodName,
    NodeId,
    NonEmpty,
    PositiveDuration,
    TagName,
)
from cellctl.errors import BadValue, InvalidField
from cellctl.expr import names
from cellctl.yamlload import plain
from drivers import codecs
from drivers.base import Value
from drivers.errors import WriteRejected
from drivers.points import Access, DataType, WordOrder

INTEGER_TYPES = tuple(codecs.INT_RANGES)
# Beyond any type's range; checked first so that float arithmetic never overflows.
_LARGEST = 2**64


# Declared here, not imported: linters then see a pydantic model, whose field defaults are
# copied per instance (not shared class attributes).
class _Entry(BaseModel):
    model_config = STRICT


class Tag(_Entry):
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


class Method(_Entry):
    """An OPC UA method: the object node, its browse name, ordered arguments, result type."""

    device: DeviceName
    node: NodeId
    method: BrowseName
    args: dict[Annotated[str, AfterValidator(names.expression_name("argument"))], DataType] = {}
    result: DataType | None = None
    description: str | None = None


@dataclass(frozen=True)
class LoadContext:
    """What loading hands to the model: the file, and each condition its rules parsed (by text)."""

    source: Path | None
    conditions: Mapping[str, expr.Expression]


class _Conditional(_Entry):
    """An entry whose `when` is a condition over the cell's tags, parsed once."""

    if TYPE_CHECKING:
        when: str
    _condition: expr.Expression | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _take_parsed(self, info: ValidationInfo) -> Self:
        # The rules parsed every condition to check it: the loaded model keeps that parse.
        if isinstance(info.context, LoadContext):
            self._condition = info.context.conditions.get(self.when)
        return self

    @property
    def condition(self) -> expr.Expression:
        """`when`, parsed: while the file was checked, or on first use in a model built in code."""
        if self._condition is None:
            self._condition = expr.parse(self.when)
        return self._condition


class Interlock(_Conditional):
    """A condition watched on every tag update; when true, the action is taken."""

    name: Annotated[str, AfterValidator(names.label("interlock name"))]
    when: NonEmpty
    action: Literal["hold", "stop", "abort"]
    description: str | None = None


class Heartbeat(_Entry):
    """The controller's life signal to one device: written every `period` while the controller
    runs (a counter that wraps, or a bit that toggles); the device's PLC brings its outputs to
    their safe state when the value has not changed for `timeout`."""

    tag: TagName
    period: PositiveDuration
    timeout: PositiveDuration


SafeValue = Annotated[
    Any, BeforeValidator(plain), WithJsonSchema({"type": ["boolean", "number", "string"]})
]


class Ready(_Conditional):
    """What Resetting waits for before the cell is Idle: a condition over the cell's tags,
    true within `timeout` after Resetting's writes (else Resetting stops the cell)."""

    when: NonEmpty
    timeout: PositiveDuration = 10.0


class Cell(_Entry):
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
    _sha256: str | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _take_source(self, info: ValidationInfo) -> Self:
        if isinstance(info.context, LoadContext):
            self._source = info.context.source
        return self

    @property
    def source(self) -> Path | None:
        """The file the cell was loaded from."""
        return self._source

    @property
    def sha256(self) -> str | None:
        """SHA-256 (hex) of the bytes the cell was validated from (None: not from a file)."""
        return self._sha256

    def loaded_from(self, raw: bytes) -> None:
        """Remember the hash of the very bytes this cell was validated from (the record names
        the cell file by it, without reading the file again)."""
        import hashlib

        self._sha256 = hashlib.sha256(raw).hexdigest()

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
        named = self.ready.condition.names if self.ready is not None else frozenset()
        return [t for t in self.tags if t in named]

    @property
    def heartbeat_tags(self) -> list[str]:
        """The heartbeat tags, in cell-file order (only the controller writes them)."""
        return [beat.tag for beat in self.heartbeat]
