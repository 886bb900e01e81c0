"""hil_tests: --cell and --allow-motion at work (the options are registered in the root
conftest.py, so that `pytest --cell=FILE` works from the project root too: see there why `=`)
and the tools beyond Python that some tests need (skipped where missing, except where CI
requires them)."""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import NoReturn

import pytest

#: Comma-separated tools (faketime, browser, netns, node) that must be present: `.ci/run` sets
#: it, so in CI a test that needs a missing tool fails instead of skipping.
REQUIRE_ENV = "CELLCTL_REQUIRE"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On real hardware, tests that move a machine run only with --allow-motion."""
    if config.getoption("--cell") is None or config.getoption("--allow-motion"):
        return
    guard = pytest.mark.skip(reason="moves a real machine: pass --allow-motion to run it")
    for item in items:
        if "moves" in item.keywords:
            item.add_marker(guard)


def required_tools() -> frozenset[str]:
    """The tools CELLCTL_REQUIRE says must be present (empty outside CI)."""
    listed = os.environ.get(REQUIRE_ENV, "").split(",")
    return frozenset(tool.strip() for tool in listed if tool.strip())


def tool_missing(tool: str, why: str) -> NoReturn:
    """Skip a test for a missing tool; fail it where CELLCTL_REQUIRE requires the tool."""
    if tool in required_tools():
        pytest.fail(f"{why} ({REQUIRE_ENV} requires {tool})", pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def libfaketime() -> Path:
    """libfaketime's preload library (Debian package faketime), found for any architecture."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    found += sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        tool_missing("faketime", "libfaketime is not installed (apt-get install faketime)")
    return Path(found[0])
