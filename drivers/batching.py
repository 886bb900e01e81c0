"""Read planning: merge Modbus points into as few requests as the protocol and device allow."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from drivers.base import Value
from drivers.codecs import STRUCT_FORMATS, decode_registers, get_bit, shortest_float32
from drivers.errors import BadResponse
from drivers.points import DataType, ModbusPoint, ModbusTable, WordOrder

# Protocol limits of one read request (Modbus Application Protocol v1.1b3 §6.1–6.4).
MAX_REGISTERS = 125
MAX_BITS = 2000


@dataclass(frozen=True)
class ReadBlock:
    """One read request: a table, the first address, how many addresses, the points it serves."""

    table: ModbusTable
    start: int
    count: int
    points: tuple[ModbusPoint, ...]

    @property
    def end(self) -> int:
        """One past the last address the block reads."""
        return self.start + self.count

    def decode(self, data: Sequence[int] | Sequence[bool]) -> list[Value | BadResponse]:
        """Every point's value out of the block's response data, in `points` order; a point
        that cannot be decoded gets the BadResponse decode_point would raise for it."""
        registers = b""
        try:
            if len(data) < self.count:
                raise BadResponse("short")
            if not self.table.is_bit_table:
                # One conversion for the block, which also checks every word is 16-bit.
                registers = self._words.pack(*data)
        except (BadResponse, struct.error):
            # A short answer or a bad word: each point on its own, as decode_point judges it.
            return [_decode_or_error(p, self, data) for p in self.points]
        values: list[Value | BadResponse] = []
        for decode in self._decoders:
            try:
                values.append(decode(data, registers))
            except BadResponse as err:
                values.append(err)
        return values

    @cached_property
    def _words(self) -> struct.Struct:
        """The block's registers as big-endian bytes."""
        return struct.Struct(f">{self.count}H")

    @cached_property
    def _decoders(self) -> tuple[_Decode, ...]:
        """Each point's decoder, its offset, width and codec worked out once per plan."""
        return tuple(_decoder(point, self) for point in self.points)


#: One point's value from its block's answer: (the answer's values, its registers as
#: big-endian bytes — empty for a bit table) -> the value; raises BadResponse.
_Decode = Callable[[Sequence[int] | Sequence[bool], bytes], Value]

# struct codes of the fixed-width register types (codecs' big-endian formats, without the order).
_CODES: dict[DataType, str] = {datatype: code[1:] for datatype, code in STRUCT_FORMATS.items()}


def _decoder(point: ModbusPoint, block: ReadBlock) -> _Decode:
    """A point's decoder for `block`, equal in every result to decode_point's."""
    offset = point.address - block.start
    if point.table is not block.table or offset < 0 or point.end > block.end:
        raise ValueError(f"{point.describe()} is not inside the block {block}")
    if point.table.is_bit_table:
        return lambda data, registers: bool(data[offset])
    bit = point.bit
    if bit is not None:
        if not 0 <= bit <= 15:
            return lambda data, registers: get_bit(int(data[offset]), bit)  # raises ValueError
        mask = 1 << bit
        return lambda data, registers: bool(int(data[offset]) & mask)
    datatype = point.datatype
    if datatype is DataType.BOOL:
        return lambda data, registers: int(data[offset]) != 0
    code = _CODES.get(datatype)
    if code is None:  # a string: rare, decoded as decode_point does
        return lambda data, registers: decode_point(point, block, data)
    order = point.word_order
    if point.width == 1 and order in (WordOrder.CDAB, WordOrder.BADC):
        # One word: swapping words changes nothing, swapping bytes is reversing them all.
        order = WordOrder.ABCD if order is WordOrder.CDAB else WordOrder.DCBA
    at = 2 * offset
    if order in (WordOrder.ABCD, WordOrder.DCBA):
        # DCBA is every byte reversed: the same bytes read little-endian.
        unpack_from = struct.Struct(("<" if order is WordOrder.DCBA else ">") + code).unpack_from
        if datatype is DataType.FLOAT32:
            return lambda data, registers: shortest_float32(unpack_from(registers, at)[0])
        return lambda data, registers: unpack_from(registers, at)[0]
    # CDAB: the words in reverse order. BADC: the bytes of each word swapped, which is the words
    # in reverse order read little-endian.
    end = at + 2 * point.width
    unpack = struct.Struct(("<" if order is WordOrder.BADC else ">") + code).unpack
    if datatype is DataType.FLOAT32:
        return lambda data, registers: shortest_float32(unpack(_swap_words(registers[at:end]))[0])
    return lambda data, registers: unpack(_swap_words(registers[at:end]))[0]


