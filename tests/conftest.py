"""Fixtures shared by the project's own tests in tests/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import logging_to


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """Logging configured to a file of the test's own; the pytest plugin's file again after."""
    with logging_to(tmp_path / "cellctl.log") as log:
        yield log
