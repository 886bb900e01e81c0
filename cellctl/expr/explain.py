"""Why a condition is not true: the parts of a top-level `and` that fail, with what they read."""

from __future__ import annotations

from collections.abc import Mapping

from cellctl.expr.evaluator import evaluate
from cellctl.expr.language import EvaluationError
from cellctl.expr.nodes import BoolOp, Expression, Name, Node, Unary
from cellctl.expr.parser import parse
from cellctl.expr.render import show_values
from cellctl.expr.visitor import Visitor
from drivers.base import Value


class _Conjuncts(Visitor[list[Node]]):
    """The parts of a top-level `and`, nested ones flattened; any other node is one part."""

    def visit_boolop(self, node: BoolOp) -> list[Node]:
        if node.op != "and":
            return [node]
        return [part for value in node.values for part in self.visit(value)]

    def generic_visit(self, node: Node) -> list[Node]:
        return [node]


def conjuncts(expression: Expression) -> list[Expression]:
    """The parts of a top-level `and` (nested ones flattened), else the expression itself."""
    parts = _Conjuncts().visit(expression.tree)
    if parts[0] is expression.tree:
        return [expression]
    # Parsed again from its own text: a part of a checked expression parses as one.
    return [parse(part.text) for part in parts]


class _Said(Visitor[str]):
    """How a false part is said: 'x is false', 'x is true' for `not x`, else the part."""

    def __init__(self, part: Expression, read: Mapping[str, Value | None]) -> None:
        self.part = part
        self.read = read

    def visit_unary(self, node: Unary) -> str:
        operand = node.operand
        if node.op == "not" and isinstance(operand, Name) and operand.name in self.read:
            return f"{operand.name} is true"
        return self.generic_visit(node)

    def visit_name(self, node: Name) -> str:
        return f"{node.name} is false" if node.name in self.read else self.generic_visit(node)

    def visit_boolop(self, node: BoolOp) -> str:
        return f"({self.part.text}) is false"

    def generic_visit(self, node: Node) -> str:
        return f"{self.part.text} is false"


def false_parts(expression: Expression, values: Mapping[str, Value | None]) -> list[str]:
    """Each part of a top-level `and` that is not true on `values`, with the values it read:
    'press.cycle_done is true (press.cycle_done = true)'; a tag without a value (None) is
    named as such."""
    known = {name: value for name, value in values.items() if value is not None}
    found: list[str] = []
    for part in conjuncts(expression):
        read = {name: value for name, value in values.items() if name in part.names}
        missing = [name for name in read if name not in known]
        if missing:
            found.append(f"{part.text}: no value for {', '.join(missing)}")
            continue
        try:
            if evaluate(part, known) is True:
                continue
        except EvaluationError as err:
            found.append(f"{part.text} cannot be evaluated: {err}")
            continue
        said = _Said(part, read).visit(part.tree)
        found.append(f"{said} ({show_values(read)})" if read else said)
    return found
