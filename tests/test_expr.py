"""The expression language: the whitelist, type checks and evaluation by walking the tree."""

from __future__ import annotations

import math
import re
import warnings

import pytest

from cellctl import expr
from cellctl.errors import CellctlError
from cellctl.expr import EvaluationError, ExpressionError, Kind
from drivers.base import Value
from drivers.points import DataType

KINDS: dict[str, Kind | None] = {
    "press.force_kN": Kind.NUMBER,
    "press.cycle_done": Kind.BOOL,
    "conveyor.run": Kind.BOOL,
    "robot.name": Kind.STRING,
    "parts": Kind.NUMBER,
    "broken": None,  # known, but its own definition failed: never reported again
}


@pytest.mark.parametrize(
    ("text", "says", "col"),
    [
        ("__import__('os')", "call to '__import__' not allowed", 0),
        ("__import__('os').system('id')", "call to \"__import__('os').system\" not allowed", 0),
        ("open('/etc/passwd')", "'open' not allowed", 0),
        ("press.force_kN.__class__", "names starting with '_'", 0),
        ("a and _secret", "names starting with '_'", 6),
        ("parts[0] > 1", "subscripts", 0),
        ("(lambda: 1)()", "call to 'lambda: 1' not allowed", 0),
        ("max(lambda: 1, 2)", "lambda", 4),
        ("[x for x in parts]", "comprehensions", 0),
        ("any(x for x in parts)", "'any' not allowed", 0),
        ("(1, 2)", "tuples", 0),
        ("{1: 2}", "dicts", 0),
        ("a if b else c", "'a if c else b'", 0),
        ("(y := 3)", "':='", 1),
        ("f'{parts}'", "f-strings", 0),
        ("2 ** 1000", "'**'", 0),
        ("a & b", "write 'and'", 0),
        ("~parts", "'~'", 0),
        ("parts in x", "'in'", 0),
        ("a is None", "'is'", 0),
        ("None", "None", 0),
        ("1j", "complex", 0),
        ("round(1.5, ndigits=1)", "keyword", 0),
        ("abs(1, 2)", "takes 1 arguments, got 2", 0),
        ("min(1)", "takes 2 to 16 arguments", 0),
        ("max", "is a function", 0),
        ("'a'.upper()", "not allowed", 0),
        ("parts > 1; 2", "syntax error", 9),
        ("", "empty expression", 0),
        ("True or x", "True is not allowed: write 'true'", 0),
        ("x == False", "False is not allowed: write 'false'", 5),
        ("x == None", "None is not allowed", 5),
        ("print(1)", "call to 'print' not allowed", 0),
        ("exec('1')", "call to 'exec' not allowed", 0),
        ("abs.__call__(1)", "call to 'abs.__call__' not allowed", 0),
        ("x.__class__.__bases__", "names starting with '_' are not allowed ('__class__')", 0),
        ("__builtins__", "names starting with '_'", 0),
        ("1 @ 2", "'@'", 0),
        ("1 << 64", "'<<'", 0),
        ("a is not b", "'is not'", 0),
        ("max(*parts)", "takes 2 to 16 arguments", 0),
        ("max(*parts, *parts)", "'*' unpacking", 4),
        ("max(" + "1, " * 16 + "1)", "takes 2 to 16 arguments, got 17", 0),
        ("x == 18446744073709551616", "number 18446744073709551616 is too large", 5),
        ("x == 1e999", "number 1e999 is too large for a float", 5),
        ("x == '" + "y" * 257 + "'", "string of 257 characters, more than 256", 5),
        ("round(x, 10**9)", "'**'", 9),
        ("round(x, 16)", "round() digits must be a whole number in -15..15, got 16", 9),
        ("round(x, -100)", "got -100", 9),
        ("round(x, 0.5)", "got 0.5", 9),
        ("x == b'y'", "bytes b'y' is not allowed", 5),
        ("x == ...", "ellipsis", 5),
        ("name == '\\d'", "syntax error: invalid escape sequence", 8),
        ("x\x00", "NUL character is not allowed", 1),
        ("   ", "empty expression", 0),
    ],
)
def test_refused(text: str, says: str, col: int) -> None:
    with pytest.raises(ExpressionError) as caught:
        expr.parse(text)
    assert says in str(caught.value)
    assert caught.value.col == col


