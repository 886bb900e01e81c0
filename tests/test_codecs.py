"""Codecs: validation, register encoding per type and word order, bits, display formatting."""

from __future__ import annotations

import contextlib
import math
import struct
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from drivers.base import Value
from drivers.codecs import (
    FLOAT32_MAX,
    INT_RANGES,
    check_value,
    decode_registers,
    encode_registers,
    format_value,
    get_bit,
    register_count,
    set_bit,
    shortest_float32,
    zero_value,
)
from drivers.errors import BadResponse, WriteRejected
from drivers.points import REGISTER_WIDTH, DataType, WordOrder

ABCD, CDAB, BADC, DCBA = WordOrder.ABCD, WordOrder.CDAB, WordOrder.BADC, WordOrder.DCBA
INT_TYPES = list(INT_RANGES)
word_orders = st.sampled_from(list(WordOrder))


def ints_of(datatype: DataType) -> st.SearchStrategy[int]:
    """Every integer the type can hold."""
    low, high = INT_RANGES[datatype]
    return st.integers(low, high)


# --- round trips: every type x every word order ---------------------------------------------


@pytest.mark.parametrize("datatype", INT_TYPES)
@given(data=st.data(), order=word_orders)
def test_integer_round_trip(datatype: DataType, data: st.DataObject, order: WordOrder) -> None:
    value = data.draw(ints_of(datatype))
    registers = encode_registers(datatype, value, order)
    assert len(registers) == register_count(datatype)
    assert all(0 <= r <= 0xFFFF for r in registers)
    decoded = decode_registers(datatype, registers, order)
    assert decoded == value
    assert type(decoded) is int


@given(value=st.floats(width=32), order=word_orders)
def test_float32_round_trip(value: float, order: WordOrder) -> None:
    decoded = decode_registers(
        DataType.FLOAT32, encode_registers(DataType.FLOAT32, value, order), order
    )
    assert isinstance(decoded, float)
    if math.isnan(value):
        assert math.isnan(decoded)
    else:
        assert decoded == shortest_float32(value)
        # Same float32 bits, sign of zero included.
        assert struct.pack(">f", decoded) == struct.pack(">f", value)


@given(value=st.floats(), order=word_orders)
def test_float64_round_trip(value: float, order: WordOrder) -> None:
    decoded = decode_registers(
        DataType.FLOAT64, encode_registers(DataType.FLOAT64, value, order), order
    )
    assert isinstance(decoded, float)
    if math.isnan(value):
        assert math.isnan(decoded)
    else:
        assert struct.pack(">d", decoded) == struct.pack(">d", value)


@given(value=st.booleans(), order=word_orders)
def test_bool_register_round_trip(value: bool, order: WordOrder) -> None:
    registers = encode_registers(DataType.BOOL, value, order)
    assert registers == [int(value)]
    assert decode_registers(DataType.BOOL, registers, order) is value


@given(
    text=st.text(st.characters(blacklist_characters="\x00", blacklist_categories=["Cs"])),
    spare=st.integers(0, 3),
)
def test_string_round_trip(text: str, spare: int) -> None:
    length = (len(text.encode("utf-8")) + 1) // 2 + spare or 1
    registers = encode_registers(DataType.STRING, text, length=length)
    assert len(registers) == length == register_count(DataType.STRING, length)
    assert decode_registers(DataType.STRING, registers) == text


@given(
    register=st.integers(0, 0xFFFF),
    bit=st.integers(0, 15),
    value=st.booleans(),
)
def test_bits(register: int, bit: int, value: bool) -> None:
    changed = set_bit(register, bit, value)
    assert 0 <= changed <= 0xFFFF
    assert get_bit(changed, bit) is value
    # Every other bit is left alone.
    assert changed & ~(1 << bit) == register & ~(1 << bit)


