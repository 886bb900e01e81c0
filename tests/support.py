"""Test helpers of the project's own tests: a memory rig connected and watched, the files a block
opens, logging to a file of the test's own (the rest comes from the testing kit,
cellctl.testing)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from cellctl import logsetup
from cellctl.control.journal.rows import JournalRow
from cellctl.control.journal.store import SqliteStore
from cellctl.io.session import TagIO


class Watched(Protocol):
    """A test rig: a cell's TagIO, and the executor task a test started on it, if any."""

    @property
    def io(self) -> TagIO: ...

    @property
    def task(self) -> asyncio.Task[None] | None: ...


W = TypeVar("W", bound=Watched)


@contextlib.asynccontextmanager
async def watched(rig: W) -> AsyncIterator[W]:
    """The rig with its TagIO connected and watched; afterwards its executor task ended (one
    still running is cancelled and must end so; one that failed raises its error here) and the
    TagIO closed."""
    await rig.io.connect()
    rig.io.watch()
    try:
        yield rig
    finally:
        try:
            task = rig.task
            if task is not None and not task.done():
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            elif task is not None and not task.cancelled():
                task.result()  # an executor that died is not left unseen
        finally:
            await rig.io.close()


_opened: list[str] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and _opened is not None and isinstance(args[0], str | bytes | os.PathLike):
        _opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)  # an audit hook stays for the process: it records only inside `opens`


@contextlib.contextmanager
def opens() -> Iterator[list[str]]:
    """The paths opened inside the block (Python's audit events: nothing is patched)."""
    global _opened
    _opened = []
    try:
        yield _opened
    finally:
        _opened = None


@contextlib.contextmanager
def logging_to(log: Path) -> Iterator[Path]:
    """Logging configured to `log` inside the block; the pytest plugin's file again after."""
    logsetup.configure_logging(log)
    try:
        yield log
    finally:
        logsetup.configure_logging()


@contextlib.contextmanager
def cellctls_handlers_only() -> Iterator[None]:
    """pytest's own capturing handlers off the root logger inside the block: cellctl's handlers
    alone take the records, as outside tests."""
    root = logging.getLogger()
    theirs = [h for h in root.handlers if h not in logsetup._INSTALLED]
    for handler in theirs:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in theirs:
            root.addHandler(handler)


def journal_rows(path: Path) -> list[JournalRow]:
    """Every row of the journal at `path`, read by a connection of its own."""
    store = SqliteStore(path, readonly=True)
    try:
        return list(store.rows())
    finally:
        store.close()