def test_length_and_depth_limits() -> None:
    with pytest.raises(ExpressionError, match="more than 500"):
        expr.parse("a or " * 100 + "b")
    with pytest.raises(ExpressionError, match="nested more than 50 deep"):
        expr.parse("-" * 60 + "1")
    assert expr.evaluate(expr.parse("-" * 50 + "1"), {}) == 1
    with pytest.raises(ExpressionError, match="more than 200 parts"):
        expr.parse("<".join(["1"] * 200))  # a flat chain: one comparison and 200 numbers
    assert expr.evaluate(expr.parse("<".join(["0"] * 199)), {}) is False
    # Each part of a dotted name is a level: a long chain is refused, not walked.
    with pytest.raises(ExpressionError, match="nested more than 50 deep"):
        expr.parse(".".join(["a"] * 52))
    assert expr.parse(".".join(["a"] * 51)).names == {".".join(["a"] * 51)}
    assert expr.parse("x == '" + "y" * 256 + "'").names == {"x"}
    assert expr.evaluate(expr.parse("18446744073709551615 - 1"), {}) == 2**64 - 2
    assert expr.evaluate(expr.parse("round(x, -15) + round(x, 15)"), {"x": 1.25}) == 1.25


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("(" + "-" * 480 + "f)(1)", "call to '---"),  # named from the text, never unparsed
        ("(" * 150 + "x" + ")" * 150, None),
        ("(" * 210 + "x" + ")" * 210, "too many nested parentheses"),
        ("[" * 150 + "]" * 150, "lists not allowed"),
        ("-" * 499 + "x", "nested more than 50 deep"),
        ("not " * 120 + "x", "nested more than 50 deep"),
        ("x" + " or x" * 99, None),
        ("x == \ud800", "character '\\ud800' is not allowed"),
        ("x\u2028", "invalid non-printable character"),
    ],
)
def test_hostile_text_is_refused_with_the_package_error(text: str, says: str | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing the parser says leaks out as a warning
        if says is None:
            assert expr.check(expr.parse(text), {"x": Kind.BOOL}) == []
        else:
            with pytest.raises(ExpressionError, match=re.escape(says)):
                expr.parse(text)


def test_names_are_dotted_and_exclude_literals_and_functions() -> None:
    parsed = expr.parse("press.cycle_done and press.force_kN >= max(parts, 1) * 0.95 or true")
    assert parsed.names == {"press.cycle_done", "press.force_kN", "parts"}
    assert str(parsed) == "press.cycle_done and press.force_kN >= max(parts, 1) * 0.95 or true"


def test_offsets_skip_leading_blanks_and_count_characters_not_bytes() -> None:
    with pytest.raises(ExpressionError) as caught:
        expr.parse("  'Grüße' == x[1]")
    assert caught.value.col == len("  'Grüße' == ")
    parsed = expr.parse("  'Grüße' == nope")
    (problem,) = expr.check(parsed, KINDS)
    assert problem.col == len("  'Grüße' == ")


def test_a_condition_may_span_lines() -> None:
    parsed = expr.parse("press.cycle_done and\n  press.force_kN > 5\n")
    values: dict[str, Value] = {"press.cycle_done": True, "press.force_kN": 6.0}
    assert expr.evaluate(parsed, values) is True


@pytest.mark.parametrize(
    ("text", "expect", "problems"),
    [
        ("press.cycle_done and press.force_kN >= 12.5", Kind.BOOL, []),
        ("robot.name == 'R1'", Kind.BOOL, []),
        ("press.force_kN * 2 + abs(-parts)", Kind.NUMBER, []),
        ("broken and conveyor.run", Kind.BOOL, []),
        ("press.forse_kN > 1", Kind.BOOL, ["unknown name 'press.forse_kN'", "'press.force_kN'"]),
        ("press.force_kN", Kind.BOOL, ["must be a condition, but it is a number"]),
        ("conveyor.run", Kind.NUMBER, ["must be a number, but it is a condition"]),
        ("robot.name > 3", None, ["cannot compare a string ('robot.name') with a number"]),
        ("conveyor.run < true", None, ["'<' does not apply to conditions"]),
        ("parts and conveyor.run", None, ["'and' needs a condition, but 'parts' is a number"]),
        ("not parts", None, ["'not' needs a condition"]),
        ("conveyor.run + 1", None, ["'+' needs a number"]),
        ("-robot.name", None, ["unary '-' needs a number"]),
        ("round(robot.name)", None, ["round() needs a number"]),
        ("1 < parts < 'x'", None, ["cannot compare a number ('parts') with a string"]),
    ],
)
def test_check(text: str, expect: Kind | None, problems: list[str]) -> None:
    found = [str(p) for p in expr.check(expr.parse(text), KINDS, expect)]
    assert len(found) == (1 if problems else 0), found
    for words in problems:
        assert words in found[0]


def test_check_locates_each_problem() -> None:
    text = "conveyor.run and nope or parts > 'x'"
    found = expr.check(expr.parse(text), KINDS, Kind.BOOL)
    assert [(p.col, p.message.split(" ")[0]) for p in found] == [
        (text.index("nope"), "unknown"),
        (text.index("parts"), "cannot"),
    ]


def test_infer_and_kind_of() -> None:
    assert expr.infer(expr.parse("parts / 2"), KINDS) is Kind.NUMBER
    assert expr.infer(expr.parse("nope"), KINDS) is None
    assert expr.kind_of(DataType.BOOL) is Kind.BOOL
    assert expr.kind_of(DataType.STRING) is Kind.STRING
    assert expr.kind_of(DataType.UINT32) is Kind.NUMBER


VALUES: dict[str, Value] = {
    "press.force_kN": 12.0,
    "press.cycle_done": True,
    "conveyor.run": False,
    "robot.name": "R1",
    "parts": 7,
}


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("press.cycle_done and press.force_kN >= 12.0 * 0.95", True),
        ("not conveyor.run", True),
        ("conveyor.run or press.cycle_done", True),
        ("conveyor.run and press.cycle_done", False),
        ("conveyor.run == false", True),
        ("true != false", True),
        ("1 < parts <= 7 < 8", True),
        ("1 < parts < 5", False),
        ("parts // 2", 3),
        ("parts % 4", 3),
        ("parts / 2", 3.5),
        ("-parts + 10", 3),
        ("abs(-2.5)", 2.5),
        ("min(parts, 3, 9)", 3),
        ("max(parts, press.force_kN)", 12.0),
        ("round(2.567, 2)", 2.57),
        ("round(2.5)", 2),
        ("robot.name == 'R1'", True),
        ("robot.name < 'R2'", True),
        ("true and 1 == 1.0", True),
        ("1_000 + 0x10", 1016),
        ("round(2.5, -1)", 0.0),
    ],
)
def test_evaluate(text: str, result: Value) -> None:
    value = expr.evaluate(expr.parse(text), VALUES)
    assert value == result
    assert type(value) is type(result)