# --- known vectors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value", "order", "registers"),
    [
        (DataType.FLOAT32, 41.5, ABCD, [0x4226, 0x0000]),
        (DataType.FLOAT32, 41.5, CDAB, [0x0000, 0x4226]),
        (DataType.FLOAT32, 41.5, BADC, [0x2642, 0x0000]),
        (DataType.FLOAT32, 41.5, DCBA, [0x0000, 0x2642]),
        (DataType.INT32, -2, ABCD, [0xFFFF, 0xFFFE]),
        (DataType.INT32, -2, CDAB, [0xFFFE, 0xFFFF]),
        (DataType.UINT32, 0x11223344, ABCD, [0x1122, 0x3344]),
        (DataType.UINT32, 0x11223344, CDAB, [0x3344, 0x1122]),
        (DataType.UINT32, 0x11223344, DCBA, [0x4433, 0x2211]),
        (DataType.UINT32, 0x11223344, BADC, [0x2211, 0x4433]),
        (DataType.UINT64, 0x1122334455667788, ABCD, [0x1122, 0x3344, 0x5566, 0x7788]),
        (DataType.UINT64, 0x1122334455667788, CDAB, [0x7788, 0x5566, 0x3344, 0x1122]),
        (DataType.UINT64, 0x1122334455667788, BADC, [0x2211, 0x4433, 0x6655, 0x8877]),
        (DataType.UINT64, 0x1122334455667788, DCBA, [0x8877, 0x6655, 0x4433, 0x2211]),
        (DataType.INT16, -1, ABCD, [0xFFFF]),
        (DataType.UINT16, 0x1234, CDAB, [0x1234]),
        (DataType.UINT16, 0x1234, BADC, [0x3412]),
        (DataType.FLOAT64, 1.0, ABCD, [0x3FF0, 0, 0, 0]),
        (DataType.STRING, "AB", ABCD, [0x4142]),
    ],
)
def test_known_vectors(
    datatype: DataType, value: Value, order: WordOrder, registers: list[int]
) -> None:
    assert encode_registers(datatype, value, order, length=len(registers)) == registers
    assert decode_registers(datatype, registers, order) == value


def test_string_is_nul_padded_high_byte_first() -> None:
    assert encode_registers(DataType.STRING, "abc", length=3) == [0x6162, 0x6300, 0x0000]
    assert decode_registers(DataType.STRING, [0x6162, 0x6300, 0x0000]) == "abc"
    assert encode_registers(DataType.STRING, "é", length=1) == [0xC3A9]


@pytest.mark.parametrize(
    ("registers", "shortest"),
    [([0x4226, 0x0000], 41.5), ([0x3DCC, 0xCCCD], 0.1), ([0x7F7F, 0xFFFF], 3.4028235e38)],
)
def test_float32_decodes_to_shortest_decimal(registers: list[int], shortest: float) -> None:
    decoded = decode_registers(DataType.FLOAT32, registers)
    assert decoded == shortest
    assert repr(decoded) == repr(shortest)


def test_float32_special_values() -> None:
    inf = decode_registers(DataType.FLOAT32, encode_registers(DataType.FLOAT32, -math.inf))
    assert inf == -math.inf
    nan = decode_registers(DataType.FLOAT32, encode_registers(DataType.FLOAT32, math.nan))
    assert isinstance(nan, float) and math.isnan(nan)
    assert repr(shortest_float32(-0.0)) == "-0.0"


# --- cross-check against pymodbus' own codec ------------------------------------------------

PYMODBUS_TYPES = {
    DataType.INT16: ModbusClientMixin.DATATYPE.INT16,
    DataType.UINT16: ModbusClientMixin.DATATYPE.UINT16,
    DataType.INT32: ModbusClientMixin.DATATYPE.INT32,
    DataType.UINT32: ModbusClientMixin.DATATYPE.UINT32,
    DataType.INT64: ModbusClientMixin.DATATYPE.INT64,
    DataType.UINT64: ModbusClientMixin.DATATYPE.UINT64,
    DataType.FLOAT32: ModbusClientMixin.DATATYPE.FLOAT32,
    DataType.FLOAT64: ModbusClientMixin.DATATYPE.FLOAT64,
}
PYMODBUS_ORDERS: dict[WordOrder, Literal["big", "little"]] = {ABCD: "big", CDAB: "little"}


