"""The names cell files and recipes give things, and the validators that check them."""

from __future__ import annotations

import keyword
import re
from collections.abc import Callable

from cellctl import expr
from cellctl.errors import InvalidField

_PART = r"[A-Za-z][A-Za-z0-9_]*"
#: Tag, method and argument names: dotted words, readable inside expressions.
DOTTED = re.compile(rf"{_PART}(\.{_PART})*")
#: Parameter and bound names: one word, readable inside expressions.
WORD = re.compile(_PART)
#: Device names.
DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
#: Cell, interlock and recipe names and step ids: never read by expressions.
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: Words expressions give a meaning of their own.
RESERVED = frozenset({"true", "false", *expr.FUNCTIONS})


def expression_name(what: str, pattern: re.Pattern[str] = DOTTED) -> Callable[[str], str]:
    """A validator for a name expressions read: `pattern`, and no keyword or reserved word."""

    def check(name: str) -> str:
        if not pattern.fullmatch(name):
            shape = "in dot-separated parts " if pattern is DOTTED else ""
            raise InvalidField(
                f"{what} name {name!r} must be ASCII letters, digits and '_' {shape}that start "
                "with a letter" + (" (e.g. press.force_kN)" if pattern is DOTTED else ""),
                "bad-name",
            )
        bad = [p for p in name.split(".") if keyword.iskeyword(p)] + (
            [name] if name in RESERVED else []
        )
        if bad:
            raise InvalidField(
                f"{what} name {name!r}: {bad[0]!r} is reserved in expressions", "bad-name"
            )
        return name

    return check


def label(what: str, pattern: re.Pattern[str] = LABEL) -> Callable[[str], str]:
    """A validator for a name no expression reads (device, cell, interlock, step id)."""
    allowed = "'_', '-', '.'" if pattern is LABEL else "'_', '-'"

    def check(name: str) -> str:
        if not pattern.fullmatch(name):
            raise InvalidField(
                f"{what} {name!r} must start with an ASCII letter or digit and hold only ASCII "
                f"letters, digits, {allowed}",
                "bad-name",
            )
        return name

    return check
