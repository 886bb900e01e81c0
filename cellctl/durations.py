"""Durations as written in cell and recipe files: '500ms', '1.5s', '2m', '1h' → seconds."""

from __future__ import annotations

import math
import re
from typing import Annotated

from pydantic import BeforeValidator, WithJsonSchema

from cellctl.errors import InvalidField, quote

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# ASCII digits only: Python's \d and float() would also take '１２' (full-width digits).
PATTERN = r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)\s*$"
_DURATION = re.compile(PATTERN)
#: The longest duration a file may give: 7 days. Longer is a typo, and bounding every
#: duration keeps every sum of them (a recipe's worst case) a finite number.
MAX_SECONDS = 7 * 24 * 3600.0
#: The shortest duration but 0: no timer, poll or device here acts on less than a millisecond.
MIN_SECONDS = 0.001


class DurationError(InvalidField):
    """A duration that cannot be parsed; pydantic reports it at the field."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "bad-duration")


def parse_duration(text: object) -> float:
    """Seconds of a duration such as '20ms', '1.5s', '2m', '1h'.

    A bare number is refused: '5' could mean 5 s or 5 ms, and a cell file must not guess.
    So is a duration longer than 7 days (MAX_SECONDS, '168h'), or shorter than a millisecond
    but not 0 (MIN_SECONDS); where 0 makes no sense, the field refuses it.
    """
    if isinstance(text, bool) or not isinstance(text, str):
        if isinstance(text, int | float) and not isinstance(text, bool):
            raise DurationError(
                f"duration {text!r} needs a unit: write '{text}s' or '{text}ms' (ms, s, m, h)"
            )
        raise DurationError(f"duration {text!r} is not a text like '500ms', '1.5s' or '2m'")
    match = _DURATION.match(text)
    if match is None:
        raise DurationError(f"duration {quote(text)} is not like '500ms', '1.5s', '2m' or '1h'")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds) or seconds > MAX_SECONDS:
        raise DurationError(
            f"duration {quote(text)} is longer than 7 days ('168h'), the longest a duration may be"
        )
    if 0 < seconds < MIN_SECONDS:
        raise DurationError(
            f"duration {quote(text)} is shorter than a millisecond, the shortest a duration "
            "but 0 may be: write at least '1ms'"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """A duration as a cell file would write it: 0.02 → '20ms', 1.5 → '1.5s', 120 → '2m'."""
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 3600:g}h" if seconds % 3600 == 0 else f"{seconds / 60:g}m"
    return f"{seconds:g}s"


#: A pydantic field type: written as '500ms' etc., held as float seconds.
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"type": "string", "pattern": PATTERN, "examples": ["20ms", "1.5s", "2m"]}),
]


def human_duration(seconds: float | None) -> str:
    """A duration for people: 500ms, 34s, 2m 41s, 1h 5m, 3d 4h; 'not known' for None."""
    if seconds is None:
        return "not known before the run"
    if not math.isfinite(seconds):
        return "too long to count"
    if seconds >= 1000 * 86400:
        return f"{seconds / 86400:.3g} days"
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{round(seconds * 1000, 1):g}ms"
    if seconds < 60:
        return f"{round(seconds, 2):g}s"
    if seconds < 3600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes}m {rest}s" if rest else f"{minutes}m"
    if seconds < 86400:
        hours, rest = divmod(round(seconds), 3600)
        return f"{hours}h {rest // 60}m" if rest // 60 else f"{hours}h"
    days, rest = divmod(round(seconds), 86400)
    return f"{days}d {rest // 3600}h" if rest // 3600 else f"{days}d"
