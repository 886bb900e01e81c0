"""Value codecs: validate Python values and convert them to and from 16-bit Modbus registers."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from drivers.base import Reading, Value
from drivers.errors import BadResponse, WriteRejected
from drivers.points import REGISTER_WIDTH, Access, DataType, Point, WordOrder

# Inclusive value range of each integer type.
INT_RANGES: dict[DataType, tuple[int, int]] = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
    DataType.INT64: (-(2**63), 2**63 - 1),
    DataType.UINT64: (0, 2**64 - 1),
}
FLOAT_TYPES = (DataType.FLOAT32, DataType.FLOAT64)
# The largest finite float32, as the decimal a cell file or operator would write.
FLOAT32_MAX = 3.4028235e38

#: struct format (big-endian) of each fixed-width register type.
STRUCT_FORMATS: dict[DataType, str] = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.INT64: ">q",
    DataType.UINT64: ">Q",
    DataType.FLOAT32: ">f",
    DataType.FLOAT64: ">d",
}


def zero_value(datatype: DataType) -> Value:
    """The power-on value of a point of this type (False, 0, 0.0 or '')."""
    if datatype is DataType.BOOL:
        return False
    if datatype is DataType.STRING:
        return ""
    return 0.0 if datatype in FLOAT_TYPES else 0


def _kind(value: object) -> str:
    return type(value).__name__


def check_value(datatype: DataType, value: Value) -> Value:
    """Validate a value for a type and normalise it (3.0 → 3 for ints, 3 → 3.0 for floats)."""
    if datatype is DataType.BOOL:
        # Strict: 0/1 are not booleans, so a recipe that writes 1 to a bool is caught early.
        if not isinstance(value, bool):
            raise WriteRejected(f"value {value!r} is not a bool ({_kind(value)})")
        return value
    if datatype is DataType.STRING:
        if not isinstance(value, str):
            raise WriteRejected(f"value {value!r} is not a string ({_kind(value)})")
        if not value.isascii():
            _check_encodable(value)
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRejected(f"value {value!r} is not a number for {datatype.value}")
    if datatype in FLOAT_TYPES:
        try:
            number = float(value)
        except OverflowError as err:
            raise WriteRejected(f"value {value!r} out of range for {datatype.value}") from err
        if datatype is DataType.FLOAT32 and math.isfinite(number) and abs(number) > FLOAT32_MAX:
            raise WriteRejected(f"value {value!r} out of range for float32 (±{FLOAT32_MAX!r})")
        return number
    if isinstance(value, float):
        if not value.is_integer():
            raise WriteRejected(f"value {value!r} is not an integer for {datatype.value}")
        value = int(value)
    low, high = INT_RANGES[datatype]
    if not low <= value <= high:
        raise WriteRejected(f"value {value} out of range for {datatype.value} ({low}..{high})")
    return value


def _check_encodable(text: str) -> None:
    """WriteRejected for a text no device can hold: a lone surrogate, which is what Python
    makes of bytes that are not UTF-8 (a shell argument, a JSON escape such as \\udcff)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise WriteRejected(
            f"string {text!r} is not valid text: character {err.start + 1} cannot be stored "
            "as UTF-8 (it was read from bytes that were not UTF-8)"
        ) from None


def check_write(where: str, point: Point, value: Value, *, read_only: str) -> Value:
    """`value` checked for writing to an rw point (see check_value); WriteRejected says
    `where`, then why (`read_only` for a point that is not rw)."""
    if point.access is not Access.RW:
        raise WriteRejected(f"{where}: {read_only}")
    try:
        return check_value(point.datatype, value)
    except WriteRejected as err:
        raise WriteRejected(f"{where}: {err}") from err


def register_count(datatype: DataType, length: int = 1) -> int:
    """How many registers a value of this type occupies (`length` for strings)."""
    if datatype is DataType.STRING:
        return length
    return REGISTER_WIDTH[datatype]


def _reorder(data: bytes, word_order: WordOrder) -> bytes:
    """Move between big-endian (ABCD) bytes and a word order; each reordering is its own inverse."""
    if word_order is WordOrder.ABCD:
        return data
    if word_order is WordOrder.DCBA:
        return data[::-1]
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order is WordOrder.CDAB:
        return b"".join(reversed(words))
    return b"".join(word[::-1] for word in words)  # BADC


def _to_registers(data: bytes) -> list[int]:
    return [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]


def _from_registers(registers: Sequence[int]) -> bytes:
    for register in registers:
        if not 0 <= register <= 0xFFFF:
            raise BadResponse(f"register value {register} is not a 16-bit word")
    return b"".join(register.to_bytes(2, "big") for register in registers)


