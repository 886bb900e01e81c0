"""`read` and `write`: a cell's tags, by name, from whatever serves its endpoints."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cellctl import exitcodes
from cellctl.cli import consoles
from cellctl.cli.app import app
from cellctl.cli.audit import JournalOption
from cellctl.cli.params import CellOption, operator_option

# The cell model, the drivers and the views load when a command runs, not for every command.
if TYPE_CHECKING:
    import asyncio
    from pathlib import Path

    from cellctl.cell import Cell
    from cellctl.control.journal.recorder import WriteRecord
    from cellctl.values import TagValue


@app.command()
def read(
    tags: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="TAG|DEVICE...", help="tags, or devices (all their tags); default: every tag"
        ),
    ] = None,
    cell: CellOption = ...,  # type: ignore[assignment]
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="keep showing values until Ctrl-C")
    ] = False,
) -> None:
    """Read tags (or all tags of a device) from whatever serves the cell file's endpoints."""
    import asyncio
    import json

    from cellctl.cell import load_cell
    from cellctl.cell.tags import tag_units
    from cellctl.cli.signals import until_signalled
    from cellctl.cli.views.tags import plain_line, problem_lines, tag_json, tag_table
    from cellctl.io.session import tags_to_read
    from drivers.base import Quality

    spec = load_cell(cell)
    names = tags_to_read(spec, tags or ())
    units = tag_units(spec)
    if watch:
        asyncio.run(until_signalled(lambda stop: _watch(spec, names, stop)))
        return
    values = asyncio.run(_read_once(spec, names))
    if as_json:
        consoles.out.print_json(json.dumps([tag_json(v, units.get(v.tag)) for v in values]))
    else:
        consoles.show(
            lambda: tag_table(values, units=units),
            lambda: (plain_line(value, units.get(value.tag)) for value in values),
        )
    for line in problem_lines(values):
        consoles.err.print(line, markup=False)
    if any(v.quality is Quality.BAD for v in values):
        raise typer.Exit(exitcodes.DEVICE_FAILURE)


async def _read_once(cell: Cell, names: list[str]) -> list[TagValue]:
    from cellctl.io.session import CellSession

    async with CellSession(cell, names, partial=True) as session:
        return list((await session.read()).values())


async def _watch(cell: Cell, names: list[str], stop: asyncio.Event) -> None:
    import asyncio
    import contextlib

    from cellctl import heap
    from cellctl.cell.tags import tag_units
    from cellctl.cli.views.tags import tag_table
    from cellctl.cli.views.watch import WatchTable
    from cellctl.io.session import CellSession

    out = consoles.out
    async with CellSession(cell, names) as session:
        units = tag_units(cell)
        view = WatchTable(names, await session.read(), cell.cell, units)
        unsubscribe = session.subscribe(view.update)
        heap.settle()  # what lives until Ctrl-C is made (cellctl.heap)
        try:
            if not out.is_terminal:
                # Nobody sees frames in a pipe or a log: the table of every tag once, at the end.
                await stop.wait()
                out.print(tag_table(view.values(), cell.cell, units))
                return
            from rich.live import Live

            # The view draws only the rows that fit the terminal: a frame costs the same with
            # 5,000 tags as with 18. The last frame stays on the screen after Ctrl-C.
            with Live(view, console=out, auto_refresh=False) as live:
                while not stop.is_set():
                    live.refresh()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.25):
                            await stop.wait()
        finally:
            unsubscribe()


