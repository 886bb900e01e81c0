"""`evaluate`: the value of an expression, by walking its tree; never eval.

Evaluation checks kinds again on the values it reads (a mapping from outside may hold anything)
and refuses a result beyond the float range, a division by zero and round()'s bad digits.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Callable, Mapping
from typing import Any

from cellctl.expr.language import EvaluationError, Kind, shorten
from cellctl.expr.nodes import BinOp, BoolOp, Call, Compare, Constant, Expression, Name, Node, Unary
from cellctl.expr.parser import MAX_ROUND_DIGITS, whole_digits
from cellctl.expr.visitor import Visitor
from drivers.base import Value

_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "//": operator.floordiv,
    "%": operator.mod,
}
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def evaluate(expr: Expression, values: Mapping[str, Value]) -> Value:
    """The value of an expression, reading names from `values`; raises EvaluationError."""
    return _Evaluator(expr, values).visit(expr.tree)


def _value_kind(value: object) -> Kind | None:
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, int | float):
        return Kind.NUMBER
    return Kind.STRING if isinstance(value, str) else None


def _beyond_float(value: float) -> bool:
    """True for a result no float can hold: an infinity, or a whole number past the float range."""
    if isinstance(value, float):
        return math.isinf(value)
    return abs(value) > sys.float_info.max


class _Evaluator(Visitor[Value]):
    def __init__(self, expr: Expression, values: Mapping[str, Value]) -> None:
        self.expr = expr
        self.values = values

    def fail(self, message: str) -> EvaluationError:
        return EvaluationError(f"{message} in {self.expr.text!r}")

    def visit_constant(self, node: Constant) -> Value:
        return node.value

    def visit_name(self, node: Name) -> Value:
        if node.name not in self.values:
            raise self.fail(f"no value for {node.name!r}")
        return self.values[node.name]

    def visit_boolop(self, node: BoolOp) -> Value:
        stop = node.op == "or"  # 'or' stops at the first true, 'and' at a false
        for item in node.values:
            if self.condition(item) is stop:
                return stop
        return not stop

    def visit_unary(self, node: Unary) -> Value:
        if node.op == "not":
            return not self.condition(node.operand)
        number = self.number(node.operand)
        return -number if node.op == "-" else number

    def visit_binop(self, node: BinOp) -> Value:
        left, right = self.number(node.left), self.number(node.right)
        try:
            result = _ARITHMETIC[node.op](left, right)
        except ZeroDivisionError:
            raise self.fail(f"division by zero ({shorten(node.text)!r})") from None
        except OverflowError:
            result = math.inf
        if _beyond_float(result):
            raise self.fail(f"number too large ({shorten(node.text)!r})")
        return result

    def condition(self, node: Node) -> bool:
        value = self.visit(node)
        if not isinstance(value, bool):
            raise self.fail(f"{shorten(node.text)!r} is {value!r}, not true or false")
        return value

    def number(self, node: Node) -> int | float:
        value = self.visit(node)
        if _value_kind(value) is not Kind.NUMBER:
            raise self.fail(f"{shorten(node.text)!r} is {value!r}, not a number")
        assert isinstance(value, int | float)
        return value

    def visit_compare(self, node: Compare) -> Value:
        left = self.visit(node.left)
        for symbol, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.visit(right_node)
            kind = _value_kind(left)
            if kind is None or kind is not _value_kind(right):
                raise self.fail(f"cannot compare {left!r} {symbol} {right!r}")
            if kind is Kind.BOOL and symbol not in ("==", "!="):
                raise self.fail(f"cannot compare {left!r} {symbol} {right!r}")
            if not _COMPARE[symbol](left, right):
                return False
            left = right
        return True

    def visit_call(self, node: Call) -> Value:
        args = [self.number(arg) for arg in node.args]
        if node.func == "abs":
            return abs(args[0])
        if node.func == "min":
            return min(args)
        if node.func == "max":
            return max(args)
        digits = args[1] if len(args) == 2 else None
        if digits is not None and not whole_digits(digits):
            raise self.fail(
                f"round() needs whole digits in -{MAX_ROUND_DIGITS}..{MAX_ROUND_DIGITS}, "
                f"got {digits!r}"
            )
        try:
            return round(args[0], digits)
        except (OverflowError, ValueError):  # round(inf) or round(nan)
            raise self.fail(f"cannot round {args[0]!r}") from None
