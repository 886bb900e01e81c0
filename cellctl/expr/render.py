"""Expressions and values back to text: values as an expression writes them, and a tree
rendered with parameter values in place of their names (the plan shows a recipe that way).

`render` writes what `ast.unparse` would for the same tree, parentheses included, so a
rendered text parses back to the same tree.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping

from cellctl.expr.nodes import BinOp, BoolOp, Call, Compare, Constant, Expression, Name, Unary
from cellctl.expr.visitor import Visitor
from drivers.base import Value
from drivers.codecs import format_value

# Binding strengths as ast.unparse ranks them; a part binding less than its place needs is
# put in parentheses.
_TEST, _OR, _AND, _NOT, _CMP, _EXPR = 4, 5, 6, 7, 8, 9
_ARITH, _TERM, _FACTOR, _ATOM = 13, 14, 15, 18
_BINARY = {"+": _ARITH, "-": _ARITH, "*": _TERM, "/": _TERM, "//": _TERM, "%": _TERM}
_INFINITY = "1e" + repr(sys.float_info.max_10_exp + 1)  # a literal that reads as inf


def show(value: Value | None) -> str:
    """A value as an expression writes it: true, 12.0, 'A12'; '—' for no value."""
    return repr(value) if isinstance(value, str) else format_value(value)


def show_values(values: Mapping[str, Value | None]) -> str:
    """'press.force_kN = 12.0, safety.ok = false': tags (or names) and their values."""
    return ", ".join(f"{name} = {show(value)}" for name, value in values.items())


def render(expression: Expression, values: Mapping[str, Value]) -> str:
    """The expression's text with the values of plain names (parameters) in their place;
    dotted tag names are left alone. The text as written when it names none of them."""
    if not expression.names & values.keys():
        return expression.text.strip()
    return _Render(values).visit(expression.tree)[0]


def _literal(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value).replace("inf", _INFINITY).replace("nan", f"({_INFINITY}-{_INFINITY})")
    return repr(value)


def _fit(part: tuple[str, int], needed: int) -> str:
    """A rendered part, in parentheses when it binds less than its place needs."""
    text, strength = part
    return f"({text})" if needed > strength else text


class _Render(Visitor[tuple[str, int]]):
    """Each node's text and how strongly it binds."""

    def __init__(self, values: Mapping[str, Value]) -> None:
        self.values = values

    def visit_constant(self, node: Constant) -> tuple[str, int]:
        return _literal(node.value), _ATOM

    def visit_name(self, node: Name) -> tuple[str, int]:
        if "." not in node.name and node.name in self.values:
            return _literal(self.values[node.name]), _ATOM
        return node.name, _ATOM

    def visit_unary(self, node: Unary) -> tuple[str, int]:
        if node.op == "not":
            return f"not {_fit(self.visit(node.operand), _NOT)}", _NOT
        return f"{node.op}{_fit(self.visit(node.operand), _FACTOR)}", _FACTOR

    def visit_boolop(self, node: BoolOp) -> tuple[str, int]:
        strength = _AND if node.op == "and" else _OR
        # As ast.unparse does: each further operand is held to a stronger binding.
        parts = [
            _fit(self.visit(value), min(strength + index, _ATOM))
            for index, value in enumerate(node.values, start=1)
        ]
        return f" {node.op} ".join(parts), strength

    def visit_binop(self, node: BinOp) -> tuple[str, int]:
        strength = _BINARY[node.op]
        left = _fit(self.visit(node.left), strength)
        right = _fit(self.visit(node.right), strength + 1)
        return f"{left} {node.op} {right}", strength

    def visit_compare(self, node: Compare) -> tuple[str, int]:
        text = _fit(self.visit(node.left), _EXPR)
        for symbol, right in zip(node.ops, node.comparators, strict=True):
            text += f" {symbol} {_fit(self.visit(right), _EXPR)}"
        return text, _CMP

    def visit_call(self, node: Call) -> tuple[str, int]:
        args = ", ".join(_fit(self.visit(arg), _TEST) for arg in node.args)
        return f"{node.func}({args})", _ATOM
