"""Fuzzing what people type: values (`write TAG=VALUE`, `-p NAME=VALUE`, `--answer ID=VALUE`,
cellctl/textvalue.py), durations and number options. Any text at all, lone surrogates included
(Python's reading of argument bytes that are not UTF-8): a value, or the package's BadValue /
DurationError naming what is expected; never another exception. A value taken is one the
device's codec takes too, so nothing accepted at the prompt fails later on the wire.

test_textvalue.py proves the words and digits from valid values; here the texts are any.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic_core import PydanticCustomError

from cellctl import textvalue
from cellctl.cell import Cell, load_cell
from cellctl.cell.tags import parse_value, text_type
from cellctl.cli.params import Number, safe_wait_seconds
from cellctl.control.operator import parse_answers
from cellctl.durations import MAX_SECONDS, DurationError, format_duration, parse_duration
from cellctl.errors import BadValue, CellctlError
from cellctl.recipe import Recipe, load_recipe, parse_parameters
from cellctl.testing import cli
from drivers.codecs import check_value, encode_registers, same_value
from drivers.points import DataType, WordOrder
from tests.fuzz_corpus import cases

ROOT = Path(__file__).resolve().parent.parent
TEST_CELL = ROOT / "tests" / "recipes" / "cell.yaml"
DEMO = ROOT / "recipes" / "demo"

# Texts of every sort: any characters, lone surrogates, number-shaped, and the usual slips.
NUMBERISH = st.from_regex(
    r"[ \t]*[+-]?[0-9]{0,25}\.?[0-9]{0,5}([eE][+-]?[0-9]{1,4})?[ \t]*", fullmatch=True
)
TEXTS = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(exclude_categories=()), max_size=10),  # lone surrogates too
    NUMBERISH,
    st.sampled_from(["1e309", "-0", "0x10", "1_0", "inf", "nan", "１２", "9" * 5000, "1e-400"]),
    st.sampled_from(
        ["3.4028235e38", "3.4028236e38", "18446744073709551616", "on", "NO", "a\udcff"]
    ),
)
DURATIONS = st.one_of(
    TEXTS,
    st.from_regex(r"\s*[0-9]{0,12}\.?[0-9]{0,4}\s*(ms|s|m|h)\s*", fullmatch=True),
    st.sampled_from(["168h", "168.0001h", "0.0009ms", "0ms", "1e3s", "10080m", "604800s"]),
    st.one_of(st.none(), st.integers(), st.floats(), st.booleans()),
)


@functools.cache
def small_cell() -> Cell:
    """The test cell: every tag type, a scaled tag, a string tag, ranged and read-only tags."""
    return load_cell(TEST_CELL)


@functools.cache
def demo_recipes() -> list[Recipe]:
    """The demo recipes: parameters of every type with ranges, choices and prompts."""
    return [
        load_recipe(path).recipe for path in sorted(DEMO.glob("*.yaml")) if path.name != "cell.yaml"
    ]


def parse_any(text: str, datatype: DataType) -> None:
    """A value the codec takes (and `show` gives back as the same value), or BadValue."""
    try:
        value = textvalue.parse(text, datatype)
    except BadValue as err:
        assert str(err)
        return
    assert same_value(check_value(datatype, value), value) or datatype in (
        DataType.FLOAT32,
        DataType.FLOAT64,
    )
    if isinstance(value, str) and "\x00" not in value:  # NUL: refused by Modbus tags
        encode_registers(datatype, value, length=max(1, len(value.encode("utf-8"))))
    shown = textvalue.show(value, datatype)
    again = textvalue.parse(shown, datatype)
    if datatype is DataType.FLOAT32:  # shown as the device stores it
        assert encode_registers(datatype, again) == encode_registers(datatype, value)
    else:
        assert same_value(again, value), (text, value, shown, again)


def duration_any(text: Any) -> None:
    """Seconds within 0..7 days that format back to the same duration, or DurationError;
    --safe-wait takes it or says BadValue."""
    try:
        seconds = parse_duration(text)
    except DurationError as err:
        assert str(err)
        return
    assert 0 <= seconds <= MAX_SECONDS
    assert math.isclose(parse_duration(format_duration(seconds)), seconds, rel_tol=1e-5)
    try:
        assert safe_wait_seconds(text) == seconds > 0
    except BadValue as err:
        assert "--safe-wait" in str(err)


def assignments_any(texts: list[str]) -> None:
    """`-p` and `--answer` of every demo recipe: values of the declared types, or BadValue."""
    for recipe in demo_recipes():
        try:
            values = parse_parameters(recipe, texts)
        except BadValue as err:
            assert str(err)
        else:
            for name, value in values.items():
                assert same_value(recipe.parameters[name].check_value(value), value)
        try:
            parse_answers(recipe, texts)
        except BadValue as err:
            assert str(err)


def write_any(tag: str, text: str) -> None:
    """`write TAG=VALUE` on the test cell: a value the tag's codec encodes, or CellctlError."""
    cell = small_cell()
    try:
        value = parse_value(cell, tag, text)
    except CellctlError as err:
        assert str(err)
        return
    spec = cell.tags[tag]
    raw = spec.to_raw(value)
    address = spec.address
    if address is None or address.table.is_bit_table or address.bit is not None:
        check_value(spec.datatype, raw)
    else:
        words = encode_registers(
            spec.datatype, raw, spec.word_order or WordOrder.ABCD, spec.length or 1
        )
        assert all(0 <= word <= 0xFFFF for word in words)
    assert isinstance(textvalue.show(spec.from_raw(raw), text_type(spec)), str)


