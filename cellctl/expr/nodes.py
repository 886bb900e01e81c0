"""The expression tree: one small frozen node class per construct the language allows.

`parse` builds it from Python's `ast` once the whitelist has passed, so every walk over it
(see cellctl.expr.visitor) meets only these seven kinds and never an arbitrary `ast` node.
Each node keeps its text as written and its offset, for messages that point at it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

UnaryOp = Literal["not", "-", "+"]
BoolOperator = Literal["and", "or"]
BinaryOp = Literal["+", "-", "*", "/", "//", "%"]
CompareOp = Literal["==", "!=", "<", "<=", ">", ">="]


class _Leaf:
    """A node with nothing below it."""

    __slots__ = ()

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes below this one, left to right: none."""
        return ()


@dataclass(frozen=True, slots=True)
class Constant(_Leaf):
    """A number, a quoted string, or `true`/`false`."""

    value: bool | int | float | str
    at: int  # 0-based character offset in the expression text
    text: str  # as written


@dataclass(frozen=True, slots=True)
class Name(_Leaf):
    """A parameter, a bound result or a dotted tag name (`press.force_kN`)."""

    name: str
    at: int
    text: str


@dataclass(frozen=True, slots=True)
class Unary:
    """`not x`, `-x` or `+x`."""

    op: UnaryOp
    operand: Node
    at: int
    text: str

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes below this one, left to right."""
        return (self.operand,)


@dataclass(frozen=True, slots=True)
class BoolOp:
    """`a and b and ...` or `a or b or ...`."""

    op: BoolOperator
    values: tuple[Node, ...]
    at: int
    text: str

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes below this one, left to right."""
        return self.values


@dataclass(frozen=True, slots=True)
class BinOp:
    """Arithmetic on two numbers: `a + b`, `a // b`, ..."""

    op: BinaryOp
    left: Node
    right: Node
    at: int
    text: str

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes below this one, left to right."""
        return (self.left, self.right)


@dataclass(frozen=True, slots=True)
class Compare:
    """A comparison, chained as in Python: `1 < x <= 5` holds `ops` ('<', '<=')."""

    left: Node
    ops: tuple[CompareOp, ...]
    comparators: tuple[Node, ...]
    at: int
    text: str

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes below this one, left to right."""
        return (self.left, *self.comparators)


@dataclass(frozen=True, slots=True)
class Call:
    """A call of one of FUNCTIONS."""

    func: str
    args: tuple[Node, ...]
    at: int
    text: str

    @property
    def children(self) -> tuple[Node, ...]:
        """The nodes below this one, left to right."""
        return self.args


Node = Constant | Name | Unary | BoolOp | BinOp | Compare | Call


@dataclass(frozen=True)
class Expression:
    """A parsed, whitelisted expression; `names` are the dotted names it reads."""

    text: str
    names: frozenset[str]
    tree: Node = field(repr=False, compare=False)

    def offset(self, node: Node) -> int:
        """The 0-based character offset of a node in the text."""
        return node.at

    def __str__(self) -> str:
        return self.text
