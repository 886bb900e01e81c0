"""From the cell file to the driver layer: points, device configs, methods, scaling, CLI values."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cell import Cell, load_cell, tags
from cellctl.errors import BadValue, MissingSecret, UnknownDevice, UnknownMethod, UnknownTag
from drivers.config import (
    MemoryConfig,
    ModbusRtuConfig,
    ModbusTcpConfig,
    OpcuaConfig,
    OpcuaSecurity,
    RequestLimits,
)
from drivers.points import (
    Access,
    DataType,
    MemoryPoint,
    MethodArg,
    MethodSpec,
    ModbusPoint,
    ModbusTable,
    OpcuaPoint,
    WordOrder,
)

CELL = """\
cell: t
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020, unit: 3, poll: 20ms,
        timeout: 250ms, retries: 1, word_order: CDAB, max_gap: 4}
  rtu: {driver: modbus-rtu, port: /dev/ttyS1, baudrate: 9600, parity: E, stopbits: 2, unit: 7}
  ua:
    driver: opcua
    endpoint: opc.tcp://127.0.0.1:4840/ua
    poll: 200ms
    timeout: 300ms
    retries: 0
    security: Basic256Sha256_SignAndEncrypt
    cert: certs/client.der
    key: certs/client.pem
    trust_dir: certs/trusted
    user: op
    password_env: CELLCTL_TEST_UA_PASSWORD
  mem: {driver: memory}
tags:
  run:   {device: plc, address: "coil:0", access: rw}
  speed: {device: plc, address: "hr:0", access: rw, min: 0, max: 3000}
  flag:  {device: plc, address: "hr:1.3", access: rw}
  total: {device: plc, address: "ir:2", type: uint32, word_order: ABCD}
  temp:  {device: plc, address: "hr:4", type: int16, scale: 0.1, offset: -40, access: rw}
  label: {device: plc, address: "hr:10", type: string, length: 4, access: rw}
  force: {device: rtu, address: "hr:0", type: float32, access: rw, min: 0, max: 25}
  busy:  {device: ua, node: "ns=2;s=Robot.Busy", type: bool}
  pos:   {device: ua, node: "ns=2;i=1001", type: float64, access: rw}
  count: {device: ua, node: "ns=2;s=Count", type: int32, access: rw}
  note:  {device: mem, type: string, access: rw}
  level: {device: mem, key: tank/level, type: float64, access: rw}
methods:
  ua.pick: {device: ua, node: "ns=2;s=Robot", method: "2:Pick",
            args: {slot: int32, speed: float64}, result: bool}
  ua.home: {device: ua, node: "ns=2;s=Robot", method: "2:Home"}
