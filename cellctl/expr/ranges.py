"""`span_of`: the range a numeric expression may take, by interval arithmetic over its names.

A recipe's checks give the names' ranges (parameters' min and max, answers, repeat indexes);
a name without one is unknown, and a value that reads it is checked at run time instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cellctl.expr.nodes import BinOp, BoolOp, Call, Compare, Constant, Expression, Name, Node, Unary
from cellctl.expr.visitor import Visitor

_INF = math.inf


@dataclass(frozen=True)
class Span:
    """The values a numeric expression may take: low..high, whether whole, whether knowable.

    `known` is false when the value reads a tag or a call result: its range is then checked
    at run time.
    """

    low: float
    high: float
    whole: bool
    known: bool = True

    @staticmethod
    def of(low: float | None, high: float | None, whole: bool, known: bool = True) -> Span:
        """A span from optional limits (None: unbounded)."""
        return Span(-_INF if low is None else low, _INF if high is None else high, whole, known)


#: The span of a name whose range is not known before the run (a tag, an answer).
UNKNOWN_SPAN = Span(-_INF, _INF, False, False)


def span_of(expression: Expression, spans: Mapping[str, Span]) -> Span | None:
    """The range of a numeric expression given the ranges of its names; None if not numeric."""
    try:
        return _Ranges(spans).visit(expression.tree)
    except (OverflowError, ValueError):  # huge literals: leave them to the run-time check
        return None


def _product(x: float, y: float) -> float:
    return 0 if x == 0 or y == 0 else x * y  # 0 × ∞ is 0 here: a bound, not a value


def _join(values: Sequence[float], whole: bool, known: bool) -> Span:
    if any(math.isnan(v) for v in values):
        return Span(-_INF, _INF, whole, known)
    return Span(min(values), max(values), whole, known)


def _add(a: Span, b: Span, whole: bool, known: bool) -> Span:
    return Span(a.low + b.low, a.high + b.high, whole, known)


def _subtract(a: Span, b: Span, whole: bool, known: bool) -> Span:
    return Span(a.low - b.high, a.high - b.low, whole, known)


def _multiply(a: Span, b: Span, whole: bool, known: bool) -> Span:
    return _join([_product(x, y) for x in (a.low, a.high) for y in (b.low, b.high)], whole, known)


def _divide(a: Span, b: Span, floor: bool, known: bool) -> Span:
    if b.low <= 0 <= b.high:
        return Span(-_INF, _INF, floor, known)
    span = _join([x / y for x in (a.low, a.high) for y in (b.low, b.high)], floor, known)
    if floor:
        low = math.floor(span.low) if math.isfinite(span.low) else span.low
        high = math.floor(span.high) if math.isfinite(span.high) else span.high
        return Span(low, high, True, known)
    return span


def _modulo(a: Span, b: Span, whole: bool, known: bool) -> Span:
    # The result takes the divisor's sign, below its size.
    if b.low > 0:
        return Span(0, b.high, whole, known)
    if b.high < 0:
        return Span(b.low, 0, whole, known)
    return Span(-_INF, _INF, whole, known)


_BINARY: dict[str, Callable[[Span, Span, bool, bool], Span]] = {
    "+": _add,
    "-": _subtract,
    "*": _multiply,
    "/": lambda a, b, _whole, known: _divide(a, b, False, known),
    "//": lambda a, b, _whole, known: _divide(a, b, True, known),
    "%": _modulo,
}


def _abs(a: Span) -> Span:
    if a.low >= 0:
        return a
    if a.high <= 0:
        return Span(-a.high, -a.low, a.whole, a.known)
    return Span(0, max(-a.low, a.high), a.whole, a.known)


def _round(a: Span, digits: Node | None, known: bool) -> Span:
    """round(x) is whole; round(x, n ≥ 0) stays within the whole numbers around x."""
    n = digits.value if isinstance(digits, Constant) else None
    if digits is not None and not (isinstance(n, int) and not isinstance(n, bool) and n >= 0):
        return Span(-_INF, _INF, False, known)
    low = math.floor(a.low) if math.isfinite(a.low) else a.low
    high = math.ceil(a.high) if math.isfinite(a.high) else a.high
    return Span(low, high, digits is None, known)


class _Ranges(Visitor[Span | None]):
    """The span of each numeric node; None for a condition or a string."""

    def __init__(self, spans: Mapping[str, Span]) -> None:
        self.spans = spans

    def visit_constant(self, node: Constant) -> Span | None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return Span(value, value, isinstance(value, int))

    def visit_name(self, node: Name) -> Span | None:
        return self.spans.get(node.name, UNKNOWN_SPAN)

    def visit_unary(self, node: Unary) -> Span | None:
        if node.op == "not":
            return None
        inner = self.visit(node.operand)
        if inner is None or node.op == "+":
            return inner
        return Span(-inner.high, -inner.low, inner.whole, inner.known)

    def visit_binop(self, node: BinOp) -> Span | None:
        left, right = self.visit(node.left), self.visit(node.right)
        if left is None or right is None:
            return None
        return _BINARY[node.op](left, right, left.whole and right.whole, left.known and right.known)

    def visit_call(self, node: Call) -> Span | None:
        spans = [self.visit(arg) for arg in node.args]
        args = [a for a in spans if a is not None]
        if len(args) < len(spans):
            return None
        known = all(a.known for a in args)
        whole = all(a.whole for a in args)
        if node.func == "abs":
            return _abs(args[0])
        if node.func == "min":
            return Span(min(a.low for a in args), min(a.high for a in args), whole, known)
        if node.func == "max":
            return Span(max(a.low for a in args), max(a.high for a in args), whole, known)
        return _round(args[0], node.args[1] if len(node.args) == 2 else None, known)

    def visit_boolop(self, node: BoolOp) -> Span | None:
        return None

    def visit_compare(self, node: Compare) -> Span | None:
        return None
