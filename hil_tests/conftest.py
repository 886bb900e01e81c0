"""hil_tests options: --cell points the cell-level tests at real hardware instead of simulators."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add --cell and --allow-motion."""
    group = parser.getgroup("cellctl hardware-in-the-loop")
    group.addoption(
        "--cell",
        action="store",
        default=None,
        help="run the cell-level tests against the devices of this cell file (real hardware) "
        "instead of the demo cell on simulators",
    )
    group.addoption(
        "--allow-motion",
        action="store_true",
        default=False,
        help="with --cell: also run tests marked 'moves' (they write rw tags on real machines)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On real hardware, tests that move a machine run only with --allow-motion."""
    if config.getoption("--cell") is None or config.getoption("--allow-motion"):
        return
    guard = pytest.mark.skip(reason="moves a real machine: pass --allow-motion to run it")
    for item in items:
        if "moves" in item.keywords:
            item.add_marker(guard)