@app.command()
def write(
    assignments: Annotated[
        list[str], typer.Argument(metavar="TAG=VALUE...", help="written in order")
    ],
    cell: CellOption = ...,  # type: ignore[assignment]
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="write to non-loopback endpoints without asking")
    ] = False,
    operator: Annotated[
        str | None, operator_option("who writes (recorded; default: your login)")
    ] = None,
    journal: JournalOption = None,
) -> None:
    """Write tags; each write is recorded in the journal before it is sent, and reported only
    once the device confirmed it."""
    import asyncio

    from cellctl.cell import load_cell
    from cellctl.io.drivers import non_loopback_endpoints

    spec = load_cell(cell)
    pairs = _assignments(spec, assignments)
    remote = non_loopback_endpoints(spec, [t for t, _ in pairs])
    if remote and not yes:
        if not sys.stdin.isatty():
            consoles.err.print(
                f"error: {', '.join(remote)} is not on this machine: pass --yes to write to it",
                markup=False,
            )
            raise typer.Exit(exitcodes.BAD_INPUT)
        if not typer.confirm(f"Write to {', '.join(remote)}, a real machine?"):
            raise typer.Exit(exitcodes.BAD_INPUT)
    record = _write_record(spec, cell, operator, journal)  # before any device is touched
    try:
        asyncio.run(_write_all(spec, pairs, record))
    finally:
        record.close()


def _write_record(
    cell: Cell, cell_file: Path, operator: str | None, journal: Path | None
) -> WriteRecord:
    """The journal opened for this command's writes; JournalUnavailable (exit 6) when it
    cannot be: nothing is written then."""

    from cellctl.cli.audit import journal_path
    from cellctl.control.journal.recorder import WriteRecord, os_user, process_fields
    from cellctl.control.journal.store import SqliteStore

    user = os_user()
    about = {
        "cell": cell.cell,
        "cell_file": str(cell_file.resolve()),  # as typed, it says nothing from elsewhere
        # The bytes that were validated (load_cell keeps their hash): not the file read again,
        # which may have changed or gone since.
        "cell_sha256": cell.sha256,
        "operator": operator or user,
        **process_fields(user),
    }
    return WriteRecord(SqliteStore(journal_path(journal)), about)


def _assignments(cell: Cell, texts: list[str]) -> list[tuple[str, Any]]:
    """(tag, value) of each TAG=VALUE; every bad one printed, then exit 1."""
    from cellctl.cell.tags import parse_value
    from cellctl.errors import CellctlError

    pairs: list[tuple[str, Any]] = []
    problems: list[str] = []
    for text in texts:
        tag, sep, raw = text.partition("=")
        if not sep:
            problems.append(f"{text!r}: write TAG=VALUE")
            continue
        try:
            # The value as typed: a string tag takes its spaces (cellctl.textvalue).
            pairs.append((tag.strip(), parse_value(cell, tag.strip(), raw)))
        except CellctlError as error:
            problems.append(str(error))
    if problems:
        for problem in problems:
            consoles.err.print(f"error: {problem}", markup=False)
        raise typer.Exit(exitcodes.BAD_INPUT)
    return pairs


async def _write_all(cell: Cell, pairs: list[tuple[str, Any]], record: WriteRecord) -> None:
    from cellctl import textvalue
    from cellctl.cell.tags import text_type
    from cellctl.io.drivers import DeviceFailed
    from cellctl.io.session import CellSession

    async with CellSession(cell, [t for t, _ in pairs]) as session:
        for tag, value in pairs:
            checked = session.check(tag, value)  # OutOfRange: nothing recorded, nothing sent
            intent = record.intent(tag, checked)  # on disk before the write leaves
            try:
                await session.write(tag, checked)
            except DeviceFailed as error:  # sent, or maybe sent
                record.confirmed(intent, str(error), unknown=True)
                raise
            except BaseException as error:
                record.confirmed(intent, f"{type(error).__name__}: not known", unknown=True)
                raise
            record.confirmed(intent, None)
            spec = cell.tags[tag]
            # As the device stores it: a scaled tag holds whole raw steps (12.34 at scale 0.1
            # is raw 123, so 12.3).
            shown = textvalue.show(spec.from_raw(spec.to_raw(value)), text_type(spec))
            consoles.out.print(f"{tag} = {shown} (confirmed)", markup=False)