def _swap_words(data: bytes) -> bytes:
    """The 16-bit words of `data` in reverse order."""
    return b"".join(data[i : i + 2] for i in range(len(data) - 2, -1, -2))


def _decode_or_error(
    point: ModbusPoint, block: ReadBlock, data: Sequence[int] | Sequence[bool]
) -> Value | BadResponse:
    """decode_point's value, or the BadResponse it raises."""
    try:
        return decode_point(point, block, data)
    except BadResponse as err:
        return err


@dataclass(frozen=True)
class ReadPlan:
    """The read blocks of a set of points, and each point's place in the readings of a cycle:
    the blocks' points one after another, so a cycle's readings are a list, not a mapping."""

    blocks: tuple[ReadBlock, ...]
    #: Every point of the blocks, in block order: reading i of a cycle is point i's.
    points: tuple[ModbusPoint, ...] = field(init=False)
    _index: dict[ModbusPoint, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        points = tuple(itertools.chain.from_iterable(b.points for b in self.blocks))
        object.__setattr__(self, "points", points)
        # Equal points are one point: the first place wins, as a mapping by point would.
        index: dict[ModbusPoint, int] = {}
        for place, point in enumerate(points):
            index.setdefault(point, place)
        object.__setattr__(self, "_index", index)

    def places(self, points: Sequence[ModbusPoint]) -> tuple[int, ...] | None:
        """Where each of `points` is in a cycle's readings; None when one is not planned."""
        index = self._index
        if any(point not in index for point in points):
            return None
        return tuple(index[point] for point in points)


def plan(points: Sequence[ModbusPoint], max_gap: int = 0) -> ReadPlan:
    """The read plan of distinct points (equal points once); see plan_reads."""
    return ReadPlan(tuple(plan_reads(list(dict.fromkeys(points)), max_gap)))


def max_count(table: ModbusTable) -> int:
    """The most addresses one read request of this table may cover."""
    return MAX_BITS if table.is_bit_table else MAX_REGISTERS


def plan_reads(points: Sequence[ModbusPoint], max_gap: int = 0) -> list[ReadBlock]:
    """Group points into read blocks: per table, by address, merging across gaps ≤ max_gap.

    Blocks come in table order (coil, di, hr, ir), then by address. A point wider than one
    request allows raises ValueError (cell file validation keeps such points out).
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    blocks: list[ReadBlock] = []
    for table in ModbusTable:
        limit = max_count(table)
        # Sorting by (address, end) keeps the block end monotonic; ties keep input order.
        ordered = sorted((p for p in points if p.table is table), key=lambda p: (p.address, p.end))
        start = end = 0
        members: list[ModbusPoint] = []
        for point in ordered:
            if point.width > limit:
                raise ValueError(
                    f"{point.name} ({point.describe()}) spans {point.width} addresses, "
                    f"more than the {limit} one request can read"
                )
            new_end = max(end, point.end)
            if members and point.address - end <= max_gap and new_end - start <= limit:
                members.append(point)
                end = new_end
                continue
            if members:
                blocks.append(ReadBlock(table, start, end - start, tuple(members)))
            start, end, members = point.address, point.end, [point]
        if members:
            blocks.append(ReadBlock(table, start, end - start, tuple(members)))
    return blocks


def decode_point(
    point: ModbusPoint, block: ReadBlock, data: Sequence[int] | Sequence[bool]
) -> Value:
    """A point's value out of its block's response data; raises BadResponse naming the address."""
    offset = point.address - block.start
    if point.table is not block.table or offset < 0 or point.end > block.end:
        raise ValueError(f"{point.describe()} is not inside the block {block}")
    # Bit reads come back padded to whole bytes, so only a short answer is an error.
    if len(data) < offset + point.width:
        raise BadResponse(
            f"{point.describe()}: response has {len(data)} values, "
            f"expected at least {block.count} from {block.table.value}:{block.start}"
        )
    if point.table.is_bit_table:
        return bool(data[offset])
    if point.bit is not None:
        return get_bit(int(data[offset]), point.bit)
    registers = [int(word) for word in data[offset : offset + point.width]]
    try:
        return decode_registers(point.datatype, registers, point.word_order)
    except BadResponse as err:
        raise BadResponse(f"{point.describe()}: {err}") from err
