"""Point specs: the driver-level description of one value, built by cellctl/tags.py."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property


class DataType(enum.StrEnum):
    """The value types a point can carry."""

    BOOL = "bool"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    INT64 = "int64"
    UINT64 = "uint64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"
    STRING = "string"


class WordOrder(enum.StrEnum):
    """Byte/word order of multi-register values; ABCD is big-endian, high word first."""

    ABCD = "ABCD"
    CDAB = "CDAB"
    BADC = "BADC"
    DCBA = "DCBA"


class Access(enum.StrEnum):
    """Whether the controller may write a point."""

    RO = "ro"
    RW = "rw"


class ModbusTable(enum.StrEnum):
    """The four Modbus data tables."""

    COIL = "coil"
    DISCRETE_INPUT = "di"
    HOLDING_REGISTER = "hr"
    INPUT_REGISTER = "ir"

    @property
    def is_bit_table(self) -> bool:
        """True for coils and discrete inputs (one bit per address)."""
        return self in (ModbusTable.COIL, ModbusTable.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        """True for the tables a client may write (coils and holding registers)."""
        return self in (ModbusTable.COIL, ModbusTable.HOLDING_REGISTER)


# Registers a value of each type occupies; string points carry their own length.
REGISTER_WIDTH: dict[DataType, int] = {
    DataType.BOOL: 1,
    DataType.INT16: 1,
    DataType.UINT16: 1,
    DataType.INT32: 2,
    DataType.UINT32: 2,
    DataType.FLOAT32: 2,
    DataType.INT64: 4,
    DataType.UINT64: 4,
    DataType.FLOAT64: 4,
}


@dataclass(frozen=True)
class ModbusPoint:
    """One value on a Modbus device: table, zero-based address, optional bit, type, word order."""

    name: str
    table: ModbusTable
    address: int
    datatype: DataType = DataType.UINT16
    bit: int | None = None
    word_order: WordOrder = WordOrder.ABCD
    access: Access = Access.RO
    length: int = 1  # registers, for strings only

    # Cached: read planning and decoding ask for it many times, and the fields never change.
    @cached_property
    def width(self) -> int:
        """How many addresses (registers or bits) the point occupies."""
        if self.table.is_bit_table or self.bit is not None:
            return 1
        if self.datatype is DataType.STRING:
            return self.length
        return REGISTER_WIDTH[self.datatype]

    @property
    def end(self) -> int:
        """One past the last address the point occupies."""
        return self.address + self.width

    def describe(self) -> str:
        """The address as written in a cell file, e.g. 'hr:10' or 'hr:3.7'."""
        suffix = f".{self.bit}" if self.bit is not None else ""
        return f"{self.table.value}:{self.address}{suffix}"


@dataclass(frozen=True)
class OpcuaPoint:
    """One OPC UA variable: its NodeId string and data type."""

    name: str
    node_id: str
    datatype: DataType
    access: Access = Access.RO

    def describe(self) -> str:
        """The NodeId as written in a cell file."""
        return self.node_id


@dataclass(frozen=True)
class MemoryPoint:
    """One value of the in-memory driver, addressed by its key."""

    name: str
    key: str
    datatype: DataType = DataType.UINT16
    access: Access = Access.RO

    def describe(self) -> str:
        """The key as written in a cell file."""
        return self.key


Point = ModbusPoint | OpcuaPoint | MemoryPoint


@dataclass(frozen=True)
class MethodArg:
    """One input argument of a method: name and type."""

    name: str
    datatype: DataType


@dataclass(frozen=True)
class MethodSpec:
    """An OPC UA method: the object it lives on, its browse name, arguments and result type."""

    name: str
    object_node: str
    browse_name: str
    args: tuple[MethodArg, ...] = field(default_factory=tuple)
    result: DataType | None = None
