"""Valid cell files: the demo cell loads and yields the expected points, configs and rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cellctl import expr
from cellctl.cell import (
    Cell,
    ModbusAddress,
    ModbusRtuDevice,
    ModbusTcpDevice,
    OpcuaDevice,
    SimSpec,
    check_cell_file,
    load_cell,
    tags,
)
from cellctl.durations import DurationError, format_duration, parse_duration
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, OpcuaConfig, RequestLimits
from drivers.points import Access, DataType, ModbusPoint, ModbusTable, OpcuaPoint, WordOrder
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import bind_signals

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"


@pytest.fixture(scope="module")
def demo() -> Cell:
    return load_cell(DEMO)


def test_demo_cell_has_no_problems() -> None:
    assert check_cell_file(DEMO) == []


def test_demo_devices(demo: Cell) -> None:
    assert demo.cell == "demo"
    assert demo.source == DEMO
    assert {name: device.driver for name, device in demo.devices.items()} == {
        "conveyor": "modbus-tcp",
        "press": "modbus-rtu",
        "robot": "opcua",
        "inspection": "opcua",
    }
    conveyor = demo.devices["conveyor"]
    assert isinstance(conveyor, ModbusTcpDevice)
    assert conveyor.sim == SimSpec(model="conveyor")
    assert tags.device_config(demo, "conveyor") == ModbusTcpConfig(
        name="conveyor",
        host="127.0.0.1",
        port=5020,
        unit=1,
        poll=0.02,
        limits=RequestLimits(timeout=0.5, retries=1),
    )
    press = tags.device_config(demo, "press")
    assert isinstance(press, ModbusRtuConfig)
    assert (press.port, press.baudrate, press.unit, press.poll) == ("/dev/ttyUSB0", 19200, 2, 0.05)
    robot = tags.device_config(demo, "robot")
    assert isinstance(robot, OpcuaConfig)
    assert (robot.endpoint, robot.publishing_interval, robot.security.policy) == (
        "opc.tcp://127.0.0.1:4840/robot",
        0.05,
        "None",
    )


def test_demo_points(demo: Cell) -> None:
    assert tags.point_for(demo, "conveyor.run") == ModbusPoint(
        "conveyor.run", ModbusTable.COIL, 0, DataType.BOOL, access=Access.RW
    )
    assert tags.point_for(demo, "safety.light_curtain_ok") == ModbusPoint(
        "safety.light_curtain_ok", ModbusTable.DISCRETE_INPUT, 7, DataType.BOOL
    )
    assert tags.point_for(demo, "press.setpoint_kN") == ModbusPoint(
        "press.setpoint_kN",
        ModbusTable.HOLDING_REGISTER,
        0,
        DataType.FLOAT32,
        None,
        WordOrder.ABCD,
        Access.RW,
    )
    cycles = tags.point_for(demo, "press.cycles")
    assert isinstance(cycles, ModbusPoint)
    assert (cycles.table, cycles.address, cycles.datatype, cycles.end) == (
        ModbusTable.INPUT_REGISTER,
        2,
        DataType.UINT32,
        4,
    )
    assert tags.point_for(demo, "robot.position") == OpcuaPoint(
        "robot.position", "ns=2;s=Robot.Position", DataType.FLOAT64
    )
    by_device = tags.points_by_device(demo)
    # The conveyor and the press each have a heartbeat tag beside their process tags.
    assert [len(by_device[d]) for d in ("conveyor", "press", "robot", "inspection")] == [7, 7, 3, 4]


def test_demo_methods(demo: Cell) -> None:
    pick = tags.method_spec(demo, "robot.pick")
    assert (pick.object_node, pick.browse_name, pick.result) == (
        "ns=2;s=Robot",
        "2:Pick",
        DataType.BOOL,
    )
    assert [(a.name, a.datatype) for a in pick.args] == [("slot", DataType.INT32)]
    assert {name: [m.name for m in ms] for name, ms in tags.methods_by_device(demo).items()} == {
        "robot": ["robot.pick", "robot.place"],
        "inspection": ["inspection.measure"],
    }


def test_demo_interlocks_are_conditions_over_its_tags(demo: Cell) -> None:
    assert [(i.name, i.action) for i in demo.interlocks] == [
        ("light-curtain", "hold"),
        ("conveyor-fault", "stop"),
        ("press-fault", "abort"),
        ("robot-fault", "stop"),
    ]
    kinds: dict[str, expr.Kind | None] = {
        name: expr.kind_of(tag.datatype) for name, tag in demo.tags.items()
    }
    curtain = expr.parse(demo.interlocks[0].when)
    assert expr.check(curtain, kinds, expr.Kind.BOOL) == []
    assert expr.evaluate(curtain, {"safety.light_curtain_ok": False}) is True


def test_demo_safe_state_writes_rw_tags_with_checked_values(demo: Cell) -> None:
    assert demo.safe_state == {
        "conveyor.run": False,
        "conveyor.speed_rpm": 0,
        "press.cycle_start": False,
        "inspection.trigger": False,
    }
    for name, value in demo.safe_state.items():
        assert type(value) in (bool, int)  # builtins, not the YAML loader's subclasses
        assert demo.tags[name].access is Access.RW
        assert demo.tags[name].check_value(value) == value


# What the plant-model helper's models read and write (drivers/sim/plant): each signal must
# bind to exactly one tag of its device by name suffix.
SIGNALS = {
    "conveyor": [
        "run",
        "speed_rpm",
        "part_at_station",
        "light_curtain_ok",
        "fault",
        "parts_delivered",
    ],
    "press": ["setpoint_kN", "force_kN", "cycle_start", "cycle_done", "fault", "cycles"],
    "robot": ["busy", "fault", "position"],
    "inspection": ["trigger", "done", "passed", "measured_mm"],
}


@pytest.mark.parametrize("device", list(SIGNALS))
def test_demo_tags_bind_to_plant_model_signals(demo: Cell, device: str) -> None:
    image = ProcessImage(device, tags.points_by_device(demo)[device])
    signals = {signal: DataType.BOOL for signal in SIGNALS[device]}
    bound = bind_signals(device, signals, image, {})
    assert sorted(bound) == sorted(SIGNALS[device])


def test_schema_is_json(demo: Cell) -> None:
    schema = Cell.model_json_schema()
    text = json.dumps(schema)
    assert schema["required"] == ["cell", "devices"]
    assert '"pattern"' in text and "20ms" in text


VARIANTS = """\
cell: variants
devices:
  gw_a: {driver: modbus-tcp, host: 10.0.0.9, unit: 1, word_order: DCBA}
  gw_b: {driver: modbus-tcp, host: 10.0.0.9, unit: 2}   # another unit behind the same gateway
  line_a: {driver: modbus-rtu, port: /dev/ttyS0, unit: 1, parity: E}
  line_b: {driver: modbus-rtu, port: /dev/ttyS0, unit: 2, parity: E}
  ua:
    driver: opcua
    endpoint: opc.tcp://[::1]:4850
    security: Basic256Sha256_SignAndEncrypt
    cert: client.der
    key: client.pem
    sim: {model: robot, signals: {busy: ua.running}}
  mem: &memdev {driver: memory, poll: 1.5s}
  mem2: *memdev
