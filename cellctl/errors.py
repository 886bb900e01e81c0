"""Errors raised by cellctl: one base class, located problems for files, specific subclasses."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class CellctlError(Exception):
    """Base class of every cellctl failure; the message names the file, tag, device or step."""


@dataclass(frozen=True)
class Problem:
    """One located problem in a file: 1-based line and column, a short code and a message."""

    file: str
    line: int
    col: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.message}"

    def to_json(self) -> dict[str, str | int]:
        """The problem as a JSON-ready dict."""
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "code": self.code,
            "message": self.message,
        }


class ValidationFailed(CellctlError):
    """A file has problems; all of them are in `problems`, one per line of the message."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


class InvalidField(CellctlError, ValueError):
    """A field value a validator refuses; pydantic reports it at the field, with this code."""

    def __init__(self, message: str, code: str = "invalid") -> None:
        super().__init__(message)
        self.code = code


class BadValue(CellctlError):
    """A value given for a tag does not fit it (type, range, read-only)."""


class UnknownTag(CellctlError):
    """A tag name that the cell file does not define."""


class UnknownDevice(CellctlError):
    """A device name that the cell file does not define."""


class UnknownMethod(CellctlError):
    """A method name that the cell file does not define."""


class MissingSecret(CellctlError):
    """A secret the cell file refers to (an environment variable) is not set."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'host'?)' when one of `choices` is close to `word`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def quote(text: str) -> str:
    """A text quoted for a message, cut short when long (5000 digits help nobody)."""
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")
