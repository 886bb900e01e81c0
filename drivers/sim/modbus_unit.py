"""One simulated Modbus unit: its points as pymodbus tables, and values to and from them."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence

from pymodbus.server import ModbusBaseServer
from pymodbus.simulator import DataType as SimType
from pymodbus.simulator import SimAction, SimData, SimDevice

from drivers.base import Value
from drivers.codecs import decode_registers, encode_registers, get_bit, set_bit
from drivers.errors import BadResponse
from drivers.points import DataType, ModbusPoint, ModbusTable
from drivers.sim.image import ProcessImage

log = logging.getLogger("drivers.sim")

# The function codes pymodbus's simulator accepts, by the table they address.
_FC_TABLE: dict[int, ModbusTable] = {
    1: ModbusTable.COIL,
    5: ModbusTable.COIL,
    15: ModbusTable.COIL,
    2: ModbusTable.DISCRETE_INPUT,
    3: ModbusTable.HOLDING_REGISTER,
    6: ModbusTable.HOLDING_REGISTER,
    16: ModbusTable.HOLDING_REGISTER,
    22: ModbusTable.HOLDING_REGISTER,
    23: ModbusTable.HOLDING_REGISTER,
    4: ModbusTable.INPUT_REGISTER,
}
# The function code publish() uses to write each table from the model side.
_WRITE_FC: dict[ModbusTable, int] = {
    ModbusTable.COIL: 15,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 16,
    ModbusTable.INPUT_REGISTER: 4,
}
# The function code that reads a register table (to change one bit of a word in place).
_READ_REGISTERS_FC: dict[ModbusTable, int] = {
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}
# Bit reads whose exact count the action hook needs (it is only told the 16-bit words).
_READ_BITS = (1, 2)
# Bit reads seen by the server's PDU trace and not yet checked by the hook, per unit (bounded:
# a request that pymodbus refuses before the hook leaves its entry behind).
_PENDING_READS = 64
# pymodbus's 4-tuple layout order: separate coils, discrete inputs, holding and input registers.
_TUPLE_ORDER = (
    ModbusTable.COIL,
    ModbusTable.DISCRETE_INPUT,
    ModbusTable.HOLDING_REGISTER,
    ModbusTable.INPUT_REGISTER,
)
# pymodbus needs at least one block per table and bit blocks cannot be marked invalid, so a
# table without points gets one 16-bit block at the very top of the address space.
_UNUSED_BITS_START = 65520


def table_of(function_code: int) -> ModbusTable | None:
    """The table a request's function code addresses (None for one the simulator has none of)."""
    return _FC_TABLE.get(function_code)


