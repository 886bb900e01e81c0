"""The cell as a whole through the CLI: the demo cell on its simulators, or real hardware (--cell).

Without --cell these run against the demo cell served by its simulators on free loopback ports;
with --cell they run against the devices of that cell file, and the tests marked `moves` only
with --allow-motion.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cell import Cell, load_cell
from cellctl.cli import run

DEMO_CELL = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"


@pytest.fixture(scope="module")
def cell_file(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """The cell file under test: --cell, or the demo cell served by its simulators."""
    given = request.config.getoption("--cell")
    if given:
        yield Path(given)
        return
    from cellctl.testing import serve  # only when no --cell is given

    with serve(DEMO_CELL, tmp_path_factory.mktemp("served")) as served:
        yield served.cell_file


@pytest.fixture(scope="module")
def cell(cell_file: Path) -> Cell:
    """The cell under test, loaded."""
    return load_cell(cell_file)


def read_json(
    capsys: pytest.CaptureFixture[str], cell_file: Path, *tags: str
) -> list[dict[str, object]]:
    """Run `cellctl read --json` in-process and return its rows."""
    capsys.readouterr()
    code = run(["read", "--cell", str(cell_file), "--json", *tags])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows: list[dict[str, object]] = json.loads(captured.out)
    return rows


def test_check_reaches_every_device_and_agrees(
    cell_file: Path, cell: Cell, capsys: pytest.CaptureFixture[str]
) -> None:
    code = run(["check", str(cell_file)])
    out = capsys.readouterr().out
    assert code == 0, out
    for device in cell.devices:
        assert any(line.startswith("ok") and f" {device} " in line for line in out.splitlines()), (
            out
        )


def test_read_every_tag_good(
    cell_file: Path, cell: Cell, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = read_json(capsys, cell_file)
    assert [r["tag"] for r in rows] == list(cell.tags)
    assert all(r["quality"] == "good" and r["error"] is None for r in rows), rows


@pytest.mark.moves
def test_every_rw_tag_takes_its_own_value_back(
    cell_file: Path, cell: Cell, capsys: pytest.CaptureFixture[str]
) -> None:
    rw = [t for t, spec in cell.tags.items() if spec.access == "rw"]
    assert rw, "the cell has no rw tag"
    before = {r["tag"]: r["value"] for r in read_json(capsys, cell_file, *rw)}
    for tag in rw:
        text = json.dumps(before[tag]) if isinstance(before[tag], bool) else str(before[tag])
        assert run(["write", "--cell", str(cell_file), "--yes", f"{tag}={text}"]) == 0
        assert f"{tag} = " in capsys.readouterr().out
    after = {r["tag"]: r["value"] for r in read_json(capsys, cell_file, *rw)}
    assert after == before


def test_every_tag_is_delivered_by_its_subscription(cell: Cell) -> None:
    """Polling (Modbus) and monitored items (OPC UA) deliver every tag, all of good quality."""
    import asyncio
    import contextlib

    from cellctl.io.session import CellSession
    from cellctl.values import TagValue

    async def watch() -> dict[str, TagValue]:
        seen: dict[str, TagValue] = {}
        everything = asyncio.Event()

        def record(value: TagValue) -> None:
            seen[value.tag] = value
            if len(seen) == len(cell.tags):
                everything.set()

        async with CellSession(cell, list(cell.tags)) as session:
            stop = session.subscribe(record)
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(everything.wait(), 10)
            finally:
                stop()
        return seen

    seen = asyncio.run(watch())
    assert set(seen) == set(cell.tags), set(cell.tags) - set(seen)
    assert all(v.quality.value == "good" for v in seen.values()), seen
