"""Test helpers shared by tests/ and hil_tests/: running the CLI in-process, waiting on a loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cellctl.cli import run


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
