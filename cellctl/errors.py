"""Errors raised by cellctl: one base class that carries its exit code, located problems for
files, specific subclasses whose fields name what failed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import ClassVar

from cellctl import exitcodes


class CellctlError(Exception):
    """Base class of every cellctl failure; the message names the file, tag, device or step."""

    #: The CLI's exit code when this error ends a command (cellctl.exitcodes).
    exit_code: ClassVar[int] = exitcodes.BAD_INPUT


class SubjectKind(StrEnum):
    """What kind of thing a problem is about."""

    TAG = "tag"
    DEVICE = "device"
    METHOD = "method"
    STEP = "step"
    PARAMETER = "parameter"


@dataclass(frozen=True)
class Subject:
    """The thing a problem is about: a tag, device, method, step or parameter, by name."""

    kind: SubjectKind
    name: str


@dataclass(frozen=True)
class Problem:
    """One located problem in a file: 1-based line and column, a short code, a message, and
    what it is about when that is one named thing."""

    file: str
    line: int
    col: int
    code: str
    message: str
    # Not part of a problem's identity: the same place and message is one problem.
    subject: Subject | None = field(default=None, compare=False)

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
    """A value given for a tag, a parameter or an option does not fit it (type, range,
    read-only); `parameter` names the recipe parameter when it was one."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class UnknownTag(CellctlError):
    """A tag name that the cell file does not define."""

    def __init__(self, message: str, *, tag: str) -> None:
        super().__init__(message)
        self.tag = tag


class UnknownDevice(CellctlError):
    """A device name that the cell file does not define."""

    def __init__(self, message: str, *, device: str) -> None:
        super().__init__(message)
        self.device = device


class UnknownMethod(CellctlError):
    """A method name that the cell file does not define."""

    def __init__(self, message: str, *, method: str) -> None:
        super().__init__(message)
        self.method = method


class MissingSecret(CellctlError):
    """A secret the cell file refers to (an environment variable) is not set."""

    def __init__(self, message: str, *, device: str, variable: str) -> None:
        super().__init__(message)
        self.device = device
        self.variable = variable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'host'?)' when one of `choices` is close to `word`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def quote(text: str) -> str:
    """A text quoted for a message, cut short when long (5000 digits help nobody)."""
    return repr(text) if len(text) <= 40 else repr(text[:37] + "...")
