"""Rows of a rich view: one screen row per line, and text wrapped at words into a few rows."""

from __future__ import annotations

import textwrap

from rich.text import Text

from cellctl.expr import BLANKS


def view_row(text: Text | str = "", style: str = "") -> Text:
    """One row of the view: line breaks and tabs as spaces (a condition or a message folded
    over lines in YAML), never wrapped, an ellipsis where it is too long."""
    if isinstance(text, str):
        line = Text(text.translate(BLANKS), style=style)
    else:
        line = text
        line.plain = line.plain.translate(BLANKS)  # same length: the styles stay in place
    line.no_wrap = True
    line.overflow = "ellipsis"
    return line


def wrap_rows(text: str, width: int, max_rows: int, indent: str = "") -> list[str]:
    """`text` wrapped at words into rows of `width` (the rows after the first indented two
    more), at most `max_rows`: past that the last row ends in an ellipsis."""
    return textwrap.wrap(
        text,
        max(width, 10),
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_long_words=False,  # a word too long for a row ends in the row's ellipsis
        break_on_hyphens=False,
        max_lines=max(max_rows, 1),
        placeholder=" …",
    ) or [indent]
