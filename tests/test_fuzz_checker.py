"""Fuzzing the expression checker against a cell's tags: what the loaders accept runs as checked.

test_expr_fuzz.py fuzzes the language against a fixed table of kinds. Here expressions meet
the checks a recipe and a cell file get: tag kinds, parameter ranges, tag ranges, whole
numbers, repeat counts. The property is the checker's promise: a recipe that loads never
writes a value its tag refuses and never repeats a count that is not a whole number in range,
for any parameter values within their declared ranges; an interlock condition that loads
gives true or false (or a failure no type can foresee) for any values of its tags' types.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from cellctl import expr
from cellctl.cell import Cell, load_cell
from cellctl.errors import BadValue, ValidationFailed
from cellctl.recipe import load_recipe
from cellctl.recipe.model import iter_steps
from cellctl.recipe.steps.repeat import RepeatStep
from cellctl.recipe.steps.set import SetStep
from drivers.base import Value
from drivers.codecs import FLOAT32_MAX, INT_RANGES
from drivers.points import Access, DataType
from tests.fuzz_corpus import cases

DEMO_CELL = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"
# What evaluation may still refuse once the checker found nothing (as in test_expr_fuzz.py).
RUNTIME_ONLY = ("division by zero", "number too large", "cannot round", "whole digits")
# The most a repeat may count (the checker's COUNT target).
MOST_REPEATS = 1_000_000

# Parameters of every generated recipe: ranged numbers, an unranged int, a bool, an enum.
PARAMETERS: dict[str, dict[str, Any]] = {
    "n": {"type": "int", "min": -5, "max": 70000},
    "k": {"type": "int", "min": 1, "max": 20},
    "f": {"type": "float", "min": 0, "max": 30.5},
    "g": {"type": "float", "min": -1e300, "max": 1e300},
    "u": {"type": "int"},
    "b": {"type": "bool"},
    "s": {"type": "enum", "choices": ["A", "B"]},
}


@functools.cache
def demo_cell() -> Cell:
    """The demo cell, loaded once."""
    return load_cell(DEMO_CELL)


def _writable() -> list[str]:
    return sorted(name for name, tag in demo_cell().tags.items() if tag.access is Access.RW)


def _numbers() -> st.SearchStrategy[str]:
    return st.one_of(
        st.integers(-70000, 70000).map(str),
        st.sampled_from(["0.5", "25", "25.0001", "3000", "3001", "65535", "65536", "-1"]),
        st.sampled_from(["1e308", "1e-300", "18446744073709551615", "0", "2.5", "1000000"]),
    )


@st.composite
def expressions(draw: st.DrawFn, leaves: st.SearchStrategy[str], depth: int = 3) -> str:
    """Expression text over `leaves`: arithmetic, comparisons, logic and the functions."""
    if depth == 0 or draw(st.integers(0, 2)) == 0:
        return draw(leaves)

    def child() -> str:
        return draw(expressions(leaves, depth - 1))

    form = draw(st.integers(0, 6))
    if form == 0:
        op = draw(st.sampled_from(["+", "-", "*", "/", "//", "%", "+", "-", "*"]))
        return f"({child()} {op} {child()})"
    if form == 1:
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!=", "and", "or"]))
        return f"({child()} {op} {child()})"
    if form == 2:
        return f"{draw(st.sampled_from(['-', 'not ', 'abs', 'round']))}({child()})"
    if form == 3:
        return f"round({child()}, {draw(st.integers(-3, 3))})"
    if form == 4:
        return f"{draw(st.sampled_from(['min', 'max']))}({child()}, {child()})"
    return draw(leaves)


def _recipe_leaves() -> st.SearchStrategy[str]:
    # Numeric parameters most often: set values over them are what the range checks judge.
    return st.one_of(
        st.sampled_from(["n", "k", "f", "n", "k", "f", "g", "u"]),
        st.sampled_from([*PARAMETERS, *demo_cell().tags, "true", "false", "'A'", "'C'"]),
        _numbers(),
    )


@st.composite
def recipes(draw: st.DrawFn) -> dict[str, Any]:
    """A recipe over the demo cell: sets, waits, ifs and repeats of generated expressions."""
    # Half simple forms over one parameter: they load most often, so the range checks judge.
    simple = st.tuples(
        st.sampled_from(["n", "k", "f", "g", "u"]),
        st.sampled_from(["", " * ", " + ", " - ", " / ", " // ", " % "]),
        _numbers(),
    ).map(lambda parts: parts[0] + (parts[1] + parts[2] if parts[1] else ""))
    values = st.one_of(simple, expressions(_recipe_leaves()))
    steps: list[dict[str, Any]] = []
    for index in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["set", "set", "wait", "if", "repeat"]))
        step_id = f"s{index}"
        if kind == "set":
            tags = draw(st.lists(st.sampled_from(_writable()), min_size=1, max_size=2, unique=True))
            steps.append({"id": step_id, "set": {tag: draw(values) for tag in tags}})
        elif kind == "wait":
            steps.append({"id": step_id, "wait": draw(values), "timeout": "1s"})
        elif kind == "if":
            steps.append({"id": step_id, "if": draw(values), "delay": "1ms"})
        else:
            steps.append({"id": step_id, "repeat": draw(values), "steps": [{"delay": "1ms"}]})
    return {"recipe": "fuzz", "version": 1, "parameters": PARAMETERS, "steps": steps}


def _ends(spec: dict[str, Any] | DataType) -> list[Value]:
    """The values at the ends of a parameter's range or choices, or of a tag type's range
    (finite: an interlock trips on a NaN or an infinity before it evaluates)."""
    if isinstance(spec, DataType):
        if spec in INT_RANGES:
            return list(INT_RANGES[spec])
        ends: dict[DataType, list[Value]] = {
            DataType.BOOL: [False, True],
            DataType.STRING: ["", "A"],
            DataType.FLOAT32: [-FLOAT32_MAX, FLOAT32_MAX],
            DataType.FLOAT64: [-sys.float_info.max, sys.float_info.max],
        }
        return ends[spec]
    kind = spec["type"]
    if kind == "bool":
        return [False, True]
    if kind == "enum":
        return list(spec["choices"])
    low, high = spec.get("min"), spec.get("max")
    if kind == "int":
        return [-(2**63) if low is None else int(low), 2**63 - 1 if high is None else int(high)]
    assert low is not None and high is not None  # every float parameter here is ranged
    return [float(low), float(high)]


def _values_of(spec: dict[str, Any] | DataType) -> st.SearchStrategy[Value]:
    """Values of a parameter within its declared range and choices, or of a tag's type."""
    ends = _ends(spec)
    if isinstance(spec, DataType) and spec is DataType.STRING:
        return st.text(max_size=8)
    low, high = ends[0], ends[-1]
    if isinstance(low, bool | str):
        return st.sampled_from(ends)
    if isinstance(low, int) and isinstance(high, int):
        return st.one_of(
            st.sampled_from([low, high, 0 if low <= 0 <= high else low]), st.integers(low, high)
        )
    assert isinstance(low, float) and isinstance(high, float)
    return st.one_of(st.sampled_from([low, high]), st.floats(low, high))