tags:
  gw_a.bit0: {device: gw_a, address: "hr:3.0", access: rw}
  gw_a.bit1: {device: gw_a, address: "hr:3.1", access: rw}
  gw_a.word: {device: gw_a, address: "hr:2"}          # hr:2 only: touches neither bit
  gw_b.word: {device: gw_b, address: "hr:3", type: int64}   # same address, other unit
  line_a.f: {device: line_a, address: "Ir:10", type: float64, word_order: CDAB}
  line_b.f: {device: line_b, address: "ir:10", type: float64}
  ua.running: {device: ua, node: "nsu=urn:x;s=Running", type: bool}
  ua.count: {device: ua, node: "i=2258", type: uint32}
  mem.x: {device: mem, type: float32, access: rw, scale: 0.5, min: -1, max: 1}
interlocks:
  - name: gap
    when: >-
      gw_a.bit0 and
      (ua.count > 3 or abs(mem.x) >= 0.5)
    action: stop
safe_state:
  gw_a.bit0: true
  mem.x: -1
"""


def test_valid_variants(tmp_path: Path) -> None:
    path = tmp_path / "variants.yaml"
    path.write_text(VARIANTS)
    cell = load_cell(path)
    assert isinstance(cell.devices["line_a"], ModbusRtuDevice)
    ua = cell.devices["ua"]
    assert isinstance(ua, OpcuaDevice)
    assert (ua.host, ua.port) == ("::1", 4850)
    assert ua.sim == SimSpec(model="robot", signals={"busy": "ua.running"})
    assert cell.devices["mem2"] == cell.devices["mem"]
    assert cell.tags["line_a.f"].address == ModbusAddress(ModbusTable.INPUT_REGISTER, 10)
    a_word = tags.point_for(cell, "gw_a.word")
    assert isinstance(a_word, ModbusPoint) and a_word.word_order is WordOrder.DCBA
    security = tags.device_config(cell, "ua")
    assert isinstance(security, OpcuaConfig)
    assert security.security.cert == str(tmp_path / "client.der")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("20ms", 0.02),
        ("1.5s", 1.5),
        ("10s", 10.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        (" 3 s ", 3.0),
        (".5s", 0.5),
        ("0s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (5, "needs a unit"),
        (0.5, "needs a unit"),
        ("5", "'5'"),
        ("1.5 sec", "'1.5 sec'"),
        ("-1s", "'-1s'"),
        ("1e3ms", "'1e3ms'"),
        (True, "True"),
        ("inf s", "'inf s'"),
    ],
)
def test_parse_duration_refuses(value: object, says: str) -> None:
    with pytest.raises(DurationError) as caught:
        parse_duration(value)
    assert says in str(caught.value)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0.02, "20ms"), (1.5, "1.5s"), (120.0, "2m"), (7200.0, "2h"), (90, "90s")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)