def encode_registers(
    datatype: DataType,
    value: Value,
    word_order: WordOrder = WordOrder.ABCD,
    length: int = 1,
) -> list[int]:
    """The 16-bit registers that carry a value; raises WriteRejected for a value the type refuses.

    Word order applies to every numeric type, including BADC/DCBA byte swaps of 16-bit values;
    strings are UTF-8, two bytes per register, high byte first, NUL-padded to `length`.
    """
    checked = check_value(datatype, value)
    if datatype is DataType.BOOL:
        return [1 if checked else 0]
    if datatype is DataType.STRING:
        assert isinstance(checked, str)
        return _encode_string(checked, length)
    return _to_registers(_reorder(struct.pack(STRUCT_FORMATS[datatype], checked), word_order))


def _encode_string(text: str, length: int) -> list[int]:
    # A NUL would be read back as padding and the value would not round-trip.
    if "\x00" in text:
        raise WriteRejected(f"string {text!r} contains NUL, which Modbus strings use as padding")
    data = text.encode("utf-8")
    if len(data) > 2 * length:
        raise WriteRejected(
            f"string {text!r} is {len(data)} bytes, more than the {2 * length} bytes "
            f"of {length} registers"
        )
    return _to_registers(data.ljust(2 * length, b"\x00"))


def decode_registers(
    datatype: DataType,
    registers: Sequence[int],
    word_order: WordOrder = WordOrder.ABCD,
) -> Value:
    """The value carried by registers (inverse of encode_registers); raises BadResponse."""
    if datatype is DataType.STRING:
        if not registers:
            raise BadResponse("no registers for a string")
        data = _from_registers(registers).rstrip(b"\x00")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise BadResponse(f"string registers are not valid UTF-8: {data!r}") from err
    expected = REGISTER_WIDTH[datatype]
    if len(registers) != expected:
        raise BadResponse(f"{datatype.value} needs {expected} registers, got {len(registers)}")
    data = _from_registers(registers)
    if datatype is DataType.BOOL:
        return data != b"\x00\x00"
    (number,) = struct.unpack(STRUCT_FORMATS[datatype], _reorder(data, word_order))
    if datatype is DataType.FLOAT32:
        return shortest_float32(number)
    result: int | float = number
    return result


# The smallest normal float32; below it the steps are wider relative to the value.
_FLOAT32_MIN_NORMAL = 2.0**-126
# Bound once: shortest_float32 runs for every float32 of every poll cycle.
_FLOAT32 = struct.Struct(">f")
_pack_float32 = _FLOAT32.pack  # rounds to the nearest float32
_unpack_float32 = _FLOAT32.unpack
# "%.{n}g" for 1..9 significant digits; from 6 for a normal float32 (see shortest_float32).
_DIGITS = tuple(f"%.{digits}g" for digits in range(1, 10))
_NORMAL_DIGITS = _DIGITS[5:]


def shortest_float32(x: float) -> float:
    """The shortest decimal that rounds to the same float32 as x (41.5, not 41.500000381).

    x must be within float32 range (or be inf/NaN, returned as is).
    """
    if not math.isfinite(x):
        return x
    bits = _pack_float32(x)
    (exact,) = _unpack_float32(bits)
    # A normal float32 is within 2**-24 of itself relative, far less than half a step of
    # 6 significant digits: a shorter decimal that round-trips is what 6 digits give, so
    # 6 digits decide whether any of 1..6 does and give the same value.
    formats = _NORMAL_DIGITS if abs(exact) >= _FLOAT32_MIN_NORMAL else _DIGITS
    for digits in formats:
        candidate = float(digits % exact)
        try:
            if _pack_float32(candidate) == bits:
                return candidate
        except OverflowError:  # near ±FLOAT32_MAX a short decimal can round past the range
            continue
    return float(exact)  # unreachable: 9 significant digits always round-trip a float32


def _check_bit(bit: int) -> None:
    if not 0 <= bit <= 15:
        raise ValueError(f"bit {bit} is not in 0..15")


def get_bit(register: int, bit: int) -> bool:
    """Bit `bit` of a register (bit 0 is the least significant)."""
    _check_bit(bit)
    return bool((register >> bit) & 1)


def set_bit(register: int, bit: int, value: bool) -> int:
    """The register with bit `bit` set to value (bit 0 is the least significant)."""
    _check_bit(bit)
    mask = 1 << bit
    return (register | mask) if value else (register & ~mask & 0xFFFF)


def format_value(value: Value | None) -> str:
    """A value for display: 'true'/'false', shortest round-trip floats, '—' for no value."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def same_value(a: Value | None, b: Value | None) -> bool:
    """Equal values of the same type; NaN equals NaN (re-reading NaN is not a change)."""
    if type(a) is not type(b):
        return False
    # Of the value types only a NaN float differs from itself.
    return a == b or (a != a and b != b)


def same_reading(a: Reading, b: Reading) -> bool:
    """Same quality and the same value of the same type (NaN equals NaN)."""
    return a.quality is b.quality and same_value(a.value, b.value)
