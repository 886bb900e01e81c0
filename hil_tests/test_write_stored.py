"""`cellctl write` confirms what the device stores, over Modbus TCP: a scaled tag holds whole raw
steps, so the value typed is not always the value kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.testing import cli, serve

CELL = """\
cell: scaled
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020, unit: 1, timeout: 300ms, retries: 1}
tags:
  plc.temp: {device: plc, address: "hr:0", type: int16, scale: 0.1, access: rw, unit: degC}
"""


@pytest.fixture(scope="module")
def cell_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The cell on the generic Modbus simulator at a free port, and the file pointing at it."""
    folder = tmp_path_factory.mktemp("scaled")
    source = folder / "source.yaml"
    source.write_text(CELL, encoding="utf-8")
    with serve(source, folder) as served:
        yield served.cell_file


def test_write_confirms_a_scaled_value_as_the_device_stores_it(
    cell_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 12.34 at scale 0.1 is raw 123.4, rounded to 123: the device holds 12.3.
    code, out, err = cli(capsys, "write", "--cell", cell_file, "plc.temp=12.34")
    assert code == 0, err
    assert out.strip() == "plc.temp = 12.3 (confirmed)"
    code, out, err = cli(capsys, "read", "--cell", cell_file, "--json", "plc.temp")
    assert code == 0, err
    assert [row["value"] for row in json.loads(out)] == [12.3]
