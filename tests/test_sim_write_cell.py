"""CellSimulator.write_cell: the served copy of a cell file lands only on a regular file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cellctl.cell import load_cell, load_cell_and_bytes
from cellctl.io.sim import CellSimulator, SimulatorError, serve_host

CELL = (
    "# the bench\ncell: bench\ndevices:\n  m: {driver: memory}\n"
    "tags:\n  m.x: {device: m, type: int32, access: rw}\n"
)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A cell file whose only device lives in-process: nothing is served, nothing opens."""
    path = tmp_path / "cell.yaml"
    path.write_text(CELL, encoding="utf-8")
    return path


def test_a_symlink_is_written_through_keeping_the_targets_mode(
    source: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real.yaml"
    real.write_text("old\n", encoding="utf-8")
    real.chmod(0o640)
    link = tmp_path / "link.yaml"
    link.symlink_to(real)
    cell, raw = load_cell_and_bytes(source)
    CellSimulator(cell).write_cell(source, link, raw)
    assert link.is_symlink()
    assert real.read_text(encoding="utf-8") == CELL  # comments kept
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cell.yaml", "link.yaml", "real.yaml"]


@pytest.mark.timeout(10)  # opening a FIFO to write blocks until somebody reads it
def test_a_fifo_where_the_partial_file_would_go_is_never_opened(
    source: Path, tmp_path: Path
) -> None:
    target = tmp_path / "served.yaml"
    os.mkfifo(tmp_path / "served.yaml.part")
    cell, raw = load_cell_and_bytes(source)
    CellSimulator(cell).write_cell(source, target, raw)
    assert target.read_text(encoding="utf-8") == CELL
    assert stat.S_ISFIFO(os.stat(tmp_path / "served.yaml.part").st_mode)


def test_the_source_itself_is_refused(source: Path) -> None:
    cell, raw = load_cell_and_bytes(source)
    with pytest.raises(SimulatorError, match="is the cell file being served"):
        CellSimulator(cell).write_cell(source, source, raw)
    assert source.read_text(encoding="utf-8") == CELL


def test_an_empty_host_is_refused(source: Path) -> None:
    # asyncio and pymodbus would read it as every interface.
    with pytest.raises(SimulatorError, match="name the address to serve on"):
        CellSimulator(load_cell(source), host=" ")


@pytest.mark.parametrize("text", ["127.0.0.1:4840", "[::1", "a/b", "opc.tcp://127.0.0.1"])
def test_a_host_that_is_no_address_is_bad_input(text: str) -> None:
    with pytest.raises(SimulatorError, match="not an address or a host name"):
        serve_host(text)


@pytest.mark.parametrize(
    ("text", "host"),
    [("[::1]", "::1"), (" 127.0.0.1 ", "127.0.0.1"), ("plc-7.local", "plc-7.local")],
)
def test_a_host_is_an_address_or_a_name(text: str, host: str) -> None:
    assert serve_host(text) == host
