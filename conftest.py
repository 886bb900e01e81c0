"""Settings shared by tests/ and hil_tests/ (the testing kit's plugin, cellctl.testing.plugin,
sends in-process runs' logs to a throwaway file)."""

import pytest
from hypothesis import settings

# 2-core CI machines make hypothesis's default 200 ms per-example deadline flaky.
settings.register_profile("cellctl", deadline=None, max_examples=100)
settings.load_profile("cellctl")


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add --cell and --allow-motion (used by hil_tests/), --chaos-seeds and --chaos-seed
    (hil_tests/test_chaos.py). Here, in the root conftest, because
    pytest learns options only from the conftests it loads before parsing the command line, and
    hil_tests/conftest.py is not among them when no path under it is named. Not in the testing
    kit's plugin: it loads wherever cellctl is installed, and these options are this project's
    (a user's repository names its cell with the plugin's --cellctl-cell).

    Not even a plugin (`-p`, an entry point) is known while pytest looks for its settings, so
    there `--cell FILE` takes FILE for the path to test: with no path named and FILE outside the
    clone, pytest finds no settings (beside FILE) and refuses --cell. `--cell=FILE` is one word,
    or a path named (`pytest hil_tests --cell FILE`) leads pytest to pyproject.toml.
    """
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
    chaos = parser.getgroup("cellctl chaos schedules (hil_tests/test_chaos.py)")
    chaos.addoption(
        "--chaos-seeds",
        action="store",
        type=int,
        default=None,
        metavar="N",
        help="run N seeded fault schedules (seeds from 1) instead of the suite's fixed ones",
    )
    chaos.addoption(
        "--chaos-seed",
        action="store",
        type=int,
        default=None,
        metavar="S",
        help="run exactly the fault schedule of seed S (as a failure message names it)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """Real machines are tested one test at a time: with --cell, no parallel workers."""
    if config.getoption("cell") and getattr(config.option, "numprocesses", None):
        config.option.numprocesses = 0