def number_any(text: str) -> None:
    """A number option's reading: a number in its range, or typer's own usage error."""
    for kind in (int, float):
        try:
            number = Number(kind, 0.01, 1000)(text)
        except PydanticCustomError:
            continue
        assert 0.01 <= number <= 1000


@given(text=TEXTS, datatype=st.sampled_from(list(DataType)))
@example("a\udcff", DataType.STRING)  # found a bug: bytes not UTF-8 reached the codec
@example("9" * 5000, DataType.UINT64)
@example("3.4028235e38", DataType.FLOAT32)
@settings(max_examples=200)
def test_fuzz_any_text_as_any_type(text: str, datatype: DataType) -> None:
    parse_any(text, datatype)


@given(text=DURATIONS)
@settings(max_examples=200)
def test_fuzz_any_duration(text: Any) -> None:
    duration_any(text)


@given(
    texts=st.lists(
        st.one_of(
            TEXTS,
            st.tuples(
                st.sampled_from(["parts", "force_kN", " tool ", "lot", "x", "", "=", "speed_rpm"]),
                TEXTS,
            ).map("=".join),
        ),
        max_size=3,
    )
)
@settings(max_examples=150)
def test_fuzz_any_parameters_and_answers(texts: list[str]) -> None:
    assignments_any(texts)


@given(tag=st.sampled_from([*sorted(small_cell().tags), "nope", "", "plc"]), text=TEXTS)
@example("plc.lot", "a\udcff")  # found a bug: `cellctl write plc.lot=$'a\xff'` exit 4
@example("plc.temp_C", "3276.75")  # scaled: rounds past int16
@settings(max_examples=200)
def test_fuzz_any_written_value(tag: str, text: str) -> None:
    write_any(tag, text)


@given(text=TEXTS)
@settings(max_examples=100)
def test_fuzz_any_number_option(text: str) -> None:
    number_any(text)


@pytest.mark.extended
@pytest.mark.timeout(240)  # many examples: beyond the suite's 60 s per test
@given(
    text=TEXTS,
    datatype=st.sampled_from(list(DataType)),
    tag=st.sampled_from(sorted(small_cell().tags)),
    duration=DURATIONS,
)
@settings(max_examples=5_000)
def test_fuzz_values_many(text: str, datatype: DataType, tag: str, duration: Any) -> None:
    parse_any(text, datatype)
    write_any(tag, text)
    duration_any(duration)
    number_any(text)
    assignments_any([f"parts={text}", f"force_kN={text}", text])


@pytest.mark.parametrize("case", cases("values"))
def test_fuzz_values_corpus(case: dict[str, Any]) -> None:
    text = case["text"]
    for datatype in DataType:
        parse_any(text, datatype)
    for tag in small_cell().tags:
        write_any(tag, text)
    duration_any(text)
    number_any(text)
    assignments_any([text, f"parts={text}", f"tool={text}"])


@pytest.mark.parametrize("case", cases("cli"))
def test_fuzz_cli_corpus(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    # The whole command, as typed: refused with exit 1 and a message, before any device.
    args = [
        arg.replace("{test_cell}", str(TEST_CELL)).replace("{demo}", str(DEMO))
        for arg in case["args"]
    ]
    result = cli(capsys, *args)
    assert result.exit_code == case["code"], (result.out, result.err)
    assert "Traceback" not in result.out + result.err
    assert "internal error" not in result.err
    assert case["says"] in result.out + result.err