#: Sets of values for names (given as parameter specs or tag types), to check a property for.
Samples = Callable[[Mapping[str, Any]], Iterable[dict[str, Value]]]


def drawn(data: st.DataObject, count: int = 3) -> Samples:
    """`count` sets of values drawn by hypothesis: within ranges, of the tags' types."""

    def samples(specs: Mapping[str, Any]) -> Iterator[dict[str, Value]]:
        for _ in range(count):
            yield {name: data.draw(_values_of(spec)) for name, spec in sorted(specs.items())}

    return samples


def edges(specs: Mapping[str, Any]) -> Iterator[dict[str, Value]]:
    """Every name at the low end of its values, then every name at the high end."""
    for end in (0, -1):
        yield {name: _ends(spec)[end] for name, spec in sorted(specs.items())}


def check_recipe(text: str, workdir: Path, samples: Samples) -> None:
    """Load the recipe; when it loads, every write and repeat count is what the checker said
    for each set of parameter values `samples` gives (drawn within the declared ranges)."""
    path = workdir / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        loaded = load_recipe(path, demo_cell())
    except ValidationFailed as err:
        assert err.problems
        return
    recipe = loaded.recipe
    for values in samples(PARAMETERS):
        for step, _ in iter_steps(recipe.steps):
            if isinstance(step, SetStep):
                for tag, expression in step.set.items():
                    if expression.names - values.keys():
                        continue  # reads a tag: its value is the device's, not ranged here
                    value = _evaluated(expression, values)
                    if value is not None:
                        try:
                            demo_cell().tags[tag].check_value(value)
                        except BadValue as err:
                            raise AssertionError(
                                f"set {tag}: {expression.text!r} with {values} is {value!r}, "
                                f"which the tag refuses although the recipe loaded: {err}"
                            ) from None
            elif isinstance(step, RepeatStep) and not step.repeat.names - values.keys():
                count = _evaluated(step.repeat, values)
                if count is not None:
                    assert not isinstance(count, bool) and isinstance(count, int | float)
                    assert float(count).is_integer() and 0 <= count <= MOST_REPEATS, (
                        step.repeat.text,
                        values,
                        count,
                    )


