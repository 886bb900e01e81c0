"""Fuzzing the expression language: only the package's own errors, and nothing ever runs."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl import expr
from cellctl.errors import CellctlError
from cellctl.expr import EvaluationError, Kind
from drivers.base import Value

# Names the generated expressions use, with the kind `check` is told they have.
KINDS: dict[str, Kind | None] = {
    "count": Kind.NUMBER,
    "force": Kind.NUMBER,
    "press.force_kN": Kind.NUMBER,
    "press.done": Kind.BOOL,
    "ok": Kind.BOOL,
    "lot": Kind.STRING,
}
# Edge values as often as the rest: they are where arithmetic and round() fail.
EDGE_NUMBERS = st.sampled_from([0, -1, 0.5, 2**64 - 1, 10**400, 1e308, math.nan, math.inf])
NUMBERS = st.one_of(
    EDGE_NUMBERS,
    EDGE_NUMBERS,
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)
VALUES_BY_KIND: dict[Kind | None, st.SearchStrategy[Value]] = {
    Kind.NUMBER: NUMBERS,
    Kind.BOOL: st.booleans(),
    Kind.STRING: st.text(max_size=20),
}
ANY_VALUE: st.SearchStrategy[Value] = st.one_of(*VALUES_BY_KIND.values())

# What evaluation may still refuse once `check` found nothing: arithmetic and round's digits.
RUNTIME_ONLY = ("division by zero", "number too large", "cannot round", "whole digits")

# Text that runs code if it ever reached eval: each, run by Python, creates the file at {path}.
PAYLOADS = (
    "__import__('pathlib').Path({path!r}).touch()",
    "open({path!r}, 'w')",
    "open({path!r}, 'w').close() or true",
    "exec(\"open({path!r}, 'w')\")",
    "eval(\"open({path!r}, 'w')\")",
    "(lambda: open({path!r}, 'w'))()",
    "[open({path!r}, 'w') for _ in (1,)]",
    "f\"{{open({path!r}, 'w')}}\"",
    "max(open({path!r}, 'w').close() or 1, 2)",
    "ok and open({path!r}, 'w')",
    "getattr(__import__('os'), 'system')('touch ' + {path!r})",
    "__import__('os').open({path!r}, __import__('os').O_CREAT)",
)


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A file path no expression may ever create; checked again when the module is done."""
    path = tmp_path_factory.mktemp("expr-fuzz") / "SENTINEL"
    yield path
    assert not path.exists(), "an expression created the sentinel file"


def run_all(text: str, values: dict[str, Value]) -> None:
    """Parse, check and evaluate `text`; only the package's own errors may come out.

    When check finds nothing, evaluation must agree with it: a value of the inferred kind, or
    a failure that no type can foresee (an unknown name is a check problem, so the values,
    drawn by declared kind, then fit).
    """
    try:
        parsed = expr.parse(text)
    except CellctlError:
        return
    problems = expr.check(parsed, KINDS)
    assert all(isinstance(problem, expr.ExpressionError) for problem in problems)
    try:
        value = expr.evaluate(parsed, values)
    except EvaluationError as err:
        assert problems or any(reason in str(err) for reason in RUNTIME_ONLY), str(err)
        return
    if not problems:
        assert _kind(value) is expr.infer(parsed, KINDS), (text, value)


def _kind(value: object) -> Kind | None:
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, int | float):
        return Kind.NUMBER
    return Kind.STRING if isinstance(value, str) else None


@st.composite
def values_for(draw: st.DrawFn, names: frozenset[str] | set[str]) -> dict[str, Value]:
    """A value for every name: of its declared kind when it has one, else of any kind."""
    return {
        name: draw(VALUES_BY_KIND[KINDS[name]] if name in KINDS else ANY_VALUE)
        for name in sorted(names)
    }


def _names_in(text: str) -> set[str]:
    try:
        return set(expr.parse(text).names)
    except CellctlError:
        return set()