class ModbusUnit:
    """One simulated Modbus unit: its image and its points by table."""

    def __init__(self, unit: int, image: ProcessImage) -> None:
        if not 1 <= unit <= 247:
            raise ValueError(f"{image.device}: Modbus unit id {unit} is not in 1..247")
        self.unit = unit
        self.image = image
        self.points = image.points_of(ModbusPoint, "a Modbus point")
        self.by_table: dict[ModbusTable, list[ModbusPoint]] = {t: [] for t in ModbusTable}
        for point in self.points.values():
            self.by_table[point.table].append(point)
        #: The coil and discrete input addresses a point defines; the others answer exception 2.
        self.bits = {
            t: frozenset(p.address for p in self.by_table[t]) for t in ModbusTable if t.is_bit_table
        }
        #: (function code, address, count) of bit reads on their way to the action hook.
        self.pending_reads: deque[tuple[int, int, int]] = deque(maxlen=_PENDING_READS)

    def note_request(self, function_code: int, address: int, count: int) -> None:
        """Remember a bit read's exact span for the action hook, which is told only words."""
        if function_code in _READ_BITS:
            self.pending_reads.append((function_code, address, count))

    def bit_span(
        self, function_code: int, address: int, words: int, values: Sequence[object] | None
    ) -> range:
        """The bit addresses a request touches; the hook is told words, not bits, for reads."""
        if values is not None:
            return range(address, address + len(values))
        if function_code not in _READ_BITS:
            return range(address, address + 1)  # fc 5 reads its one coil back
        while self.pending_reads:
            # Requests reach the hook in the order they were traced: older entries are of
            # requests pymodbus refused before the hook, and are dropped.
            fc, start, count = self.pending_reads.popleft()
            if (fc, start) == (function_code, address) and (start % 16 + count + 15) // 16 == words:
                return range(start, start + count)
        return range(address, address + 1)  # not traced: check the address we know

    def sim_device(self, action: SimAction) -> SimDevice:
        """A pymodbus device with four separate tables (coil 0 and hr 0 do not alias)."""
        c, d, h, i = (_table_blocks(t, self.by_table[t]) for t in _TUPLE_ORDER)
        return SimDevice(id=self.unit, simdata=(c, d, h, i), action=action)

    def copy_client_write(
        self,
        table: ModbusTable,
        start_address: int,
        address: int,
        registers: list[int],
        values: list[int] | list[bool],
    ) -> None:
        """Copy the values a client is writing into the image, for every point the range touches.

        Called by the hook before pymodbus stores the write; `registers` is the table block
        as it is now (starting at `start_address`), `values` what the client writes.
        """
        end = address + len(values)
        for point in self.by_table[table]:
            if point.end <= address or point.address >= end:
                continue
            if table is ModbusTable.COIL:
                value: Value = bool(values[point.address - address])
            else:
                words = [
                    int(values[a - address]) if address <= a < end else registers[a - start_address]
                    for a in range(point.address, point.end)
                ]
                try:
                    value = _register_value(point, words)
                except BadResponse as err:
                    log.warning(
                        "%s %s: client wrote %s: %s", self.image.device, point.name, words, err
                    )
                    continue
            self.image.accept_client_write(point.name, value)

    async def store(self, server: ModbusBaseServer, values: dict[str, Value]) -> None:
        """Encode values into this unit's tables on a running server (the model side)."""
        for tag, value in values.items():
            point = self.points[tag]
            fc = _WRITE_FC[point.table]
            if point.table.is_bit_table:
                await server.async_setValues(self.unit, fc, point.address, [bool(value)])
            elif point.bit is not None:
                # Several bit points share a register: change only this bit.
                read = _READ_REGISTERS_FC[point.table]  # this point's own table
                (word,) = await server.async_getValues(self.unit, read, point.address, 1)
                word = set_bit(int(word), point.bit, bool(value))
                await server.async_setValues(self.unit, fc, point.address, [word])
            else:
                words = encode_registers(point.datatype, value, point.word_order, point.length)
                await server.async_setValues(self.unit, fc, point.address, words)


def _merged_ranges(points: Iterable[ModbusPoint]) -> list[tuple[int, int]]:
    """The address ranges [start, end) the points occupy, overlapping/adjacent ones merged."""
    ranges: list[tuple[int, int]] = []
    for start, end in sorted((p.address, p.end) for p in points):
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    return ranges


def _table_blocks(table: ModbusTable, points: Sequence[ModbusPoint]) -> list[SimData]:
    """pymodbus blocks defining exactly the addresses the points use (others answer exception 2)."""
    ranges = _merged_ranges(points)
    # count=1 with a list of values: pymodbus multiplies list length by count when it checks
    # for overlaps, so count=N would make neighbouring blocks look overlapping.
    if table.is_bit_table:
        if not ranges:
            return [SimData(_UNUSED_BITS_START, values=[False] * 16, datatype=SimType.BITS)]
        return [SimData(s, values=[False] * (e - s), datatype=SimType.BITS) for s, e in ranges]
    if not ranges:
        return [SimData(0, count=1, datatype=SimType.INVALID)]
    return [SimData(s, values=[0] * (e - s), datatype=SimType.REGISTERS) for s, e in ranges]


def _register_value(point: ModbusPoint, words: list[int]) -> Value:
    """The value of a register point from its registers."""
    if point.bit is not None:
        return get_bit(words[0], point.bit)
    if point.datatype is DataType.BOOL:
        return words[0] != 0
    return decode_registers(point.datatype, words, point.word_order)
