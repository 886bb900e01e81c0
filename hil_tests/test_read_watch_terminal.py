"""`cellctl read --watch` on a real 80x24 pseudo-terminal: of a cell with more tags than fit, the
first rows and a line counting the rest, all within the screen; a value a third client writes
to the device shows in its row; Ctrl-C ends it with exit 0, its last frame left on the screen.

The terminal is hil_tests/test_run_terminal.py's (a pty read through pyte, what a person sees);
the device is the generic Modbus TCP simulator, written to by a raw pymodbus client.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from cellctl.cell import ModbusTcpDevice
from cellctl.testing import Served, serve, wait_until
from hil_tests.test_run_terminal import CTRL_C, DEADLINE, Terminal

#: Tags of the cell: more than an 80x24 terminal shows.
TAGS = 100
#: Rows the watch has room for at 24 lines: title, borders, header and its rule, the "more"
#: line take the other 6.
SHOWN = 24 - 6


def cell_text() -> str:
    """One Modbus TCP device with TAGS holding registers, one tag each."""
    lines = [
        "cell: watched",
        "devices:",
        "  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020, unit: 1, timeout: 1s, "
        "retries: 1}",
        "tags:",
    ]
    lines += [
        f'  plc.t{i:03}: {{device: plc, address: "hr:{i}", type: uint16, access: rw}}'
        for i in range(TAGS)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The cell on the generic Modbus simulator at a free port."""
    folder = tmp_path_factory.mktemp("watch")
    source = folder / "source.yaml"
    source.write_text(cell_text(), encoding="utf-8")
    with serve(source, folder) as running:
        yield running


async def write_register(served: Served, address: int, value: int) -> None:
    """Holding register `address` of the device written by a raw pymodbus client of our own."""
    device = served.cell.devices["plc"]
    assert isinstance(device, ModbusTcpDevice)
    client = AsyncModbusTcpClient(device.host, port=device.port, timeout=1.0, retries=0)
    try:
        assert await client.connect(), f"plc at {device.host}:{device.port}: no connection"
        answer = await client.write_register(address, value, device_id=device.unit)
        assert not answer.isError(), answer
    finally:
        client.close()


def test_watch_fits_80x24_and_a_changed_value_shows_in_its_row(
    served: Served, tmp_path: Path
) -> None:
    term = Terminal(["read", "--cell", str(served.cell_file), "--watch"], tmp_path / "log", 24, 80)
    try:
        more = f"… {TAGS - SHOWN} more tags: name fewer with TAG|DEVICE arguments"
        rows = term.wait_on_screen("watched", "plc.t000", more)
        screen = "\n".join(rows)
        # The first SHOWN tags in the order of the cell, each on a row of its own; no more.
        for i in range(SHOWN):
            assert sum(f"plc.t{i:03} " in row for row in rows) == 1, screen
        assert f"plc.t{SHOWN:03}" not in screen
        # The "more" line is the last one, under the table: nothing was cut off the screen.
        assert [row for row in rows if row][-1] == more, screen
        assert rows[0].strip() == "watched", screen  # the title is the first row

        asyncio.run(write_register(served, 5, 4242))
        wait_until(
            lambda: any("plc.t005" in row and " 4242 " in row for row in term.screen()),
            DEADLINE,
            "plc.t005's row to show 4242",
        )
        # The other rows are where they were.
        rows = term.screen()
        assert [row.split()[1] for row in rows[4 : 4 + SHOWN]] == [
            f"plc.t{i:03}" for i in range(SHOWN)
        ], "\n".join(rows)

        term.press(CTRL_C)
        assert term.exit_code() == 0, term.text()
        assert "Traceback" not in term.text()
        # The last frame stays on the screen as it was: no table of all 100 tags after it.
        assert f"plc.t{TAGS - 1:03}" not in term.text()
        assert more in "\n".join(term.screen())
    finally:
        term.close()
