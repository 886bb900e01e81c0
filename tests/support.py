"""Test helpers shared by tests/ and hil_tests/: running the CLI in-process, waiting on a loop,
a memory rig connected and watched."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from cellctl.cli import run
from cellctl.io.session import TagIO


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run cellctl in-process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def wait_until(
    predicate: Callable[[], bool], within: float = 3.0, what: str = "the condition"
) -> None:
    """Poll `predicate` on the running loop until it holds; fail naming `what` after `within` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.002)  # a poll interval, not synchronisation: the deadline rules


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
