"""Where the command line writes: `out` for results, `err` for problems; one way to show a view.

Commands look the consoles up here when they print (`consoles.out`), so that a test can put
a console of its own size in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from rich.console import Console, RenderableType

# emoji=False: rich would turn ':100:' in 'cell.yaml:100:1: ...' into an emoji.
#: Results (stdout).
out = Console(highlight=False, soft_wrap=True, emoji=False)
#: Problems (stderr).
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)


def plain(line: str) -> None:
    """A line for scripts, tabs kept (rich's print would expand them to spaces)."""
    out.file.write(line + "\n")


def show(
    view: Callable[[], RenderableType],
    lines: Callable[[], Iterable[str]],
    *,
    soft_wrap: bool = True,
    keep_tabs: bool = True,
) -> None:
    """A view drawn with rich on a terminal; off one (a pipe, a file), its plain lines.

    `soft_wrap=False` wraps long rows of the view instead of letting the terminal cut them;
    `keep_tabs` writes the lines as they are (tab-separated fields for scripts).
    """
    if out.is_terminal:
        out.print(view(), soft_wrap=soft_wrap)
        return
    for line in lines():
        if keep_tabs:
            plain(line)
        else:
            out.print(line, markup=False)
