"""Questions asked of a tree: which names it reads, which texts it compares with a name."""

from __future__ import annotations

import itertools

from cellctl.expr.nodes import Compare, Constant, Expression, Name, Node
from cellctl.expr.visitor import Walker


class _Names(Walker):
    def __init__(self) -> None:
        self.found: set[str] = set()

    def visit_name(self, node: Name) -> None:
        self.found.add(node.name)


#: One empty set for every expression that reads no name: a 10,000-step recipe holds thousands.
_NO_NAMES: frozenset[str] = frozenset()


def names_of(node: Node) -> frozenset[str]:
    """The names a tree reads: parameters, bound results and tags (not `true`, `false`)."""
    walker = _Names()
    walker.visit(node)
    return frozenset(walker.found) if walker.found else _NO_NAMES


class _Compared(Walker):
    def __init__(self) -> None:
        self.found: list[tuple[str, Constant]] = []

    def visit_compare(self, node: Compare) -> None:
        operands = [node.left, *node.comparators]
        for left, right in itertools.pairwise(operands):
            for name, text in ((left, right), (right, left)):
                if not (isinstance(name, Name) and isinstance(text, Constant)):
                    continue
                if isinstance(text.value, str):
                    self.found.append((name.name, text))
        self.generic_visit(node)


def compared_texts(expression: Expression) -> list[tuple[str, Constant]]:
    """Each name compared directly with a quoted string (`mode == 'auto'`), and that string."""
    walker = _Compared()
    walker.visit(expression.tree)
    return walker.found
