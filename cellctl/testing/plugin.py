"""The pytest plugin of cellctl's testing kit, installed with cellctl (entry point `cellctl` in
the `pytest11` group; `-p no:cellctl` turns it off).

Fixtures: `serve_cell` (any cell file on simulators), `cell_sim` (the cell named by the
`cellctl_cell` marker, `--cellctl-cell FILE` or the `cellctl_cell` setting, on simulators),
`run_recipe` (`cellctl run` in-process against it) and `cellctl_cli` (any cellctl command
in-process). Every simulator a test started is stopped when it ends.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pytest

from cellctl.errors import CellctlError

if TYPE_CHECKING:  # imported by the fixtures that use them: the plugin loads in every pytest run
    from cellctl.testing.runs import CliResult
    from cellctl.testing.simulators import Served

#: Set by the plugin to the folder of the per-test journals it chose.
_JOURNALS = "CELLCTL_TESTS_JOURNALS"

#: The marker, command-line option (--cellctl-cell) and setting that name the cell of cell_sim.
CELL = "cellctl_cell"
#: The one place the three ways of naming the cell are spelled out for a person.
HOW_TO_NAME = (
    "name the cell file: @pytest.mark.cellctl_cell('cell.yaml') (beside the test file), "
    "--cellctl-cell FILE, or cellctl_cell = FILE in the pytest settings"
)


class ServeCell(Protocol):
    """The `serve_cell` fixture: a cell file on simulators until the test ends."""

    def __call__(self, cell: str | Path, *, speed: float = 1.0) -> Served:
        """Serve `cell` (a relative path: beside the test file) at model time factor `speed`."""
        ...


class RunRecipe(Protocol):
    """The `run_recipe` fixture: `cellctl run` in-process."""

    def __call__(
        self,
        recipe: str | Path,
        cell: Served | str | Path | None = None,
        *args: str,
        params: Iterable[str] = (),
        answers: Iterable[str] = (),
    ) -> CliResult:
        """Run `recipe` against `cell` (None: this test's cell_sim), parameters as
        "name=value", prompts answered by "id=value", further `cellctl run` options in `args`."""
        ...


class CellctlCli(Protocol):
    """The `cellctl_cli` fixture: any cellctl command in-process."""

    def __call__(self, *args: str | Path) -> CliResult:
        """Run `cellctl ARGS`; (exit code, stdout, stderr)."""
        ...


def pytest_addoption(parser: pytest.Parser) -> None:
    """--cellctl-cell and the cellctl_cell setting: the cell file that cell_sim serves."""
    group = parser.getgroup("cellctl", "cellctl testing kit")
    group.addoption(
        "--cellctl-cell",
        dest=CELL,
        metavar="FILE",
        default=None,
        help="the cell file that the cell_sim fixture serves on simulators",
    )
    parser.addini(
        CELL, "the cell file that the cell_sim fixture serves (from the settings' folder)"
    )


def pytest_configure(config: pytest.Config) -> None:
    """Declare the cellctl_cell marker; in-process runs log and journal to throwaway files."""
    config.addinivalue_line(
        "markers",
        f"{CELL}(path, speed=1.0): the cell file that cell_sim serves for these tests (a relative "
        "path: beside the test file), at this model time factor",
    )
    # Never to the user's state directory (~/.local/state/cellctl) unless the user asks.
    if "CELLCTL_LOG_FILE" not in os.environ:
        folder = tempfile.mkdtemp(prefix="cellctl-tests-")
        os.environ["CELLCTL_LOG_FILE"] = os.path.join(folder, "cellctl.log")
    # Nor to the user's journal: each test's batches go to a journal of the test's own (see
    # _journal_per_test), so that a batch one test left unfinished (a killed run) never
    # refuses another test's run on the same cell.
    if "CELLCTL_JOURNAL" not in os.environ:
        folder = tempfile.mkdtemp(prefix="cellctl-tests-journal-")
        os.environ["CELLCTL_JOURNAL"] = os.path.join(folder, "journal.sqlite")
        os.environ[_JOURNALS] = folder
    # Nor lock files in the machine's lock folder (/run/lock/cellctl): the session's own.
    if "CELLCTL_LOCK_DIR" not in os.environ:
        os.environ["CELLCTL_LOCK_DIR"] = tempfile.mkdtemp(prefix="cellctl-tests-locks-")


@pytest.fixture(autouse=True)
def _journal_per_test(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """CELLCTL_JOURNAL: a journal of this test's own, when the plugin chose the journal (a
    journal the user named for the session is left alone)."""
    folder = os.environ.get(_JOURNALS)
    if folder:
        name = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
        monkeypatch.setenv("CELLCTL_JOURNAL", os.path.join(folder, f"{name}.sqlite"))


def _beside_test(request: pytest.FixtureRequest, path: str | Path) -> Path:
    """`path`, a relative one taken from the folder of the requesting test's file."""
    return request.path.parent / path


