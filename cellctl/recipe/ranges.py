"""What a recipe check knows of values: the ranges expressions may take (interval arithmetic
over the min and max of parameters, answers and repeat indexes), what each value is written to
and accepts, and the names in scope at each point of the recipe.

A value that reads a tag or a call result is not known before the run: its range is checked
at run time, before it is sent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from cellctl import expr
from cellctl.cell import INTEGER_TYPES, Tag
from cellctl.errors import BadValue
from cellctl.expr import UNKNOWN_SPAN as ANY
from cellctl.expr import Span, span_of
from drivers import codecs
from drivers.base import Value
from drivers.errors import WriteRejected
from drivers.points import DataType

__all__ = [
    "ANY",
    "COUNT",
    "KIND_WORDS",
    "MAX_REPEAT",
    "TEXT_HINT",
    "Block",
    "Loc",
    "Scope",
    "Span",
    "Target",
    "Write",
    "arg_target",
    "show_number",
    "span_of",
    "tag_target",
    "whole_value",
]

#: Most rounds a repeat may run: a recipe loop is bounded like any loop that drives machines.
MAX_REPEAT = 1_000_000

#: A path into the recipe's raw data.
Loc = tuple[str | int, ...]
_INF = math.inf


# ---------------------------------------------------------------------------------------------
# What a value is written to


@dataclass(frozen=True)
class Target:
    """Where a value goes (a tag, a method argument, a repeat count) and what it accepts."""

    what: str
    kind: expr.Kind
    integral: bool  # only whole numbers
    bounded: bool  # a value from parameters must have a finite range
    check: Callable[[Value], object]  # raises BadValue


def tag_target(name: str, tag: Tag) -> Target:
    """A tag as the target of a set: its type, scaling and min/max."""
    datatype = tag.datatype
    integral = datatype in INTEGER_TYPES
    return Target(
        f"tag {name} ({datatype.value})",
        expr.kind_of(datatype),
        integral and not tag.scaled,
        integral or tag.min is not None or tag.max is not None,
        tag.check_value,
    )


def arg_target(method: str, arg: str, datatype: DataType) -> Target:
    """A method argument as the target of a call's arg: its type's range."""

    def check(value: Value) -> object:
        try:
            return codecs.check_value(datatype, value)
        except WriteRejected as err:
            raise BadValue(str(err)) from None

    integral = datatype in INTEGER_TYPES
    return Target(
        f"arg {arg} of {method} ({datatype.value})",
        expr.kind_of(datatype),
        integral,
        integral,
        check,
    )


def _check_count(value: Value) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValue(f"expects a whole number, got {value!r}")
    if not float(value).is_integer():
        raise BadValue(f"expects a whole number, got {value!r}")
    if not 0 <= value <= MAX_REPEAT:
        raise BadValue(f"expects 0..{MAX_REPEAT}, got {show_number(value)}")
    return value


COUNT = Target("a repeat count", expr.Kind.NUMBER, True, True, _check_count)

#: A value of each kind, in words.
KIND_WORDS = {
    expr.Kind.BOOL: "a condition",
    expr.Kind.NUMBER: "a number",
    expr.Kind.STRING: "a text",
}
TEXT_HINT = " (a fixed text is written in quotes inside the value: \"'LOT-42'\")"


def show_number(value: float) -> str:
    """A number as messages show it: whole numbers without a decimal point."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def whole_value(value: float) -> Value:
    """A float that is whole as an int (a bound checked the way the value would be)."""
    return int(value) if float(value).is_integer() else value


@dataclass
class Scope:
    """The names an expression may use at one point of the recipe: kinds and ranges."""

    kinds: dict[str, expr.Kind | None]
    spans: dict[str, Span]

    def copy(self) -> Scope:
        """A scope of its own for a nested block: what it binds stays there."""
        return Scope(dict(self.kinds), dict(self.spans))

    def add(self, name: str, kind: expr.Kind | None, span: Span) -> None:
        """Put a name in scope with its kind (None: unknown) and range."""
        self.kinds[name] = kind
        self.spans[name] = span


@dataclass
class Write:
    """A step's write of a tag: the step's label and where the write is written."""

    label: str
    loc: Loc
    line: int


@dataclass
class Block:
    """What a block of steps did: the tags it writes, the names it binds for later steps."""

    writes: dict[str, Write] = field(default_factory=dict)
    exports: dict[str, tuple[expr.Kind | None, Span]] = field(default_factory=dict)
