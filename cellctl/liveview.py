"""The live tag table of `cellctl demo` and `cellctl read --watch` (rich)."""

from __future__ import annotations

from collections.abc import Iterable

from rich.table import Table
from rich.text import Text

from cellctl.connect import TagValue
from drivers.base import Quality
from drivers.codecs import format_value

_QUALITY_STYLE = {Quality.GOOD: "green", Quality.UNCERTAIN: "yellow", Quality.BAD: "red"}


def tag_table(values: Iterable[TagValue], title: str = "") -> Table:
    """A table of tags: name, device, value, quality, age."""
    table = Table(title=title or None, expand=False)
    table.add_column("tag")
    table.add_column("device")
    table.add_column("value", justify="right")
    table.add_column("quality")
    table.add_column("age", justify="right")
    for value in values:
        shown = format_value(value.value) if value.error is None else value.error
        style = _QUALITY_STYLE[value.quality]
        # Text(), never markup: a string tag may hold "[/x]", which rich would parse.
        table.add_row(
            Text(value.tag),
            Text(value.device),
            Text(shown),
            Text(value.quality.value, style=style),
            Text(f"{value.age:.1f} s"),
        )
    return table


def plain_line(value: TagValue) -> str:
    """One tab-separated line per tag, for scripts and non-terminals."""
    shown = format_value(value.value) if value.error is None else value.error
    return f"{value.tag}\t{value.device}\t{shown}\t{value.quality.value}"