@pytest.mark.parametrize("order", [ABCD, CDAB])
@pytest.mark.parametrize(
    ("datatype", "value"),
    [
        (DataType.INT16, -12345),
        (DataType.UINT16, 54321),
        (DataType.INT32, -2),
        (DataType.UINT32, 0x11223344),
        (DataType.INT64, -(2**62) - 7),
        (DataType.UINT64, 0x1122334455667788),
        (DataType.FLOAT32, 41.5),
        (DataType.FLOAT32, -0.1),
        (DataType.FLOAT64, math.pi),
    ],
)
def test_matches_pymodbus(datatype: DataType, value: Value, order: WordOrder) -> None:
    pm_type, pm_order = PYMODBUS_TYPES[datatype], PYMODBUS_ORDERS[order]
    ours = encode_registers(datatype, value, order)
    assert ours == ModbusClientMixin.convert_to_registers(value, pm_type, word_order=pm_order)
    theirs = ModbusClientMixin.convert_from_registers(ours, pm_type, word_order=pm_order)
    decoded = decode_registers(datatype, ours, order)
    if datatype is DataType.FLOAT32:
        assert decoded == shortest_float32(float(theirs))  # type: ignore[arg-type]
    else:
        assert decoded == theirs


def test_string_matches_pymodbus() -> None:
    ours = encode_registers(DataType.STRING, "PRESS-01", length=4)
    assert ours == ModbusClientMixin.convert_to_registers(
        "PRESS-01", ModbusClientMixin.DATATYPE.STRING
    )


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "value", "message"),
    [
        (DataType.UINT16, 70000, "value 70000 out of range for uint16 (0..65535)"),
        (DataType.UINT16, -1, "out of range for uint16"),
        (DataType.INT16, 32768, "out of range for int16 (-32768..32767)"),
        (DataType.INT16, -32769, "out of range for int16"),
        (DataType.INT32, 2**31, "out of range for int32"),
        (DataType.UINT32, 2**32, "out of range for uint32"),
        (DataType.INT64, 2**63, "out of range for int64"),
        (DataType.UINT64, 2**64, "out of range for uint64"),
        (DataType.UINT64, 1e20, "out of range for uint64"),
        (DataType.INT32, 3.5, "not an integer"),
        (DataType.INT32, math.nan, "not an integer"),
        (DataType.INT32, math.inf, "not an integer"),
        (DataType.INT16, True, "not a number"),
        (DataType.INT16, "12", "not a number"),
        (DataType.FLOAT32, False, "not a number"),
        (DataType.FLOAT64, "1.5", "not a number"),
        (DataType.FLOAT32, 3.5e38, "out of range for float32"),
        (DataType.FLOAT32, -1e39, "out of range for float32"),
        (DataType.FLOAT64, 10**400, "out of range for float64"),
        (DataType.BOOL, 1, "not a bool"),
        (DataType.BOOL, 0, "not a bool"),
        (DataType.BOOL, "true", "not a bool"),
        (DataType.STRING, 5, "not a string"),
    ],
)
def test_check_value_rejects(datatype: DataType, value: Value, message: str) -> None:
    with pytest.raises(WriteRejected, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_value(datatype, value)
    with pytest.raises(WriteRejected):
        encode_registers(datatype, value, length=4)


@pytest.mark.parametrize(
    ("datatype", "value", "normalised"),
    [
        (DataType.INT16, 3.0, 3),
        (DataType.UINT16, 65535, 65535),
        (DataType.UINT64, 2**64 - 1, 2**64 - 1),
        (DataType.FLOAT32, 3, 3.0),
        (DataType.FLOAT32, FLOAT32_MAX, FLOAT32_MAX),
        (DataType.FLOAT32, math.inf, math.inf),
        (DataType.FLOAT64, 1e300, 1e300),
        (DataType.BOOL, True, True),
        (DataType.STRING, "", ""),
    ],
)
def test_check_value_normalises(datatype: DataType, value: Value, normalised: Value) -> None:
    result = check_value(datatype, value)
    assert result == normalised
    assert type(result) is type(normalised)


def test_check_value_accepts_nan_for_floats() -> None:
    result = check_value(DataType.FLOAT64, math.nan)
    assert isinstance(result, float) and math.isnan(result)


def test_string_too_long_or_with_nul_is_rejected() -> None:
    with pytest.raises(WriteRejected, match="5 bytes, more than the 4 bytes of 2 registers"):
        encode_registers(DataType.STRING, "abcde", length=2)
    # Multi-byte characters count in bytes: 3 × 2 bytes do not fit 2 registers.
    with pytest.raises(WriteRejected, match="6 bytes"):
        encode_registers(DataType.STRING, "ééé", length=2)
    with pytest.raises(WriteRejected, match="NUL"):
        encode_registers(DataType.STRING, "a\x00", length=2)


# --- bad responses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "registers"),
    [
        (DataType.FLOAT32, [0x4226]),
        (DataType.INT32, [1, 2, 3]),
        (DataType.UINT64, [1, 2]),
        (DataType.UINT16, []),
        (DataType.BOOL, [0, 1]),
        (DataType.STRING, []),
    ],
)
def test_wrong_register_count_is_bad_response(datatype: DataType, registers: list[int]) -> None:
    with pytest.raises(BadResponse):
        decode_registers(datatype, registers)


