"""One load path for cell files: each file read once, each condition parsed once, and the Modbus
device configs built on one common base."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from cellctl.cell import load_cell, tags
from cellctl.recipe import check_recipe_file
from drivers.config import ModbusConfig, ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.points import WordOrder
from tests.support import opens

CELL = """\
cell: bench
devices:
  line: {driver: modbus-tcp, host: 127.0.0.1, port: 5020, unit: 3, poll: 50ms, max_gap: 4}
  press: {driver: modbus-rtu, port: /dev/ttyUSB0, unit: 2, word_order: CDAB, timeout: 2s}
tags:
  line.ok:   {device: line, address: "di:0"}
  line.run:  {device: line, address: "coil:0", access: rw}
  press.ok:  {device: press, address: "di:0"}
interlocks:
  - {name: a, when: "not line.ok", action: hold}
  - {name: b, when: "not line.ok", action: stop}
ready: {when: "line.ok and press.ok", timeout: 2s}
"""

RECIPE = """\
recipe: r
version: 1
steps:
  - {id: go, set: {line.run: true}}
"""


def test_checking_a_recipe_reads_its_cell_file_once(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text(CELL)
    (tmp_path / "r.yaml").write_text(RECIPE)
    with opens() as opened:
        assert check_recipe_file(tmp_path / "r.yaml") == []
    assert opened.count(str(tmp_path / "cell.yaml")) == 1


def test_a_loaded_cell_keeps_the_conditions_its_check_parsed(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text(CELL)
    cell = load_cell(tmp_path / "cell.yaml")
    first, second = (interlock.condition for interlock in cell.interlocks)
    # One parse per text while the file was checked: two interlocks that say the same share it.
    assert first is second
    assert first.names == {"line.ok"}
    assert cell.ready is not None
    assert cell.ready.condition.names == {"line.ok", "press.ok"}
    assert cell.ready_tags == ["line.ok", "press.ok"]


def test_tcp_and_rtu_configs_share_their_common_fields(tmp_path: Path) -> None:
    (tmp_path / "cell.yaml").write_text(CELL)
    cell = load_cell(tmp_path / "cell.yaml")
    common = {field.name for field in fields(ModbusConfig)}
    assert common == {"name", "poll", "limits", "word_order", "max_gap"}
    tcp, rtu = tags.device_config(cell, "line"), tags.device_config(cell, "press")
    assert isinstance(tcp, ModbusTcpConfig) and isinstance(rtu, ModbusRtuConfig)
    assert (tcp.poll, tcp.limits, tcp.word_order, tcp.max_gap) == (
        0.05,
        RequestLimits(1.0, 1),
        WordOrder.ABCD,
        4,
    )
    assert (rtu.poll, rtu.limits, rtu.word_order, rtu.max_gap) == (
        0.1,
        RequestLimits(2.0, 1),
        WordOrder.CDAB,
        0,
    )
    # Where the device is, then its unit, stay positional; the common fields are keywords.
    assert ModbusTcpConfig("x", "10.0.0.2", 502, 7, poll=0.2).unit == 7
    assert ModbusRtuConfig("x", "/dev/ttyS0", 4, 9600).baudrate == 9600