def test_and_or_short_circuit_and_skip_missing_values() -> None:
    # The right-hand side is never read, so its missing value does not matter.
    assert expr.evaluate(expr.parse("conveyor.run and missing.tag"), VALUES) is False
    assert expr.evaluate(expr.parse("press.cycle_done or missing.tag"), VALUES) is True
    with pytest.raises(EvaluationError, match=r"no value for 'missing\.tag'"):
        expr.evaluate(expr.parse("press.cycle_done and missing.tag"), VALUES)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("parts / 0", "division by zero"),
        ("parts % (parts - 7)", "division by zero"),
        ("parts and conveyor.run", "not true or false"),
        ("not parts", "not true or false"),
        ("robot.name + 1", "not a number"),
        ("conveyor.run + 1", "not a number"),
        ("robot.name > 1", "cannot compare"),
        ("conveyor.run < press.cycle_done", "cannot compare"),
        ("round(parts, press.force_kN)", "whole digits"),
        ("round(parts, parts * 3)", "whole digits"),
        ("round(huge)", "cannot round"),
        ("round(nan)", "cannot round"),
        ("1e308 * 10", "number too large ('1e308 * 10')"),
        ("-1e308 - 1e308", "number too large"),
        ("huge + 1", "number too large"),
        (" * ".join(["big"] * 17), "number too large ('big * big"),
        ("big / 1e-300", "number too large"),
        ("giant / 3", "number too large"),
        ("giant * 0.5", "number too large"),
        ("giant % 2 + giant", "number too large"),
        ("nothing == nothing", "cannot compare None == None"),
        ("nothing < 1", "cannot compare"),
    ],
)
def test_evaluation_errors_name_the_expression(text: str, says: str) -> None:
    values: dict[str, object] = {
        **VALUES,
        "huge": math.inf,
        "nan": math.nan,
        "big": 2**64 - 1,
        "giant": 10**400,
        "nothing": None,  # not a Value: a mapping from outside must not crash the walk
    }
    with pytest.raises(EvaluationError) as caught:
        expr.evaluate(expr.parse(text), values)  # type: ignore[arg-type]
    assert says in str(caught.value)
    assert repr(text) in str(caught.value)


def test_strings_only_compare() -> None:
    for text in ("robot.name + 'x'", "robot.name * 3", "-robot.name", "max(robot.name, 'z')"):
        (problem, *_) = expr.check(expr.parse(text), KINDS)
        assert "is a string (strings can only be compared)" in problem.message, text
        with pytest.raises(EvaluationError, match="not a number"):
            expr.evaluate(expr.parse(text), VALUES)


def test_errors_are_the_package_errors() -> None:
    assert issubclass(ExpressionError, CellctlError)
    assert issubclass(EvaluationError, CellctlError)
    with pytest.raises(ExpressionError, match="expected an expression text, got int"):
        expr.parse(42)  # type: ignore[arg-type]


def test_evaluate_never_uses_python_eval() -> None:
    # A name that Python's eval would resolve is just an unknown value here.
    with pytest.raises(EvaluationError, match="no value for 'print'"):
        expr.evaluate(expr.parse("print"), {})
