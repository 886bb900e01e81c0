"""The live tag table of `cellctl read --watch`: a row per tag, rebuilt only when the tag's value,
quality or error changed; only the rows that fit the terminal drawn, in the order named, then
a line saying how many tags are not shown."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from rich.console import Console, ConsoleOptions, RenderResult
from rich.table import Table
from rich.text import Text

from cellctl.cli.views.tags import age_cell, tag_cells
from cellctl.values import TagValue
from drivers.base import Quality, Value

#: Lines the view takes besides its rows: title, top border, header, its rule, bottom border.
_TABLE_FRAME = 5

#: What a row's cells (all but the age) are drawn from.
_Shown = tuple[Value | None, Quality, str | None]


class WatchTable:
    """The tags' newest values as a table that fits the terminal's height.

    `update()` only keeps the value (a poll cycle may change thousands of tags); a row's cells
    are rebuilt when it is drawn and what it shows changed, its age at every frame. The rows
    drawn are the first that fit, in the order named, so that a row stays where the eye left
    it; the rest are counted on the last line, with how many of them are not good.
    """

    def __init__(
        self,
        names: Iterable[str],
        values: Mapping[str, TagValue],
        title: str = "",
        units: Mapping[str, str] | None = None,
    ) -> None:
        self._names = list(names)
        self._title = title or None
        units = units or {}
        self._units = units
        self._with_unit = any(units.get(name) for name in self._names)
        self._latest: dict[str, TagValue] = {}
        self._problems: set[str] = set()
        self._rows: dict[str, tuple[_Shown, list[Text]]] = {}
        # The value column only widens: a value one digit shorter does not shift the columns.
        self._value_width = 0
        for name in self._names:
            self.update(values[name])

    def update(self, value: TagValue) -> None:
        """Keep a tag's newest value (drawn at the next frame if its row is shown)."""
        self._latest[value.tag] = value
        if value.quality is Quality.GOOD:
            self._problems.discard(value.tag)
        else:
            self._problems.add(value.tag)

    def values(self) -> list[TagValue]:
        """Every tag's newest value, in the order named."""
        return [self._latest[name] for name in self._names]

    def _cells(self, value: TagValue) -> list[Text]:
        shown = (value.value, value.quality, value.error)
        kept = self._rows.get(value.tag)
        if kept is not None and kept[0] == shown:
            return kept[1]
        unit = self._units.get(value.tag, "") if self._with_unit else None
        cells = tag_cells(value, unit)
        self._rows[value.tag] = (shown, cells)
        return cells

    def rows_shown(self, height: int) -> int:
        """How many rows fit in `height` lines: all, or as many as leave a line for the rest
        (one at least)."""
        if len(self._names) <= height - _TABLE_FRAME:
            return len(self._names)
        return max(height - _TABLE_FRAME - 1, 1)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The table of the rows that fit `options`' height, then the line about the rest."""
        count = self.rows_shown(options.height or options.size.height)
        shown = [self._latest[name] for name in self._names[:count]]
        table = Table(title=self._title, expand=False)
        # One line per row whatever the width (a long error is cut, never wrapped): the
        # frame's height is known before it is drawn.
        for header in ("tag", "device"):
            table.add_column(header, no_wrap=True, overflow="ellipsis")
        value_column = len(table.columns)
        table.add_column("value", justify="right", no_wrap=True, overflow="ellipsis")
        if self._with_unit:
            table.add_column("unit", no_wrap=True, overflow="ellipsis")
        table.add_column("quality", no_wrap=True)
        table.add_column("age", justify="right", no_wrap=True)
        rows = [[*self._cells(value), age_cell(value)] for value in shown]
        for value, row in zip(shown, rows, strict=True):
            if value.error is None:  # an error is cut to fit, and leaves the width as it was
                self._value_width = max(self._value_width, row[value_column].cell_len)
        # The value column takes what the others leave (a long error would squeeze them to
        # nothing); each column takes its width and 3 more (padding, its border), plus 1.
        others = sum(
            max([len(str(column.header)), *(row[i].cell_len for row in rows)])
            for i, column in enumerate(table.columns)
            if i != value_column
        )
        room = options.max_width - others - 3 * len(table.columns) - 1
        widths = table.columns[value_column]
        widths.max_width = max(room, self._value_width, len("value"))
        widths.min_width = self._value_width
        for row in rows:
            table.add_row(*row)
        yield table
        hidden = len(self._names) - count
        if hidden:
            bad = len(self._problems) - sum(1 for value in shown if value.tag in self._problems)
            more = Text(f"… {hidden:,} more tags", style="dim", no_wrap=True, overflow="ellipsis")
            if bad:
                more.append(f" ({bad:,} not good)", style="red")
            more.append(": name fewer with TAG|DEVICE arguments", style="dim")
            yield more
