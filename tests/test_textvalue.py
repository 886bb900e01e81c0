"""One reading of typed text for every value type: what `show` writes `parse` reads back, and a
number with '_', digits of another script or junk around it is refused (write, -p, --answer)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from cellctl import textvalue
from cellctl.cell import Cell, load_cell, tags
from cellctl.control.operator import parse_answers
from cellctl.errors import BadValue
from cellctl.recipe import Recipe, load_recipe, parse_parameters
from drivers.codecs import INT_RANGES
from drivers.points import DataType

INT_TYPES = sorted(INT_RANGES)
NUMBER_TYPES = [*INT_TYPES, DataType.FLOAT32, DataType.FLOAT64]
WORDS = {**dict.fromkeys(textvalue.TRUE_WORDS, True), **dict.fromkeys(textvalue.FALSE_WORDS, False)}

# Digits of other scripts, each a run of ten from 0 to 9: Python's int() and float() read
# the decimal ones as 0-9; superscripts and subscripts are digits to str.isdigit().
SCRIPTS = {
    "full-width": "０１２３４５６７８９",
    "arabic-indic": "٠١٢٣٤٥٦٧٨٩",
    "extended-arabic-indic": "۰۱۲۳۴۵۶۷۸۹",
    "devanagari": "०१२३४५६७८९",
    "superscript": "⁰¹²³⁴⁵⁶⁷⁸⁹",
    "subscript": "₀₁₂₃₄₅₆₇₈₉",
    "math-bold": "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗",
}
# Characters that could make a number's text another valid number when added to it.
NUMBERLIKE = "0123456789+-.eE \t"


def float32(value: float) -> float:
    """The float32 a device stores for a value."""
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


@st.composite
def shown_numbers(draw: st.DrawFn) -> tuple[DataType, str]:
    """A type and the text `show` gives for one of its values."""
    datatype = draw(st.sampled_from(NUMBER_TYPES))
    if datatype in INT_RANGES:
        low, high = INT_RANGES[datatype]
        value: float = draw(st.integers(low, high))
    else:
        width = 32 if datatype is DataType.FLOAT32 else 64
        value = draw(st.floats(width=width, allow_nan=False, allow_infinity=False))
    return datatype, textvalue.show(value, datatype)


@pytest.mark.parametrize("datatype", INT_TYPES, ids=str)
@given(data=st.data())
def test_an_integer_reads_back_as_shown(datatype: DataType, data: st.DataObject) -> None:
    low, high = INT_RANGES[datatype]
    value = data.draw(st.integers(low, high))
    parsed = textvalue.parse(textvalue.show(value, datatype), datatype)
    assert parsed == value and type(parsed) is int


@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_a_float64_reads_back_as_shown(value: float) -> None:
    parsed = textvalue.parse(textvalue.show(value, DataType.FLOAT64), DataType.FLOAT64)
    assert parsed == value and type(parsed) is float


@given(value=st.floats(width=32, allow_nan=False, allow_infinity=False))
@example(value=float32(12.3)).via("the shortest text: 12.3, not 12.300000190734863")
@example(value=float32(3.4028234663852886e38)).via("the largest float32")
@example(value=float32(1e-45)).via("the smallest subnormal float32")
def test_a_float32_reads_back_as_the_device_stores_it(value: float) -> None:
    text = textvalue.show(value, DataType.FLOAT32)
    parsed = textvalue.parse(text, DataType.FLOAT32)
    assert float32(parsed) == value
    significant = text.split("e")[0].lstrip("-").replace(".", "").strip("0")
    assert len(significant) <= 9, text  # 9 significant digits tell every float32 apart


def test_a_float32_is_shown_as_typed_not_as_stored() -> None:
    assert textvalue.show(float32(12.3), DataType.FLOAT32) == "12.3"
    assert textvalue.show(12.3, DataType.FLOAT32) == "12.3"


@given(value=st.booleans())
def test_a_bool_reads_back_as_shown(value: bool) -> None:
    assert textvalue.parse(textvalue.show(value, DataType.BOOL), DataType.BOOL) is value


@given(value=st.text())
def test_a_text_reads_back_exactly_as_written(value: str) -> None:
    assert textvalue.parse(textvalue.show(value, DataType.STRING), DataType.STRING) == value


@given(shown=shown_numbers(), data=st.data())
def test_a_number_with_an_underscore_between_digits_is_refused(
    shown: tuple[DataType, str], data: st.DataObject
) -> None:
    datatype, text = shown
    between = [i for i in range(1, len(text)) if text[i - 1].isdigit() and text[i].isdigit()]
    assume(between)
    at = data.draw(st.sampled_from(between))
    with pytest.raises(BadValue, match="without '_' separators"):
        textvalue.parse(text[:at] + "_" + text[at:], datatype)


@given(shown=shown_numbers(), script=st.sampled_from(sorted(SCRIPTS)), data=st.data())
def test_a_number_with_a_digit_of_another_script_is_refused(
    shown: tuple[DataType, str], script: str, data: st.DataObject
) -> None:
    datatype, text = shown
    digits = [i for i, char in enumerate(text) if char in "0123456789"]
    at = data.draw(st.sampled_from(digits))
    with pytest.raises(BadValue, match="digits 0-9 only"):
        textvalue.parse(text[:at] + SCRIPTS[script][int(text[at])] + text[at + 1 :], datatype)


@given(
    value=st.sampled_from(sorted(WORDS)),
    script=st.sampled_from(sorted(SCRIPTS)),
    case=st.lists(st.booleans(), min_size=5, max_size=5),
)
def test_bool_words_in_any_case_and_no_other_digits(
    value: str, script: str, case: list[bool]
) -> None:
    cased = "".join(c.upper() if up else c for c, up in zip(value, case, strict=False))
    assert textvalue.parse(f" {cased}\t", DataType.BOOL) is WORDS[value]
    if value in "01":
        with pytest.raises(BadValue, match="true or false"):
            textvalue.parse(SCRIPTS[script][int(value)], DataType.BOOL)


@given(
    shown=shown_numbers(),
    junk=st.text(min_size=1, max_size=3).filter(lambda j: not set(j) & set(NUMBERLIKE)),
    before=st.booleans(),
)
@example(shown=(DataType.UINT16, "1200"), junk="\n", before=False)
@example(shown=(DataType.FLOAT32, "12.5"), junk="kN", before=False)
@example(shown=(DataType.FLOAT64, "1.5"), junk="\xa0", before=True)
@example(shown=(DataType.INT32, "7"), junk="\u3000", before=True)
@example(shown=(DataType.INT16, "7"), junk="0x", before=True)
def test_a_number_with_junk_around_it_is_refused(
    shown: tuple[DataType, str], junk: str, before: bool
) -> None:
    datatype, text = shown
    with pytest.raises(BadValue):
        textvalue.parse(junk + text if before else text + junk, datatype)


@given(
    word=st.sampled_from(sorted(WORDS)),
    junk=st.text(min_size=1, max_size=3).filter(lambda j: j.strip(" \t") != ""),
    before=st.booleans(),
)
def test_a_bool_word_with_junk_around_it_is_refused(word: str, junk: str, before: bool) -> None:
    text = junk + word if before else word + junk
    assume(text.strip(" \t").lower() not in WORDS)
    with pytest.raises(BadValue, match="true or false"):
        textvalue.parse(text, DataType.BOOL)


@pytest.mark.parametrize(
    ("text", "datatype", "says"),
    [
        ("nan", DataType.FLOAT64, "expects a finite number, got 'nan'"),
        ("-inf", DataType.FLOAT32, "got '-inf'"),
        ("Infinity", DataType.FLOAT64, "got 'Infinity'"),
        ("1e999", DataType.FLOAT64, "'1e999' is out of range"),
        ("3.5e38", DataType.FLOAT32, "'3.5e38' is out of range"),
        ("65536", DataType.UINT16, "in 0..65535 (uint16)"),
        ("-1", DataType.UINT64, "in 0..18446744073709551615 (uint64)"),
        ("9" * 5000, DataType.INT64, "out of range"),
        ("0" * 5000 + "7", DataType.INT16, None),  # leading zeros: 7, and no int() of 5001
        ("1.0", DataType.INT32, "expects a whole number"),
        ("1e3", DataType.INT32, "expects a whole number"),
        ("0x10", DataType.INT32, "expects a whole number"),
        ("", DataType.FLOAT64, "got ''"),
        ("+-1", DataType.INT32, "expects a whole number"),
    ],
)
def test_what_no_device_value_is(text: str, datatype: DataType, says: str | None) -> None:
    if says is None:
        assert textvalue.parse(text, datatype) == 7
        return
    with pytest.raises(BadValue) as caught:
        textvalue.parse(text, datatype)
    assert says in str(caught.value)
    assert len(str(caught.value)) < 200  # a 5000-digit text is cut short


Places = tuple[Cell, Recipe]

CELL = """\
cell: words
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020}
tags:
  plc.run:      {device: plc, address: "coil:0", access: rw}
  plc.speed:    {device: plc, address: "hr:0", access: rw}
  plc.setpoint: {device: plc, address: "hr:2", type: float32, access: rw, min: 0, max: 25}
