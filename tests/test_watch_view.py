"""The view of `cellctl read --watch` (cellctl/cli/views/watch.py) drawn on consoles of a few
heights: only the rows that fit, then a line counting the rest and the bad ones among them; a
value updated is drawn in its row."""

from __future__ import annotations

import io
import time

from rich.console import Console

from cellctl.cli.views.watch import WatchTable
from cellctl.values import TagValue
from drivers.base import Quality


def values(count: int) -> dict[str, TagValue]:
    """`count` good tags t000... of device dev, each holding its number."""
    now = time.time()
    return {f"t{i:03}": TagValue(f"t{i:03}", "dev", i, Quality.GOOD, now) for i in range(count)}


def drawn(view: WatchTable, height: int, width: int = 80) -> list[str]:
    """The lines the view draws on a console of `height` lines."""
    console = Console(
        width=width, height=height, file=io.StringIO(), color_system=None, legacy_windows=False
    )
    return [
        "".join(segment.text for segment in line).rstrip()
        for line in console.render_lines(view, console.options, pad=False)
    ]


def test_only_the_rows_that_fit_then_how_many_more_and_how_many_of_them_are_bad() -> None:
    latest = values(50)
    view = WatchTable(latest, latest, "cell")
    lines = drawn(view, 12)
    assert len(lines) == 12
    assert lines[0].strip() == "cell"
    shown = [line.split()[1] for line in lines[4:10]]
    assert shown == [f"t{i:03}" for i in range(6)]
    assert lines[-1] == "… 44 more tags: name fewer with TAG|DEVICE arguments"

    # A bad tag among the hidden ones is counted; one shown is not (its row says it).
    view.update(TagValue("t040", "dev", None, Quality.BAD, time.time(), "timed out"))
    view.update(TagValue("t002", "dev", None, Quality.BAD, time.time(), "timed out"))
    lines = drawn(view, 12)
    assert lines[-1] == "… 44 more tags (1 not good): name fewer with TAG|DEVICE arguments"
    assert "timed out" in lines[6] and "bad" in lines[6]
    view.update(TagValue("t040", "dev", 40, Quality.GOOD, time.time()))
    assert drawn(view, 12)[-1] == "… 44 more tags: name fewer with TAG|DEVICE arguments"


def test_a_taller_terminal_shows_more_rows_and_all_when_they_fit() -> None:
    latest = values(10)
    view = WatchTable(latest, latest, "cell")
    assert len(drawn(view, 12)) == 12  # 6 rows and the line for the other 4
    lines = drawn(view, 24)
    assert len(lines) == 10 + 5  # title, borders, header and its rule: no "more" line
    assert "more tags" not in "\n".join(lines)


def test_an_updated_value_is_drawn_in_its_row_and_a_long_error_never_wraps() -> None:
    latest = values(3)
    view = WatchTable(latest, latest, "cell")
    view.update(TagValue("t001", "dev", 4242, Quality.GOOD, time.time()))
    view.update(TagValue("t002", "dev", None, Quality.BAD, time.time(), "no answer " * 20))
    lines = drawn(view, 24)
    assert len(lines) == 3 + 5
    assert "t001" in lines[5] and " 4242 " in lines[5]
    assert "t002" in lines[6] and "…" in lines[6] and len(lines[6]) <= 80