# Leaves and operators of the language, and of Python around it that the language refuses.
GOOD_NAMES = st.sampled_from([*KINDS, "true", "false"])
BAD_NAMES = st.sampled_from(
    ["True", "False", "None", "__import__", "__builtins__", "_x", "open", "print", "abs"]
)
NUMBER_TEXT = st.one_of(
    st.integers(0, 2**70).map(str),
    st.floats(min_value=0, allow_nan=False).map(repr),
    st.sampled_from(["0x1F", "1_000", "00", "1e-400", "18446744073709551615"]),
)
STRING_TEXT = st.text(max_size=12).map(repr)
GOOD_BINARY = ["+", "-", "*", "/", "//", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or"]
BAD_BINARY = ["**", "&", "|", "^", "<<", ">>", "@", "is", "is not", "in", "not in", ":="]
BAD_ATTRIBUTES = ["__class__", "__globals__", "__subclasses__", "__dict__", "upper", "_x"]
BAD_FUNCTIONS = ["open", "__import__", "print", "eval", "exec", "getattr", "type", "len"]


Child = Callable[[], str]


def _pick(draw: st.DrawFn, choices: list[str]) -> str:
    return draw(st.sampled_from(choices))


def _children(draw: st.DrawFn, child: Child, low: int, high: int) -> str:
    return ", ".join(child() for _ in range(draw(st.integers(low, high))))


# One form per construct: each builds a piece of text from its children.
GOOD_FORMS: list[Callable[[st.DrawFn, Child], str]] = [
    lambda draw, child: f"({child()} {_pick(draw, GOOD_BINARY)} {child()})",
    lambda draw, child: f"(-{child()})",
    lambda draw, child: f"(not {child()})",
    lambda draw, child: f"abs({child()})",
    lambda draw, child: f"round({_children(draw, child, 1, 2)})",
    lambda draw, child: f"{_pick(draw, ['min', 'max'])}({_children(draw, child, 2, 4)})",
]
BAD_FORMS: list[Callable[[st.DrawFn, Child], str]] = [
    lambda draw, child: f"({child()} {_pick(draw, BAD_BINARY)} {child()})",
    lambda draw, child: f"(~{child()})",
    lambda draw, child: f"({child()}).{_pick(draw, BAD_ATTRIBUTES)}",
    lambda draw, child: f"{child()}[{child()}]",
    lambda draw, child: f"{_pick(draw, BAD_FUNCTIONS)}({_children(draw, child, 0, 3)})",
    lambda draw, child: f"(lambda: {child()})",
    lambda draw, child: f"[x for x in {child()}]",
    lambda draw, child: f"f'{{{child()}}}'",
    lambda draw, child: f"(y := {child()})",
    lambda draw, child: f"max(*{child()})",
    lambda draw, child: f"round({child()}, ndigits=2)",
    lambda draw, child: f"({child()} if {child()} else {child()})",
]
GOOD_LEAVES = st.one_of(GOOD_NAMES, GOOD_NAMES, NUMBER_TEXT, STRING_TEXT)  # names twice as often
# Payloads are aimed at a placeholder path, replaced by the sentinel's path in the test.
PLACEHOLDER = "SENTINEL-PATH"
BAD_LEAVES = st.one_of(
    GOOD_LEAVES,
    BAD_NAMES,
    st.sampled_from(["1e999", "1j", "b'x'", "...", "18446744073709551616", "'\\d'"]),
    st.sampled_from(["\x00", "\ud800", "\u2028", "\x0c", "\\", "\\\n", "\t", "#", ";"]),
    st.sampled_from([payload.format(path=PLACEHOLDER) for payload in PAYLOADS]),
)


@st.composite
def expressions(draw: st.DrawFn, *, bad: bool, depth: int = 5) -> str:
    """Expression-shaped text: a tree of the language's forms, and with `bad` of refused ones."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(BAD_LEAVES if bad else GOOD_LEAVES)
    forms = GOOD_FORMS + BAD_FORMS if bad else GOOD_FORMS
    form = draw(st.sampled_from(forms))
    return form(draw, lambda: draw(expressions(bad=bad, depth=depth - 1)))


# Any text at all, lone surrogates included (st.text leaves them out unless told).
ANY_TEXT = st.one_of(
    st.text(max_size=600), st.text(st.characters(exclude_categories=()), max_size=100)
)


@given(text=ANY_TEXT, data=st.data())
@settings(max_examples=300)
def test_any_text_raises_only_package_errors(text: str, data: st.DataObject) -> None:
    run_all(text, data.draw(values_for(_names_in(text))))


@given(text=expressions(bad=False), data=st.data())
@settings(max_examples=300)
def test_language_expressions_check_what_they_evaluate(text: str, data: st.DataObject) -> None:
    run_all(text, data.draw(values_for(_names_in(text))))


@given(text=expressions(bad=True), data=st.data())
@settings(max_examples=300)
def test_hostile_expressions_never_run(sentinel: Path, text: str, data: st.DataObject) -> None:
    text = text.replace(PLACEHOLDER, str(sentinel))
    run_all(text, data.draw(values_for(_names_in(text))))
    assert not sentinel.exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_each_payload_is_refused_although_python_would_run_it(
    payload: str, tmp_path: Path, sentinel: Path
) -> None:
    # The control: Python's own eval of the payload does create its file, so the sentinel
    # staying absent below shows the payload was refused, not that it was harmless.
    control = tmp_path / "control"
    with contextlib.suppress(Exception):
        eval(payload.format(path=str(control)), {"ok": True, "true": True})
    assert control.exists()
    with pytest.raises(expr.ExpressionError):
        expr.parse(payload.format(path=str(sentinel)))
    assert not sentinel.exists()


EDGE_FORMS = [
    "x + y",
    "x - y",
    "x * y",
    "x / y",
    "x // y",
    "x % y",
    "-x",
    "abs(x)",
    "min(x, y)",
    "max(x, y, 1)",
    "round(x)",
    "round(x, 2)",
    "round(x, -15)",
    "round(x, y)",
    "x < y",
    "x == y",
    "1 < x <= y",
    "round(x / 3, 1) * y",
]
EDGE_VALUES = [0, -1, 0.5, -0.0, 2**64 - 1, 10**400, 1e308, 5e-324, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("text", EDGE_FORMS)
def test_every_edge_value_in_every_form_gives_a_number_or_the_package_error(text: str) -> None:
    parsed = expr.parse(text)
    assert expr.check(parsed, {"x": Kind.NUMBER, "y": Kind.NUMBER}) == []
    for x in EDGE_VALUES:
        for y in EDGE_VALUES:
            try:
                value = expr.evaluate(parsed, {"x": x, "y": y})
            except EvaluationError as err:
                assert any(reason in str(err) for reason in RUNTIME_ONLY), (x, y, str(err))
            else:
                assert _kind(value) is expr.infer(parsed, {"x": Kind.NUMBER, "y": Kind.NUMBER})