def test_register_out_of_16_bits_is_bad_response() -> None:
    with pytest.raises(BadResponse, match="70000"):
        decode_registers(DataType.UINT16, [70000])


def test_invalid_utf8_is_bad_response() -> None:
    with pytest.raises(BadResponse, match="UTF-8"):
        decode_registers(DataType.STRING, [0xFFFE, 0x0000])


def test_bool_register_nonzero_is_true() -> None:
    assert decode_registers(DataType.BOOL, [0x0100]) is True
    assert decode_registers(DataType.BOOL, [0]) is False


# --- bits, counts, zero values, display -----------------------------------------------------


def test_bit_numbering_is_lsb_first() -> None:
    assert get_bit(0b1000_0000_0000_0001, 0) is True
    assert get_bit(0b1000_0000_0000_0001, 15) is True
    assert get_bit(0b1000_0000_0000_0001, 1) is False
    assert set_bit(0, 3, True) == 8
    assert set_bit(0xFFFF, 15, False) == 0x7FFF
    with pytest.raises(ValueError, match="bit 16"):
        get_bit(0, 16)
    with pytest.raises(ValueError, match="bit -1"):
        set_bit(0, -1, True)


def test_register_count() -> None:
    for datatype, width in REGISTER_WIDTH.items():
        assert register_count(datatype) == width
    assert register_count(DataType.STRING, 10) == 10
    assert register_count(DataType.FLOAT64, 10) == 4


@pytest.mark.parametrize("datatype", list(DataType))
def test_zero_value_is_valid_and_encodes_to_zeros(datatype: DataType) -> None:
    zero = zero_value(datatype)
    assert check_value(datatype, zero) == zero
    assert set(encode_registers(datatype, zero, length=2)) == {0}


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, "—"),
        (True, "true"),
        (False, "false"),
        (41.5, "41.5"),
        (0.1, "0.1"),
        (1e20, "1e+20"),
        (math.nan, "nan"),
        (-7, "-7"),
        ("PRESS-01", "PRESS-01"),
    ],
)
def test_format_value(value: Value | None, text: str) -> None:
    assert format_value(value) == text


@given(bits=st.integers(0, 2**32 - 1))
def test_float32_decodes_to_the_shortest_round_tripping_decimal(bits: int) -> None:
    # Any float32 bit pattern, subnormals and the largest values included.
    (exact,) = struct.unpack(">f", bits.to_bytes(4, "big"))
    if not math.isfinite(exact):
        return
    shortest = shortest_float32(exact)
    assert struct.pack(">f", shortest) == struct.pack(">f", exact)
    digits = len(f"{shortest:.9e}".split("e")[0].replace("-", "").replace(".", "").rstrip("0"))
    for fewer in range(1, digits):
        candidate = float(f"{exact:.{fewer}g}")
        with contextlib.suppress(OverflowError):
            assert struct.pack(">f", candidate) != struct.pack(">f", exact), (exact, fewer)
