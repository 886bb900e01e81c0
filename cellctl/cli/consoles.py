"""Where the command line writes: `out` for results, `err` for problems; one way to show a view.

Commands look the consoles up here when they print (`consoles.out`), so that a test can put
a console of its own size in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType

# asyncio loads with the commands that run a loop: `--version` and `--help` need none.
if TYPE_CHECKING:
    import asyncio

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


#: Seconds a line written by FramedLines waits, at most, in the output's buffer.
FRAME = 0.1


class FramedLines:
    """Plain lines for a pipe or a file, many a second: written to the console's buffered file
    without rich's cost per call, flushed at most FRAME seconds later, or at once by flush().

    The text is what `console.print(line, markup=False)` writes: a line rich would change
    (tabs, control characters) goes through rich, after the lines before it.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self._timer: asyncio.TimerHandle | None = None
        #: Called with the error when a flush on the timer fails (a closed pipe).
        self.failed: Callable[[Exception], None] = lambda _error: None

    def write(self, line: str) -> None:
        """Write one line; it is flushed within FRAME seconds."""
        if not line.isprintable():
            self.console.print(line, markup=False)  # rich flushes the lines before it too
            self._cancel()
            return
        self.console.file.write(line + "\n")
        if self._timer is None:
            import asyncio

            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to flush later: now
                self.flush()
            else:
                self._timer = loop.call_later(FRAME, self._on_timer)

    def flush(self) -> None:
        """Flush the lines written so far."""
        self._cancel()
        self.console.file.flush()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.console.file.flush()
        except Exception as error:  # reported by the owner, never lost in the loop's handler
            self.failed(error)