def _evaluated(expression: expr.Expression, values: dict[str, Value]) -> Value | None:
    """The expression's value, or None for a failure that only the values can cause."""
    try:
        return expr.evaluate(expression, values)
    except expr.EvaluationError as err:
        assert any(reason in str(err) for reason in RUNTIME_ONLY), (expression.text, str(err))
        return None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where each example writes its file (overwritten by the next)."""
    return tmp_path_factory.mktemp("fuzz-checker")


SLOW_OK = [HealthCheck.too_slow, HealthCheck.filter_too_much]


@given(recipe=recipes(), data=st.data())
@settings(max_examples=60, suppress_health_check=SLOW_OK)
def test_fuzz_a_recipe_that_loads_writes_what_its_tags_take(
    recipe: dict[str, Any], data: st.DataObject, workdir: Path
) -> None:
    check_recipe(json.dumps(recipe), workdir, drawn(data))


@pytest.mark.extended
@pytest.mark.timeout(240)  # many examples: beyond the suite's 60 s per test
@given(recipe=recipes(), data=st.data())
@settings(max_examples=2000, suppress_health_check=SLOW_OK)
def test_fuzz_recipe_checker_many(
    recipe: dict[str, Any], data: st.DataObject, workdir: Path
) -> None:
    check_recipe(json.dumps(recipe), workdir, drawn(data))


@st.composite
def conditions(draw: st.DrawFn) -> str:
    """A condition over the demo cell's tags."""
    leaves = st.one_of(st.sampled_from(sorted(demo_cell().tags)), _numbers())
    return draw(expressions(leaves))


def check_interlock(when: str, workdir: Path, samples: Samples) -> None:
    """Add an interlock on `when` to the demo cell; when the cell loads, the condition gives
    true or false for any values of its tags' types, and explaining it never fails."""
    document = YAML(typ="safe", pure=True).load(DEMO_CELL.read_text(encoding="utf-8"))
    document["interlocks"].append({"name": "fuzzed", "when": when, "action": "hold"})
    path = workdir / "cell.yaml"
    path.write_text(json.dumps(document), encoding="utf-8")
    try:
        cell = load_cell(path)
    except ValidationFailed as err:
        assert err.problems
        return
    condition = expr.parse(cell.interlocks[-1].when)
    for values in samples({name: cell.tags[name].datatype for name in condition.names}):
        try:
            result = expr.evaluate(condition, values)
        except expr.EvaluationError as err:
            assert any(reason in str(err) for reason in RUNTIME_ONLY), (when, str(err))
            continue
        assert isinstance(result, bool), (when, values, result)
        assert all(isinstance(part, str) for part in expr.false_parts(condition, values))


@given(when=conditions(), data=st.data())
@settings(max_examples=20, suppress_health_check=SLOW_OK)
def test_fuzz_an_interlock_that_loads_is_true_or_false(
    when: str, data: st.DataObject, workdir: Path
) -> None:
    check_interlock(when, workdir, drawn(data))


@pytest.mark.extended
@pytest.mark.timeout(240)  # many examples: beyond the suite's 60 s per test
@given(when=conditions(), data=st.data())
@settings(max_examples=800, suppress_health_check=SLOW_OK)
def test_fuzz_interlock_checker_many(when: str, data: st.DataObject, workdir: Path) -> None:
    check_interlock(when, workdir, drawn(data))


@pytest.mark.parametrize("case", cases("checker"))
def test_fuzz_checker_corpus(case: dict[str, Any], workdir: Path) -> None:
    # Each name at both ends of its range: where a range check that is off by one fails.
    if "when" in case:
        check_interlock(case["when"], workdir, edges)
        return
    recipe = {"recipe": "corpus", "version": 1, "parameters": PARAMETERS, "steps": [case["step"]]}
    check_recipe(json.dumps(recipe), workdir, edges)


def test_fuzz_a_plain_generated_shape_loads(workdir: Path) -> None:
    # The generator's shapes get past the checker, so the property above is exercised.
    recipe = {
        "recipe": "fuzz",
        "version": 1,
        "parameters": PARAMETERS,
        "steps": [
            {"id": "s0", "set": {"conveyor.speed_rpm": "k * 100", "press.setpoint_kN": "f / 2"}},
            {"id": "s1", "repeat": "k", "steps": [{"delay": "1ms"}]},
        ],
    }
    path = workdir / "plain.yaml"
    path.write_text(json.dumps(recipe), encoding="utf-8")
    assert load_recipe(path, demo_cell()).recipe.recipe == "fuzz"
