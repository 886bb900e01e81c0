"""The one way to walk an expression tree: a method per node kind.

Evaluation, type checking, ranges, rendering and every question asked of a tree are
subclasses of `Visitor`. A kind without a method of its own goes to `generic_visit`: a walk
that cares about a few kinds overrides that (`Walker` visits the children of the rest).
"""

from __future__ import annotations

from typing import Generic, TypeVar, assert_never

from cellctl.expr.nodes import BinOp, BoolOp, Call, Compare, Constant, Name, Node, Unary

T = TypeVar("T")


class Visitor(Generic[T]):
    """A walk over an expression tree that yields a T for each node it visits."""

    def visit(self, node: Node) -> T:
        """Dispatch `node` to the method for its kind."""
        match node:
            case Constant():
                return self.visit_constant(node)
            case Name():
                return self.visit_name(node)
            case Unary():
                return self.visit_unary(node)
            case BoolOp():
                return self.visit_boolop(node)
            case BinOp():
                return self.visit_binop(node)
            case Compare():
                return self.visit_compare(node)
            case Call():
                return self.visit_call(node)
        assert_never(node)

    def generic_visit(self, node: Node) -> T:
        """A node of a kind this visitor has no method of its own for."""
        raise NotImplementedError(f"{type(self).__name__} cannot visit {type(node).__name__}")

    def visit_constant(self, node: Constant) -> T:
        """A number, a string, `true` or `false`."""
        return self.generic_visit(node)

    def visit_name(self, node: Name) -> T:
        """A parameter, bound or tag name."""
        return self.generic_visit(node)

    def visit_unary(self, node: Unary) -> T:
        """`not x`, `-x`, `+x`."""
        return self.generic_visit(node)

    def visit_boolop(self, node: BoolOp) -> T:
        """`and`, `or`."""
        return self.generic_visit(node)

    def visit_binop(self, node: BinOp) -> T:
        """Arithmetic."""
        return self.generic_visit(node)

    def visit_compare(self, node: Compare) -> T:
        """A comparison, maybe chained."""
        return self.generic_visit(node)

    def visit_call(self, node: Call) -> T:
        """A function call."""
        return self.generic_visit(node)


class Walker(Visitor[None]):
    """A visitor that, unless told otherwise, visits every node's children left to right."""

    def generic_visit(self, node: Node) -> None:
        """Visit the nodes below `node`."""
        for child in node.children:
            self.visit(child)
