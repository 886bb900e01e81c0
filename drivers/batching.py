"""Read planning: merge Modbus points into as few requests as the protocol and device allow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.base import Value
from drivers.codecs import decode_registers, get_bit
from drivers.errors import BadResponse
from drivers.points import ModbusPoint, ModbusTable

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