@pytest.fixture
def serve_cell(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeCell]:
    """Serve cell files on simulators at free loopback ports: `serve_cell(path, speed=1.0)`
    returns the Served cell (its `cell_file` points at the simulators); stopped after the test."""
    from cellctl.testing.simulators import serve

    with contextlib.ExitStack() as started:

        def start(cell: str | Path, *, speed: float = 1.0) -> Served:
            path = _beside_test(request, cell)
            try:
                return started.enter_context(serve(path, tmp_path_factory.mktemp("served"), speed))
            except CellctlError as error:  # a broken cell file: the test fails with its message
                pytest.fail(f"cannot serve {path}: {error}", pytrace=False)

        yield start


@pytest.fixture
def cell_sim(request: pytest.FixtureRequest, serve_cell: ServeCell) -> Served:
    """The test's cell on simulators: named by the cellctl_cell marker (closest first), else by
    --cellctl-cell (from the current folder), else by the cellctl_cell setting."""
    config = request.config
    marker = request.node.get_closest_marker(CELL)
    if marker is not None:
        if len(marker.args) != 1:
            pytest.fail(f"@pytest.mark.{CELL} takes one cell file: {HOW_TO_NAME}", pytrace=False)
        return serve_cell(marker.args[0], speed=float(marker.kwargs.get("speed", 1.0)))
    option: str | None = config.getoption(CELL)
    if option:
        return serve_cell(config.invocation_params.dir / option)
    setting = str(config.getini(CELL) or "")
    if setting:
        folder = config.inipath.parent if config.inipath else config.rootpath
        return serve_cell(folder / setting)
    pytest.fail(f"cell_sim has no cell: {HOW_TO_NAME}", pytrace=False)


@pytest.fixture
def cellctl_cli(capsys: pytest.CaptureFixture[str]) -> CellctlCli:
    """Run cellctl in-process: `cellctl_cli("validate", "recipe.yaml")` returns its CliResult
    (exit_code, out, err)."""
    from cellctl.testing.runs import cli

    return lambda *args: cli(capsys, *args)


@pytest.fixture
def run_recipe(request: pytest.FixtureRequest, cellctl_cli: CellctlCli) -> RunRecipe:
    """`cellctl run` in-process: `run_recipe("recipe.yaml", params=["parts=1"])` runs it
    (a relative path: beside the test file) against this test's cell_sim, or against the cell
    given (a Served cell or a cell file); its CliResult has exit_code, out, err and outcome."""

    def run(
        recipe: str | Path,
        cell: Served | str | Path | None = None,
        *args: str,
        params: Iterable[str] = (),
        answers: Iterable[str] = (),
    ) -> CliResult:
        if cell is None:
            cell = request.getfixturevalue("cell_sim")
        cell_file = _beside_test(request, cell if isinstance(cell, str | Path) else cell.cell_file)
        options = [f"--param={param}" for param in params]
        options += [f"--answer={answer}" for answer in answers]
        return cellctl_cli(
            "run", _beside_test(request, recipe), "--cell", cell_file, *options, *args
        )

    return run
