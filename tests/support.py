"""Test helpers shared by tests/ and hil_tests/: running the CLI in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cli import run


def cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """Run cellctl in-process; (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = run([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err