"""


@pytest.fixture
def cell(tmp_path: Path) -> Cell:
    path = tmp_path / "cell.yaml"
    path.write_text(CELL)
    return load_cell(path)


def test_modbus_points_take_device_word_order_unless_the_tag_overrides(cell: Cell) -> None:
    assert tags.point_for(cell, "run") == ModbusPoint(
        "run", ModbusTable.COIL, 0, DataType.BOOL, None, WordOrder.CDAB, Access.RW, 1
    )
    total = tags.point_for(cell, "total")
    assert isinstance(total, ModbusPoint)
    assert (total.table, total.address, total.datatype) == (
        ModbusTable.INPUT_REGISTER,
        2,
        DataType.UINT32,
    )
    assert (total.word_order, total.access, total.width) == (WordOrder.ABCD, Access.RO, 2)


def test_bit_and_string_points(cell: Cell) -> None:
    flag = tags.point_for(cell, "flag")
    assert isinstance(flag, ModbusPoint)
    assert (flag.table, flag.address, flag.bit, flag.datatype) == (
        ModbusTable.HOLDING_REGISTER,
        1,
        3,
        DataType.BOOL,
    )
    assert flag.describe() == "hr:1.3"
    label = tags.point_for(cell, "label")
    assert isinstance(label, ModbusPoint)
    assert (label.datatype, label.length, label.end) == (DataType.STRING, 4, 14)


def test_opcua_and_memory_points(cell: Cell) -> None:
    assert tags.point_for(cell, "busy") == OpcuaPoint("busy", "ns=2;s=Robot.Busy", DataType.BOOL)
    assert tags.point_for(cell, "count") == OpcuaPoint(
        "count", "ns=2;s=Count", DataType.INT32, Access.RW
    )
    assert tags.point_for(cell, "level") == MemoryPoint(
        "level", "tank/level", DataType.FLOAT64, Access.RW
    )
    # A memory tag without a key is stored under its own name.
    assert tags.point_for(cell, "note") == MemoryPoint("note", "note", DataType.STRING, Access.RW)


def test_unknown_tag_names_a_close_match(cell: Cell) -> None:
    with pytest.raises(UnknownTag, match=r"unknown tag 'sped' \(did you mean 'speed'\?\)"):
        tags.point_for(cell, "sped")


def test_points_by_device(cell: Cell) -> None:
    grouped = tags.points_by_device(cell, ["busy", "run", "speed", "run"])
    assert list(grouped) == ["ua", "plc"]
    assert [p.name for p in grouped["plc"]] == ["run", "speed"]
    everything = tags.points_by_device(cell)
    assert list(everything) == ["plc", "rtu", "ua", "mem"]
    assert sum(len(points) for points in everything.values()) == len(cell.tags)


def test_modbus_and_memory_configs(cell: Cell) -> None:
    assert tags.device_config(cell, "plc") == ModbusTcpConfig(
        name="plc",
        host="127.0.0.1",
        port=5020,
        unit=3,
        poll=0.02,
        limits=RequestLimits(timeout=0.25, retries=1),
        word_order=WordOrder.CDAB,
        max_gap=4,
    )
    rtu = tags.device_config(cell, "rtu")
    assert rtu == ModbusRtuConfig(
        name="rtu", port="/dev/ttyS1", unit=7, baudrate=9600, parity="E", stopbits=2
    )
    assert rtu.limits.worst_case == 2.0
    assert tags.device_config(cell, "mem") == MemoryConfig(name="mem", poll=0.02)


def test_opcua_config_reads_the_password_from_the_environment(
    cell: Cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLCTL_TEST_UA_PASSWORD", "s3cret")
    assert tags.device_config(cell, "ua") == OpcuaConfig(
        name="ua",
        endpoint="opc.tcp://127.0.0.1:4840/ua",
        publishing_interval=0.2,
        limits=RequestLimits(timeout=0.3, retries=0),
        security=OpcuaSecurity(
            policy="Basic256Sha256_SignAndEncrypt",
            cert=str(tmp_path / "certs/client.der"),
            key=str(tmp_path / "certs/client.pem"),
            user="op",
            password="s3cret",
            trust_dir=str(tmp_path / "certs/trusted"),
        ),
    )


def test_missing_password_variable_names_device_and_variable(
    cell: Cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CELLCTL_TEST_UA_PASSWORD", raising=False)
    with pytest.raises(
        MissingSecret, match="device ua: environment variable CELLCTL_TEST_UA_PASSWORD"
    ):
        tags.device_config(cell, "ua")


def test_unknown_device(cell: Cell) -> None:
    with pytest.raises(UnknownDevice, match="'pcl' \\(did you mean 'plc'\\?\\)"):
        tags.device_config(cell, "pcl")


def test_method_specs_keep_argument_order(cell: Cell) -> None:
    assert tags.method_spec(cell, "ua.pick") == MethodSpec(
        "ua.pick",
        "ns=2;s=Robot",
        "2:Pick",
        (MethodArg("slot", DataType.INT32), MethodArg("speed", DataType.FLOAT64)),
        DataType.BOOL,
    )
    assert tags.method_spec(cell, "ua.home") == MethodSpec("ua.home", "ns=2;s=Robot", "2:Home")
    assert [m.name for m in tags.methods_by_device(cell)["ua"]] == ["ua.pick", "ua.home"]
    with pytest.raises(UnknownMethod, match=r"'ua\.pik'"):
        tags.method_spec(cell, "ua.pik")


def test_scaling_between_engineering_and_raw_values(cell: Cell) -> None:
    temp = cell.tags["temp"]  # raw int16 in 0.1 degC steps from -40 degC
    assert temp.to_raw(21.5) == 615
    assert isinstance(temp.to_raw(21.5), int)
    assert temp.from_raw(615) == 21.5
    assert temp.to_raw(21.56) == 616  # rounded to the nearest raw step
    assert temp.to_raw(-40.06) == -1  # half away from zero on both sides
    assert temp.from_raw(-1) == -40.1
    speed = cell.tags["speed"]
    assert speed.to_raw(1200) == 1200
    assert speed.from_raw(1200) == 1200
    assert isinstance(speed.from_raw(1200), int)


@pytest.mark.parametrize(
    ("tag", "text", "value"),
    [
        ("run", "true", True),
        ("run", "ON", True),
        ("run", "1", True),
        ("run", "false", False),
        ("run", "off", False),
        ("run", "0", False),
        ("flag", "True", True),
        ("speed", "1200", 1200),
        ("speed", " 0 ", 0),
        ("force", "12.5", 12.5),
        ("force", "20", 20.0),
        ("temp", "21.5", 21.5),
        ("temp", "-40", -40.0),
        ("label", "AB12", "AB12"),
        ("pos", "-1e3", -1000.0),
        ("count", "-2147483648", -2147483648),
        ("note", "any text at all", "any text at all"),
    ],
)
def test_parse_value(cell: Cell, tag: str, text: str, value: object) -> None:
    parsed = tags.parse_value(cell, tag, text)
    assert parsed == value
    assert type(parsed) is type(value)


@pytest.mark.parametrize(
    ("tag", "text", "says"),
    [
        ("run", "maybe", "expects true or false (yes/no, on/off, 1/0)"),
        ("total", "5", "is read-only"),
        ("busy", "true", "is read-only"),
        ("speed", "12.5", "expects a whole number"),
        ("speed", "0x10", "expects a whole number"),
        ("speed", "fast", "expects a whole number"),
        ("speed", "3001", "above the maximum 3000"),
        ("speed", "-1", "expects a whole number in 0..65535 (uint16)"),
        ("force", "-0.5", "below the minimum 0"),
        ("force", "25.01", "above the maximum 25"),
        ("force", "nan", "finite"),
        ("force", "12,5", "expects a finite number"),
        ("temp", "3300", "raw value after scale/offset is 33400"),
        ("label", "ABCDEFGHI", "more than the 8 bytes"),
        ("count", "2147483648", "in -2147483648..2147483647 (int32)"),
        ("pos", "inf", "finite"),
        ("pos", "9" * 5000, "out of range: expects a finite number"),
        ("count", "9" * 400, "out of range: expects a whole number"),
    ],
)
def test_parse_value_refuses(cell: Cell, tag: str, text: str, says: str) -> None:
    device = cell.tags[tag].device
    with pytest.raises(BadValue) as caught:
        tags.parse_value(cell, tag, text)
    assert str(caught.value).startswith(f"tag {tag} on device {device}")
    assert says in str(caught.value)


def test_parse_value_unknown_tag(cell: Cell) -> None:
    with pytest.raises(UnknownTag, match="'forse'"):
        tags.parse_value(cell, "forse", "1")
