"""Text a person types for a value (`write TAG=VALUE`, `-p NAME=VALUE`, `--answer ID=VALUE`, a
prompt's answer) to a typed value and back: one parser, the same words and digits everywhere.

Numbers are ASCII digits with an optional sign: Python's int() and float() would also take
'1_2' (12), '１２' (full-width), '١٢' (Arabic-Indic), 'inf' and 'nan', none of which an operator
means to send to a device. Spaces and tabs around a number or a word are ignored (a shell-quoted
'speed = 5'); a text is taken exactly as written.
"""

from __future__ import annotations

import math
import re

from cellctl.errors import BadValue, quote
from drivers.base import Value
from drivers.codecs import FLOAT32_MAX, FLOAT_TYPES, INT_RANGES, shortest_float32
from drivers.points import DataType

#: The words of a boolean, in any letter case.
TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
_BOOL = {word: True for word in TRUE_WORDS} | {word: False for word in FALSE_WORDS}

_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_BLANK = " \t"
# Digits of the largest integer type (uint64): a longer text is out of range unread (int()
# of more than 4300 digits raises, and a long one costs quadratic time).
_MOST_DIGITS = len(str(2**64 - 1))


def describe(datatype: DataType) -> str:
    """The values of a type in words: 'a whole number in 0..65535', 'true or false (…)'."""
    if datatype is DataType.BOOL:
        return "true or false (yes/no, on/off, 1/0)"
    if datatype is DataType.STRING:
        return "a text"
    if datatype is DataType.FLOAT32:
        return f"a finite number within ±{FLOAT32_MAX!r} (float32)"
    if datatype is DataType.FLOAT64:
        return "a finite number"
    low, high = INT_RANGES[datatype]
    return f"a whole number in {low}..{high} ({datatype.value})"


def parse(text: str, datatype: DataType, *, expects: str | None = None) -> Value:
    """The value of `text` typed as `datatype`; BadValue saying what is expected otherwise.

    `expects` words the expected values in the caller's terms (a parameter's range); the
    caller checks min/max. A float32 keeps the decimal typed: the device rounds it on write.
    """
    if datatype is DataType.STRING:
        if not text.isascii():
            check_utf8(text)
        return text
    wanted = expects or describe(datatype)
    stripped = text.strip(_BLANK)
    if datatype is DataType.BOOL:
        value = _BOOL.get(stripped.lower()) if stripped.isascii() else None
        if value is None:
            raise BadValue(f"expects {wanted}, got {quote(text)}")
        return value
    if datatype in FLOAT_TYPES:
        if _FLOAT.fullmatch(stripped) is None:
            raise BadValue(f"expects {wanted}, got {quote(text)}{_hint(stripped)}")
        number = float(stripped)
        limit = FLOAT32_MAX if datatype is DataType.FLOAT32 else math.inf
        if not math.isfinite(number) or abs(number) > limit:
            raise BadValue(f"{quote(text)} is out of range: expects {wanted}")
        return number
    low, high = INT_RANGES[datatype]
    if _INTEGER.fullmatch(stripped) is None:
        raise BadValue(f"expects {wanted}, got {quote(text)}{_hint(stripped)}")
    digits = stripped.lstrip("+-").lstrip("0") or "0"
    sign = -1 if stripped.startswith("-") else 1
    whole = sign * int(digits) if len(digits) <= _MOST_DIGITS else None
    if whole is None or not low <= whole <= high:
        raise BadValue(f"{quote(text)} is out of range: expects {wanted}")
    return whole


def show(value: Value, datatype: DataType) -> str:
    """The text of a value that `parse` reads back as it (a float32: as the device stores it)."""
    if datatype is DataType.STRING:
        return str(value)
    if isinstance(value, bool) or datatype is DataType.BOOL:
        return "true" if value else "false"
    if datatype in FLOAT_TYPES and isinstance(value, int | float):
        number = float(value)
        if datatype is DataType.FLOAT32 and math.isfinite(number) and abs(number) <= FLOAT32_MAX:
            return repr(shortest_float32(number))
        return repr(number)
    return str(value)


def check_utf8(text: str, what: str = "") -> None:
    """BadValue for a text with a lone surrogate: Python's reading of bytes that are not UTF-8
    (an argument typed in a terminal set to Latin-1), which no device, journal or file holds.
    `what` (an option's name) starts the message."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise BadValue(
            f"{what + ' ' if what else ''}{quote(text)} is not UTF-8 text: character "
            f"{err.start + 1} is a byte the terminal sent that is not UTF-8 (set its encoding "
            "to UTF-8)"
        ) from None


def _hint(text: str) -> str:
    """Why a text that looks like a number is not one, when it is a usual slip."""
    if "_" in text or not text.isascii():
        return " (digits 0-9 only, without '_' separators)"
    return ""
