"""The tag table never interprets values as markup."""

from __future__ import annotations

import io
import time

from rich.console import Console

from cellctl.cli.views.tags import plain_line, tag_table
from cellctl.values import TagValue
from drivers.base import Quality


def test_a_value_that_looks_like_markup_is_shown_as_text() -> None:
    values = [
        TagValue("batch.name", "mes", "[/x] [bold]LOT", Quality.GOOD, time.time()),
        TagValue("press.force", "press", None, Quality.BAD, time.time(), "press [red]: lost"),
    ]
    stream = io.StringIO()
    Console(file=stream, width=120).print(tag_table(values))
    shown = stream.getvalue()
    assert "[/x] [bold]LOT" in shown
    assert "press [red]: lost" in shown
    assert plain_line(values[0]) == "batch.name\tmes\t[/x] [bold]LOT\t\tgood\t"


def test_a_plain_line_keeps_the_error_out_of_the_value_field() -> None:
    now = time.time()
    lost = TagValue("press.force_kN", "press", None, Quality.BAD, now, "press: timed out\tagain")
    good = TagValue("press.force_kN", "press", 12.5, Quality.GOOD, now)
    # tag, device, value, unit, quality, error: always six fields, one line
    assert plain_line(lost, "kN").split("\t") == [
        "press.force_kN",
        "press",
        "",
        "kN",
        "bad",
        "press: timed out again",
    ]
    assert plain_line(good, "kN").split("\t") == [
        "press.force_kN",
        "press",
        "12.5",
        "kN",
        "good",
        "",
    ]


def test_the_tag_table_shows_units_when_a_tag_has_one() -> None:
    now = time.time()
    values = [
        TagValue("press.force_kN", "press", 12.5, Quality.GOOD, now),
        TagValue("press.cycle_done", "press", True, Quality.GOOD, now),
    ]
    stream = io.StringIO()
    Console(file=stream, width=120).print(tag_table(values, units={"press.force_kN": "kN"}))
    header = next(line for line in stream.getvalue().splitlines() if "quality" in line)
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "tag",
        "device",
        "value",
        "unit",
        "quality",
        "age",
    ]
    force = next(line for line in stream.getvalue().splitlines() if "press.force_kN" in line)
    assert [cell.strip() for cell in force.split("│")[3:5]] == ["12.5", "kN"]
    stream = io.StringIO()
    Console(file=stream, width=120).print(tag_table(values[1:], units={"press.force_kN": "kN"}))
    assert "unit" not in stream.getvalue()  # no tag shown has one: no empty column
