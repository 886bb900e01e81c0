"""The tag table never interprets values as markup."""

from __future__ import annotations

import io
import time

from rich.console import Console

from cellctl.connect import TagValue
from cellctl.liveview import plain_line, tag_table
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
    assert plain_line(values[0]) == "batch.name\tmes\t[/x] [bold]LOT\tgood"
