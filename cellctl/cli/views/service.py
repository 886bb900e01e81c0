"""What the remote commands show of a running service: the status block of `cellctl status`
(80 columns), the live view of `cellctl watch` and its plain lines off a terminal."""

from __future__ import annotations

import textwrap
from collections import deque
from collections.abc import Iterable, Mapping

from rich.console import Console, ConsoleOptions, RenderResult
from rich.text import Text

from cellctl.cli.views.summary import clock
from cellctl.service.api import ServiceStatus

#: The width the status block fits.
WIDTH = 80
#: The labels' column.
_LABEL = 12
#: How many state changes the live view remembers.
LAST_STATES = 50

_STATE_STYLE = {
    "Execute": "bold green",
    "Complete": "bold green",
    "Held": "bold yellow",
    "Suspended": "bold yellow",
    "Aborting": "bold red",
    "Aborted": "bold red",
    "Stopped": "bold",
}


def _pairs(pairs: Mapping[str, str]) -> str:
    return ", ".join(f"{name}={value}" for name, value in pairs.items())


def _rows(status: ServiceStatus) -> list[tuple[str, str]]:
    """(label, value) of each line of the block: the core lines always, the rest when set."""
    recipe = "—"
    if status.recipe:
        sha = f" (sha {status.recipe_sha256[:12]})" if status.recipe_sha256 else ""
        recipe = f"{status.recipe} v{status.recipe_version}{sha}"
    rows = [
        ("cell", status.cell or "—"),
        ("state", f"{status.state} (mode {status.mode})"),
        ("legal", ", ".join(status.legal) or "none"),
        ("batch", status.batch or "—"),
        ("recipe", recipe),
    ]
    if status.parameters:
        rows.append(("parameters", _pairs(status.parameters)))
    rows.append(("step", status.step or "—"))
    rows.append(("parts", f"produced {status.produced}, rejected {status.rejected}"))
    optional = [
        ("stop reason", status.stop_reason),
        ("trips", "; ".join(status.trips)),
        ("paused", f"before {status.paused}" if status.paused else ""),
        ("breakpoints", ", ".join(status.breakpoints)),
        ("forced", _pairs(status.forced)),
    ]
    if status.prompt is not None:
        wants = f" ({status.prompt.wants})" if status.prompt.wants else ""
        optional.insert(2, ("prompt", f"{status.prompt.step_id}: {status.prompt.text}{wants}"))
    rows += [(label, value) for label, value in optional if value]
    rows.append(("security", status.security or "—"))
    return rows


def _wrapped(label: str, value: str, width: int) -> list[str]:
    """`label  value`, a long value wrapped under itself."""
    lines = textwrap.wrap(
        value,
        width=max(width, _LABEL + 20),
        initial_indent=f"{label:<{_LABEL}}",
        subsequent_indent=" " * _LABEL,
        break_on_hyphens=False,
    )
    return lines or [label]


def status_lines(status: ServiceStatus, width: int = WIDTH) -> list[str]:
    """The status block: one `label  value` line each, long values wrapped under the value."""
    return [line for label, value in _rows(status) for line in _wrapped(label, value, width)]


def change_line(at: float, state: str, status: ServiceStatus) -> str:
    """One plain line of `watch` off a terminal: time, state, step, parts produced."""
    return f"{clock(at)} {state} · step {status.step or '—'} · produced {status.produced}"


class ServiceWatch:
    """The live view of `cellctl watch`: the status block, then the last state changes seen
    (newest first), as many as fit the terminal."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.status: ServiceStatus | None = None
        self._changes: deque[tuple[float, str]] = deque(maxlen=LAST_STATES)

    def update(self, at: float, status: ServiceStatus, states: Iterable[str]) -> None:
        """A new status, and the states passed through since the last one."""
        for state in states:
            self._changes.append((at, state))
        self.status = status

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        """The block, then the state changes that fit `options`' height."""
        height = options.height or options.size.height
        width = min(options.max_width, WIDTH)
        if self.status is None:
            yield Text(f"connecting to {self.url} …", no_wrap=True, overflow="ellipsis")
            return
        lines: list[Text] = []
        for label, value in _rows(self.status):
            for line in _wrapped(label, value, width):
                text = Text(line, no_wrap=True, overflow="ellipsis")
                if label == "state" and line.startswith("state"):
                    style = _STATE_STYLE.get(self.status.state, "bold")
                    text.stylize(style, _LABEL, _LABEL + len(self.status.state))
                lines.append(text)
        room = height - len(lines) - 1
        if room > 0 and self._changes:
            lines.append(Text("last state changes", style="dim"))
            for at, changed in list(reversed(self._changes))[: room - 1]:
                lines.append(Text(f"  {clock(at)} {changed}", no_wrap=True))
        yield from lines[: max(height, 1)]
