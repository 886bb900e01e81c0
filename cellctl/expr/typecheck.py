"""`check` and `infer`: the kinds of an expression's parts, before any value is read.

Booleans are not numbers here: `and`, `or`, `not` take conditions, arithmetic and ordering take
numbers, strings only compare; so a typo in a recipe is found before a device is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cellctl.errors import did_you_mean
from cellctl.expr.language import ExpressionError, Kind, shorten
from cellctl.expr.nodes import BinOp, BoolOp, Call, Compare, Constant, Expression, Name, Node, Unary
from cellctl.expr.visitor import Visitor


def check(
    expr: Expression, types: Mapping[str, Kind | None], expect: Kind | None = None
) -> list[ExpressionError]:
    """Problems of an expression against the kinds of the names it may use (unknown, mismatch).

    A name mapped to None is known but of unknown kind (its own definition is broken): it is
    not reported again here.
    """
    checker = _Checker(types)
    kind = checker.visit(expr.tree)
    if expect is not None and kind is not None and kind is not expect:
        checker.problem(expr.tree, f"expression must be {a_kind(expect)}, but it is {a_kind(kind)}")
    return checker.problems


def infer(expr: Expression, types: Mapping[str, Kind | None]) -> Kind | None:
    """The kind an expression yields, or None when `check` finds a problem that hides it."""
    return _Checker(types).visit(expr.tree)


def a_kind(kind: Kind) -> str:
    """'a condition', 'a number' or 'a string': a kind in a sentence."""
    return {Kind.BOOL: "a condition", Kind.NUMBER: "a number", Kind.STRING: "a string"}[kind]


class _Checker(Visitor[Kind | None]):
    """The kind of each node (None when unknown or wrong), with a problem for each fault."""

    def __init__(self, types: Mapping[str, Kind | None]) -> None:
        self.types = types
        self.problems: list[ExpressionError] = []

    def problem(self, node: Node, message: str) -> None:
        self.problems.append(ExpressionError(message, node.at))

    def visit_constant(self, node: Constant) -> Kind | None:
        if isinstance(node.value, bool):
            return Kind.BOOL
        return Kind.STRING if isinstance(node.value, str) else Kind.NUMBER

    def visit_name(self, node: Name) -> Kind | None:
        if node.name not in self.types:
            self.problem(node, f"unknown name {node.name!r}{did_you_mean(node.name, self.types)}")
            return None
        return self.types[node.name]

    def visit_boolop(self, node: BoolOp) -> Kind | None:
        for operand in node.values:
            self.want(operand, Kind.BOOL, f"'{node.op}'")
        return Kind.BOOL

    def visit_unary(self, node: Unary) -> Kind | None:
        if node.op == "not":
            self.want(node.operand, Kind.BOOL, "'not'")
            return Kind.BOOL
        return self.number([node.operand], f"unary '{node.op}'")

    def visit_binop(self, node: BinOp) -> Kind | None:
        return self.number([node.left, node.right], f"'{node.op}'")

    def visit_call(self, node: Call) -> Kind | None:
        return self.number(node.args, f"{node.func}()")

    def want(self, node: Node, kind: Kind, where: str) -> bool:
        """Report an operand that is not of `kind`; False when it was reported."""
        found = self.visit(node)
        if found is not None and found is not kind:
            # Strings only compare: adding or repeating them could build any text at run time.
            hint = " (strings can only be compared)" if found is Kind.STRING else ""
            self.problem(
                node,
                f"{where} needs {a_kind(kind)}, but {shorten(node.text)!r} is "
                f"{a_kind(found)}{hint}",
            )
            return False
        return True

    def number(self, operands: Sequence[Node], where: str) -> Kind | None:
        """A number from `operands`; None when one was wrong, so one fault is reported once."""
        fits = [self.want(operand, Kind.NUMBER, where) for operand in operands]
        return Kind.NUMBER if all(fits) else None

    def visit_compare(self, node: Compare) -> Kind | None:
        left_node = node.left
        left = self.visit(left_node)
        for symbol, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.visit(right_node)
            if left is not None and right is not None:
                if left is not right:
                    self.problem(
                        node,
                        f"cannot compare {a_kind(left)} ({shorten(left_node.text)!r}) with "
                        f"{a_kind(right)} ({shorten(right_node.text)!r})",
                    )
                elif left is Kind.BOOL and symbol not in ("==", "!="):
                    self.problem(node, f"'{symbol}' does not apply to conditions")
            left, left_node = right, right_node
        return Kind.BOOL
