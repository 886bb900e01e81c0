"""Problems found in one YAML document, each located by its path into the document: what the
cell file's rules and a recipe's checks report into."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from cellctl.errors import Problem
from cellctl.yamlload import Loc, YamlDocument, scalar_offset

__all__ = ["Problems"]


class _Fault(Protocol):
    """A fault at a character of an expression's text (cellctl.expr.ExpressionError)."""

    @property
    def message(self) -> str: ...

    @property
    def col(self) -> int: ...


class Problems:
    """The problems found so far in one YAML document."""

    def __init__(self, doc: YamlDocument) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def add(
        self, loc: Loc, code: str, message: str, *, key: bool = False, col_offset: int = 0
    ) -> None:
        """Report a problem at `loc` (at its key when `key`, `col_offset` into its scalar)."""
        self.problems.append(self.doc.problem(loc, code, message, key=key, col_offset=col_offset))

    def add_faults(self, loc: Loc, subject: str, faults: Iterable[_Fault], raw: object) -> None:
        """Report each fault of the expression `raw` (the YAML scalar at `loc`) at its column."""
        for fault in faults:
            self.add(
                loc,
                "expression",
                f"{subject}: {fault.message}",
                col_offset=scalar_offset(raw, fault.col),
            )
