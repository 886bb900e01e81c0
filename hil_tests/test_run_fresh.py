"""`cellctl run` over a real protocol: values read after a write are fresh, waits after a write
count only new samples, and `run` connects only the devices the batch uses.

The cell is one generic Modbus TCP device polled every 20 ms, served by a CellSimulator in a
loop thread of this process (its rw points keep what is written); `cellctl run` runs in-process
against a cell file pointing at it, and a raw pymodbus client reads what the device holds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from cellctl.cell import ModbusTcpDevice
from cellctl.testing import cli, free_port, serve

FRESH = Path(__file__).resolve().parent / "cells" / "fresh"
CELL = FRESH / "cell.yaml"
COUNT = FRESH / "count.yaml"
FLAG = FRESH / "flag.yaml"


@dataclass(frozen=True)
class Plc:
    """The served device: where it listens, and the cell file that points at it."""

    host: str
    port: int
    cell_file: Path

    def holding_register(self, address: int) -> int:
        """What the device holds in one holding register, read by a raw pymodbus client."""
        # Any: pymodbus's sync connect() and close() are untyped.
        client: Any = ModbusTcpClient(self.host, port=self.port, timeout=1.0, retries=0)
        try:
            assert client.connect(), f"plc at {self.host}:{self.port}: no connection"
            reply = client.read_holding_registers(address, count=1, device_id=1)
            assert not reply.isError(), reply
            return int(reply.registers[0])
        finally:
            client.close()


@pytest.fixture(scope="module")
def plc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plc]:
    """The fresh cell's device on the generic simulator at a free port."""
    with serve(CELL, tmp_path_factory.mktemp("fresh")) as served:
        device = served.simulator.served_cell.devices["plc"]
        assert isinstance(device, ModbusTcpDevice)
        yield Plc(device.host, device.port, served.cell_file)


# --- freshness ---------------------------------------------------------------------------------


def test_each_round_reads_what_the_last_round_wrote(
    plc: Plc, capsys: pytest.CaptureFixture[str]
) -> None:
    # 30 read-modify-writes in ~0.1 s against a 20 ms poll: a value taken from the last poll
    # instead of read after the previous write was confirmed would count fewer than 30.
    code, out, err = cli(capsys, "run", COUNT, "--cell", plc.cell_file)
    assert code == 0, out + err
    assert "outcome: Complete" in out
    count = "wrote plc.count = "  # Resetting's own writes (its safe state) are of plc.run
    writes = [line.split(count)[1] for line in out.splitlines() if count in line]
    assert writes == [str(n) for n in range(31)]  # the zero, then 1..30 in order
    assert plc.holding_register(2) == 30


def test_a_wait_after_a_write_never_passes_on_the_value_from_before(
    plc: Plc, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "run", FLAG, "--cell", plc.cell_file)
    assert code == 0, out + err
    # `lower` wrote false, then waited for true: the polls had seen true just before the write,
    # and that sample must not count. The wait times out (on_error: skip).
    assert "step 3 lower met" not in out
    assert (
        "step 3 lower failed: step 'lower' timed out after 0.3 s waiting for plc.flag "
        "(plc.flag = false)" in out
    )
    assert "step 3 lower skipped: on_error: skip" in out
    # `raise` wrote true, then waited for true: it passes on the new value.
    assert "step 4 raise met: plc.flag (plc.flag = true)" in out
    assert "outcome: Complete" in out
    assert "steps: 3 done, 1 skipped, 0 failed" in out


# --- run connects only what the batch uses ----------------------------------------------------

RECIPE_PLC = """\
recipe: plc-only
version: 1
steps:
  - {id: mark, set: {plc.count: 7}}
"""

RECIPE_SPARE = """\
recipe: uses-spare
version: 1
steps:
  - {id: mark, set: {plc.count: 99}}
  - {id: spare, set: {spare.x: 1}}
"""


def spare_cell(plc: Plc, folder: Path, *, interlock: bool = False, safe: bool = False) -> Path:
    """The served plc and a `spare` device on a closed port; the interlocks and the safe state
    use `spare` only when asked to."""
    lines = [
        "cell: two",
        "devices:",
        f"  plc: {{driver: modbus-tcp, host: {plc.host}, port: {plc.port}, poll: 20ms,",
        "        timeout: 300ms, retries: 1}",
        f"  spare: {{driver: modbus-tcp, host: 127.0.0.1, port: {free_port()}, poll: 20ms,",
        "          timeout: 300ms, retries: 1}",
        "tags:",
        "  plc.run:   {device: plc, address: 'coil:0', access: rw}",
        "  plc.count: {device: plc, address: 'hr:2', type: uint16, access: rw}",
        "  spare.x:   {device: spare, address: 'hr:0', type: uint16, access: rw}",
        "  spare.ok:  {device: spare, address: 'coil:0', access: rw}",
    ]
    if interlock:
        lines += ["interlocks:", "  - {name: spare-ok, when: not spare.ok, action: hold}"]
    lines.append("safe_state: {plc.run: false" + (", spare.x: 0}" if safe else "}"))
    cell = folder / "cell.yaml"
    cell.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cell


def test_a_device_nothing_uses_is_not_connected(
    plc: Plc, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    cell = spare_cell(plc, tmp_path)
    recipe = tmp_path / "plc-only.yaml"
    recipe.write_text(RECIPE_PLC, encoding="utf-8")
    code, out, err = cli(capsys, "run", recipe, "--cell", cell)
    assert code == 0, out + err
    assert "outcome: Complete" in out
    assert "spare" not in out + err
    assert "spare" not in caplog.text  # no connect attempt, no health record
    assert plc.holding_register(2) == 7


@pytest.mark.parametrize("uses", ["recipe", "interlock", "safe-state"])
def test_a_used_device_that_cannot_be_reached_exits_2_writing_nothing(
    plc: Plc, tmp_path: Path, capsys: pytest.CaptureFixture[str], uses: str
) -> None:
    cell = spare_cell(plc, tmp_path, interlock=uses == "interlock", safe=uses == "safe-state")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE_SPARE if uses == "recipe" else RECIPE_PLC, encoding="utf-8")
    marked = 7 if plc.holding_register(2) != 7 else 8
    code, out, err = cli(capsys, "write", "--cell", plc.cell_file, f"plc.count={marked}")
    assert code == 0, err
    code, out, err = cli(capsys, "run", recipe, "--cell", cell)
    assert code == 2, out + err
    assert "spare" in err, err  # the unreachable device is named
    assert "Traceback" not in out + err
    assert "wrote" not in out
    assert plc.holding_register(2) == marked  # nothing was written to the device that answers
