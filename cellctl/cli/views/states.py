"""`cellctl states`'s table: for each PackML state, where each command takes it."""

from __future__ import annotations

from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table


def state_table(rows: list[tuple[str, ...]], console: Console) -> RenderableType:
    """The state table as a grid (a column per command) where `console` is wide enough for
    it, else one row per transition: never a state cut short."""
    grid = Table(*rows[0])
    for row in rows[1:]:
        grid.add_row(*row)
    natural = Measurement.get(console, console.options.update_width(10_000), grid).maximum
    if natural <= console.width:
        return grid
    header = rows[0]
    narrow = Table(header[0], "Command", "Next state")
    for state, *targets in rows[1:]:
        moves = [(header[n], target) for n, target in enumerate(targets, 1) if target]
        for n, (command, target) in enumerate(moves):
            last = n == len(moves) - 1
            narrow.add_row(state if n == 0 else "", command, target, end_section=last)
    return narrow


def state_lines(rows: list[tuple[str, ...]]) -> list[str]:
    """The state table as tab-separated lines, for scripts."""
    return ["\t".join(row) for row in rows]
