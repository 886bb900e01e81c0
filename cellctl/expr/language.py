"""What the language is made of apart from its tree: kinds, functions, errors."""

from __future__ import annotations

import enum

from cellctl.errors import CellctlError
from drivers.points import DataType

#: The functions an expression may call.
FUNCTIONS = ("abs", "min", "max", "round")
_SHOWN = 60  # longest piece of expression text quoted in a message


class Kind(enum.StrEnum):
    """What an expression or a name yields: a condition, a number or a text."""

    BOOL = "bool"
    NUMBER = "number"
    STRING = "string"


def kind_of(datatype: DataType) -> Kind:
    """The expression kind of a tag's data type."""
    if datatype is DataType.BOOL:
        return Kind.BOOL
    if datatype is DataType.STRING:
        return Kind.STRING
    return Kind.NUMBER


class ExpressionError(CellctlError):
    """An expression that is refused; `col` is the 0-based offset of the fault in the text."""

    def __init__(self, message: str, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.col = col


class EvaluationError(CellctlError):
    """An expression that cannot be evaluated with the values at hand (missing value, ÷0)."""


def shorten(text: str) -> str:
    """A piece of expression text short enough to quote in a message."""
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"
