"""Fuzzing the codecs (drivers/codecs.py): any value, any words, every type and word order.

test_codecs.py proves each type's round trip from a valid value; test_batching.py that the
poll's block decoding agrees with decode_point. Here the inputs are anything: values of every
Python kind for every type, word lists of any length and width, register bits. Only the
drivers' own errors come out (WriteRejected, BadResponse), and what a device holds comes back
unchanged through the whole loop a person sees: decoded, shown, typed back, encoded.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cellctl import textvalue
from cellctl.errors import BadValue
from drivers.base import Value
from drivers.codecs import (
    check_value,
    decode_registers,
    encode_registers,
    get_bit,
    register_count,
    same_value,
    set_bit,
)
from drivers.errors import BadResponse, WriteRejected
from drivers.points import REGISTER_WIDTH, DataType, WordOrder
from tests.fuzz_corpus import cases

TYPES = st.sampled_from(list(DataType))
ORDERS = st.sampled_from(list(WordOrder))
# Values of every kind a recipe, a parameter or a bug could hand the codec.
ANY_VALUE: st.SearchStrategy[Any] = st.one_of(
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=12),
    st.text(st.characters(exclude_categories=()), max_size=6),  # lone surrogates too
    st.sampled_from([2**64, 2**64 - 1, -(2**63) - 1, 10**400, 3.4028235e38, 3.4028236e38]),
    st.sampled_from([5e-324, 1e-45, -0.0, math.nan, math.inf, "\x00", "é" * 3]),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
# Words a device (or a broken gateway) answers: 16-bit mostly, out of range sometimes.
WORD = st.one_of(st.integers(0, 0xFFFF), st.sampled_from([0, 0xFFFF, 0x7FC0, 0x7F80, 0x8000]))
ANY_WORD = st.one_of(WORD, WORD, st.integers(-(2**17), 2**17))


def encode_any(datatype: DataType, value: Any, order: WordOrder, length: int) -> None:
    """Encoding gives `register_count` 16-bit words that decode to the checked value, or
    WriteRejected."""
    try:
        words = encode_registers(datatype, value, order, length)
    except WriteRejected as err:
        assert str(err)
        return
    assert len(words) == register_count(datatype, length)
    assert all(isinstance(word, int) and 0 <= word <= 0xFFFF for word in words)
    decoded = decode_registers(datatype, words, order)
    checked = check_value(datatype, value)
    if datatype is DataType.FLOAT32 and isinstance(checked, float) and math.isfinite(checked):
        # Rounded to the nearest float32 on the way: the decoded value encodes the same.
        assert encode_registers(datatype, decoded, order) == words
    else:
        assert same_value(decoded, checked), (value, decoded)


def decode_any(datatype: DataType, words: list[int], order: WordOrder) -> None:
    """Decoding gives a value of the type or BadResponse; a value read from a device, shown
    to a person and typed back, writes the very words it was read from."""
    try:
        value = decode_registers(datatype, words, order)
    except BadResponse as err:
        assert str(err)
        return
    assert all(0 <= word <= 0xFFFF for word in words)
    length = len(words)
    if datatype is not DataType.STRING:
        assert length == REGISTER_WIDTH[datatype]
    if isinstance(value, float) and not math.isfinite(value):
        assert datatype in (DataType.FLOAT32, DataType.FLOAT64)
        return  # NaN and infinities cannot be typed: `write` refuses them as out of range
    text = textvalue.show(value, datatype)
    try:
        typed = textvalue.parse(text, datatype)
    except BadValue as err:
        raise AssertionError(f"{value!r} is shown as {text!r}, which is refused: {err}") from None
    if datatype is DataType.BOOL:
        assert typed is value  # any nonzero word reads true; true writes 1
        return
    if isinstance(typed, str) and "\x00" in typed:
        # A NUL inside a device's text: read as it is, refused on write (NUL is padding).
        with pytest.raises(WriteRejected, match="NUL"):
            encode_registers(datatype, typed, order, length)
        return
    written = encode_registers(datatype, typed, order, length)
    if datatype is DataType.STRING:
        # Trailing NULs are padding: the text writes the same words, padded again.
        assert written == words, (words, value)
    else:
        assert written == words, (words, value, text)


def bits_any(word: int, bit: int, flag: bool) -> None:
    """get_bit/set_bit: bits 0..15 of 16-bit words; any other bit is a ValueError."""
    if not 0 <= bit <= 15:
        with pytest.raises(ValueError, match=r"not in 0\.\.15"):
            get_bit(word, bit)
        with pytest.raises(ValueError, match=r"not in 0\.\.15"):
            set_bit(word, bit, flag)
        return
    changed = set_bit(word, bit, flag)
    assert 0 <= changed <= 0xFFFF
    assert get_bit(changed, bit) is flag
    assert changed & ~(1 << bit) == word & ~(1 << bit) & 0xFFFF


@given(datatype=TYPES, value=ANY_VALUE, order=ORDERS, length=st.integers(1, 4))
@example(DataType.FLOAT32, 3.4028235677973366e38, WordOrder.ABCD, 1)  # rounds past float32
@example(DataType.UINT64, 2**64 - 1, WordOrder.DCBA, 1)
@example(DataType.INT16, True, WordOrder.ABCD, 1)
@example(DataType.STRING, "ab\x00", WordOrder.ABCD, 2)
@example(DataType.STRING, "\ud800", WordOrder.ABCD, 2)
@settings(max_examples=300)
def test_fuzz_encode_any_value(
    datatype: DataType, value: Any, order: WordOrder, length: int
) -> None:
    encode_any(datatype, value, order, length)


@given(datatype=TYPES, words=st.lists(ANY_WORD, max_size=6), order=ORDERS)
@example(DataType.FLOAT32, [0x7F7F, 0xFFFF], WordOrder.ABCD)  # the largest float32
@example(DataType.FLOAT32, [0x0000, 0x0001], WordOrder.ABCD)  # the smallest subnormal
@example(DataType.STRING, [0x4100, 0x4200], WordOrder.ABCD)  # a NUL inside
@example(DataType.STRING, [0xFFFE], WordOrder.ABCD)  # not UTF-8
@example(DataType.UINT16, [0x10000], WordOrder.BADC)
@settings(max_examples=250)
def test_fuzz_decode_any_words(datatype: DataType, words: list[int], order: WordOrder) -> None:
    decode_any(datatype, words, order)


@given(datatype=TYPES, order=ORDERS, data=st.data())
@settings(max_examples=200)
def test_fuzz_decode_words_of_the_right_count(
    datatype: DataType, order: WordOrder, data: st.DataObject
) -> None:
    # As many words as the type takes, so (nearly) every example reaches the round trip.
    count = REGISTER_WIDTH.get(datatype) or data.draw(st.integers(1, 4))
    words = data.draw(st.lists(WORD, min_size=count, max_size=count))
    decode_any(datatype, words, order)


@given(word=st.integers(0, 0xFFFF), bit=st.integers(-2, 18), flag=st.booleans())
@settings(max_examples=100)
def test_fuzz_register_bits(word: int, bit: int, flag: bool) -> None:
    bits_any(word, bit, flag)


@pytest.mark.extended
@pytest.mark.timeout(240)  # many examples: beyond the suite's 60 s per test
@given(datatype=TYPES, order=ORDERS, value=ANY_VALUE, data=st.data())
@settings(max_examples=6_000)
def test_fuzz_codecs_many(
    datatype: DataType, order: WordOrder, value: Any, data: st.DataObject
) -> None:
    encode_any(datatype, value, order, data.draw(st.integers(1, 4)))
    decode_any(datatype, data.draw(st.lists(ANY_WORD, max_size=6)), order)
    count = REGISTER_WIDTH.get(datatype) or data.draw(st.integers(1, 4))
    decode_any(datatype, data.draw(st.lists(WORD, min_size=count, max_size=count)), order)
    bits_any(
        data.draw(st.integers(0, 0xFFFF)), data.draw(st.integers(-2, 18)), data.draw(st.booleans())
    )


@pytest.mark.parametrize("case", cases("codecs"))
def test_fuzz_codecs_corpus(case: dict[str, Any]) -> None:
    datatype = DataType(case["type"])
    orders = [WordOrder(case["order"])] if "order" in case else list(WordOrder)
    for order in orders:
        if "value" in case:
            encode_any(datatype, _value(case["value"]), order, case.get("length", 1))
        else:
            decode_any(datatype, case["words"], order)


def _value(raw: Value) -> Value:
    # JSON has no way to write a float that is whole: {"float": 3} is 3.0.
    if isinstance(raw, dict) and "float" in raw:
        return float(raw["float"])
    return raw