"""

RECIPE = """\
recipe: words
version: 1
parameters:
  fast:  {type: bool, default: false}
  speed: {type: int, default: 5, min: 0, max: 1000}
  force: {type: float, default: 12.0, min: 0, max: 25}
steps:
  - {id: go, prompt: Go fast?, answer: {name: go_fast, type: bool}}
  - {id: how, prompt: How fast?, answer: {name: rpm, type: int, min: 0, max: 1000}}
  - {id: much, prompt: How much force?, answer: {name: kN, type: float}}
  - {id: set, set: {plc.run: fast and go_fast, plc.speed: speed + rpm, plc.setpoint: force}}
"""


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> Places:
    """What the three places typed values come from read against: a cell and a recipe on it."""
    folder = tmp_path_factory.mktemp("words")
    (folder / "cell.yaml").write_text(CELL, encoding="utf-8")
    (folder / "words.yaml").write_text(RECIPE, encoding="utf-8")
    cell = load_cell(folder / "cell.yaml")
    return cell, load_recipe(folder / "words.yaml", cell).recipe


def read_in_each_place(places: Places, kind: str, text: str) -> list[object]:
    """The value `text` gives as a `write`, a `-p` and an `--answer` of `kind` (or the error)."""
    cell, recipe = places
    tag, parameter, prompt = {
        "bool": ("plc.run", "fast", "go"),
        "int": ("plc.speed", "speed", "how"),
        "float": ("plc.setpoint", "force", "much"),
    }[kind]
    results: list[object] = []
    for read in (
        lambda: tags.parse_value(cell, tag, text),
        lambda: parse_parameters(recipe, [f"{parameter}={text}"])[parameter],
        lambda: parse_answers(recipe, [f"{prompt}={text}"])[prompt],
    ):
        try:
            results.append(read())
        except BadValue:
            results.append(BadValue)
    return results


@pytest.mark.parametrize("word", sorted(WORDS))
def test_the_same_bool_words_in_write_p_and_answer(places: Places, word: str) -> None:
    assert read_in_each_place(places, "bool", word.upper()) == [WORDS[word]] * 3


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("int", "1_2"),
        ("int", "１２"),
        ("int", "12\u00a0"),
        ("int", "\u300012"),
        ("int", "12\n"),
        ("float", "1_2"),
        ("float", "１２"),
        ("float", "1٢.5"),
        ("float", "12\n"),
        ("float", "nan"),
        ("bool", "ｙｅｓ"),
        ("bool", "yes\n"),
    ],
)
def test_write_p_and_answer_refuse_the_same_texts(places: Places, kind: str, text: str) -> None:
    assert read_in_each_place(places, kind, text) == [BadValue] * 3


def test_numbers_typed_alike_give_the_same_value_everywhere(places: Places) -> None:
    assert read_in_each_place(places, "int", " +12 ") == [12] * 3
    assert read_in_each_place(places, "float", "12.5") == [12.5] * 3
    assert read_in_each_place(places, "float", "1.25e1") == [12.5] * 3


def test_a_parameter_names_itself_and_its_range(places: Places) -> None:
    _, recipe = places
    with pytest.raises(BadValue) as caught:
        parse_parameters(recipe, ["speed=1_2"])
    assert str(caught.value) == (
        "parameter speed: expects a whole number in 0..1000, got '1_2' "
        "(digits 0-9 only, without '_' separators)"
    )
