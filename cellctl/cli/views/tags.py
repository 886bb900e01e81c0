"""Tag values as `cellctl read` shows them (a table, plain lines, JSON), and as the live tag
table of `cellctl demo` and `cellctl read --watch`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from rich.table import Table
from rich.text import Text

from cellctl.values import TagValue
from drivers.base import Quality
from drivers.codecs import format_value

_QUALITY_STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}


def tag_table(
    values: Iterable[TagValue], title: str = "", units: Mapping[str, str] | None = None
) -> Table:
    """A table of tags: name, device, value, unit (when any tag shown has one in `units`),
    quality, age."""
    rows = list(values)
    units = units or {}
    with_unit = any(units.get(value.tag) for value in rows)
    table = Table(title=title or None, expand=False)
    table.add_column("tag")
    table.add_column("device")
    table.add_column("value", justify="right")
    if with_unit:
        table.add_column("unit")
    table.add_column("quality")
    table.add_column("age", justify="right")
    for value in rows:
        unit = units.get(value.tag, "") if with_unit else None
        table.add_row(*tag_cells(value, unit), age_cell(value))
    return table


def tag_cells(value: TagValue, unit: str | None = None) -> list[Text]:
    """A tag's row in a tag table but its age: tag, device, value (or its error), unit (unless
    None: the table has no unit column), quality."""
    shown = format_value(value.value) if value.error is None else value.error
    # Text(), never markup: a string tag may hold "[/x]", which rich would parse.
    cells = [Text(value.tag), Text(value.device), Text(shown)]
    if unit is not None:
        cells.append(Text(unit))
    cells.append(Text(value.quality.value, style=_QUALITY_STYLE[value.quality]))
    return cells


def age_cell(value: TagValue) -> Text:
    """A tag's age in a tag table: seconds since its value was read."""
    return Text(f"{value.age:.1f} s")


def _field(text: str) -> str:
    """Text as one field of a tab-separated line (a tab or newline inside would split it)."""
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def plain_line(value: TagValue, unit: str | None = None) -> str:
    """One tab-separated line per tag, for scripts and non-terminals: tag, device, value, unit,
    quality, error; a tag that could not be read has an empty value and its error in the last
    field (never in the value's)."""
    bad = value.value is None or value.quality is Quality.BAD
    shown = "" if bad else format_value(value.value)
    fields = (value.tag, value.device, shown, unit or "", value.quality.value, value.error or "")
    return "\t".join(_field(field) for field in fields)


def tag_json(value: TagValue, unit: str | None = None) -> dict[str, Any]:
    """A tag's value as JSON-ready data: the value (null when JSON cannot hold it) and its text."""
    held = value.value
    return {
        "tag": value.tag,
        "device": value.device,
        # JSON has no NaN or Infinity (an unset float32 register often reads NaN): null, and
        # the text shows what it was.
        "value": None if isinstance(held, float) and not math.isfinite(held) else held,
        "text": format_value(held),
        "unit": unit,
        "quality": value.quality.value,
        "timestamp": value.timestamp,
        "error": value.error,
    }


def problem_lines(values: Iterable[TagValue]) -> list[str]:
    """The tags that could not be read well, one line per cause ('error: ...' for a bad value,
    'warning: ...' otherwise): a device that is down fails all its tags with the same error."""
    causes: dict[tuple[str, str], list[str]] = {}
    for value in values:
        if value.error is not None:
            severity = "error" if value.quality is Quality.BAD else "warning"
            causes.setdefault((severity, value.error), []).append(value.tag)
    lines = []
    for (severity, cause), tags in causes.items():
        who = tags[0] if len(tags) == 1 else f"{len(tags)} tags ({tags[0]}, …)"
        lines.append(f"{severity}: {who}: {cause}")
    return lines
