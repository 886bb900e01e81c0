"""Broken cell files: every problem at once, at its exact line and column, naming the culprit."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellctl.cell import check_cell_file, load_cell
from cellctl.errors import Problem, ValidationFailed
from tests.located import Expect, assert_located, col_of, expect

# Five lines every case below builds on: a Modbus TCP, an OPC UA and a memory device.
HEAD = """\
cell: t
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020}
  ua: {driver: opcua, endpoint: "opc.tcp://127.0.0.1:4840/ua"}
  mem: {driver: memory}
"""


CASES: dict[str, tuple[str, list[Expect]]] = {
    # --- YAML ------------------------------------------------------------------------------
    "yaml-syntax": (
        "cell: t\ndevices:\n  plc: {driver: memory\ntags: {}\n",
        [expect(4, ": {}", "yaml-syntax", "YAML syntax error")],
    ),
    "yaml-tab-indent": (
        "cell: t\ndevices:\n\tplc: {driver: memory}\n",
        [expect(3, "\t", "yaml-syntax", "YAML syntax error")],
    ),
    "duplicate-tag": (
        HEAD + "tags:\n  a: {device: plc, address: 'hr:0'}\n  a: {device: plc, address: 'hr:1'}\n",
        [expect(8, "a:", "duplicate-key", "'a'", "tags", "first at line 7")],
    ),
    "duplicate-device-and-key": (
        "cell: t\ndevices:\n  m: {driver: memory}\n  m: {driver: memory, driver: memory}\n",
        [
            expect(4, "m:", "duplicate-key", "'m'", "devices", "first at line 3"),
            expect(4, "driver: memory}", "duplicate-key", "'driver'", "devices.m"),
        ],
    ),
    "empty-file": ("# nothing here yet\n\n", [expect(1, "#", "empty", "empty")]),
    "top-level-list": ("- cell: t\n", [expect(1, "-", "model_type", "expected a mapping")]),
    "unknown-top-level-key": (
        HEAD + "tag:\n  a: {device: plc, address: 'hr:0'}\n",
        [expect(6, "tag:", "unknown-key", "unknown key 'tag'", "did you mean 'tags'")],
    ),
    "missing-cell-name": (
        "devices:\n  m: {driver: memory}\n",
        [expect(1, "devices", "missing", "missing required key 'cell'")],
    ),
    # --- devices ---------------------------------------------------------------------------
    "unknown-driver": (
        "cell: t\ndevices:\n  bus: {driver: profibus, port: 1}\n",
        [expect(3, "profibus", "unknown-driver", "device bus", "'profibus'", "modbus-tcp")],
    ),
    "port-out-of-range": (
        "cell: t\ndevices:\n  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 70000}\n",
        [expect(3, "70000", "less_than_equal", "device plc", "port", "65535")],
    ),
    "unit-out-of-range": (
        "cell: t\ndevices:\n  plc:\n    driver: modbus-tcp\n    host: 127.0.0.1\n    unit: 300\n",
        [expect(6, "300", "less_than_equal", "device plc", "unit", "247")],
    ),
    "unknown-device-key": (
        "cell: t\ndevices:\n  plc:\n    driver: modbus-tcp\n    hots: 127.0.0.1\n",
        [
            expect(4, "driver", "missing", "device plc", "missing required key 'host'"),
            expect(5, "hots", "unknown-key", "device plc", "'hots'", "did you mean 'host'"),
        ],
    ),
    "duration-without-unit": (
        "cell: t\ndevices:\n  m: {driver: memory, poll: 5}\n",
        [expect(3, "5}", "bad-duration", "device m", "poll", "needs a unit")],
    ),
    "bad-duration": (
        "cell: t\ndevices:\n  plc: {driver: modbus-tcp, host: h, timeout: 1.5 sec}\n",
        [expect(3, "1.5 sec", "bad-duration", "device plc", "timeout", "'1.5 sec'")],
    ),
    "password-in-file": (
        "cell: t\ndevices:\n  ua:\n    driver: opcua\n"
        "    endpoint: opc.tcp://127.0.0.1:4840\n    user: op\n    password: hunter2\n",
        [expect(7, "hunter2", "password-in-file", "device ua", "password_env")],
    ),
    "user-without-password-env": (
        "cell: t\ndevices:\n  ua:\n    driver: opcua\n"
        "    endpoint: opc.tcp://127.0.0.1:4840\n    user: op\n",
        [
            expect(6, "op", "missing", "device ua", "user 'op' needs password_env"),
            expect(6, "op", "insecure-password", "device ua", "SignAndEncrypt", "clear text"),
            expect(6, "op", "untrusted-server", "device ua", "server_cert", "trust_dir"),
        ],
    ),
    "bad-endpoint": (
        "cell: t\ndevices:\n  ua: {driver: opcua, endpoint: 'http://127.0.0.1:4840/x'}\n",
        [expect(3, "'http", "bad-endpoint", "device ua", "opc.tcp://")],
    ),
    "opcua-same-port-other-path": (
        HEAD + "  ua2: {driver: opcua, endpoint: 'opc.tcp://127.0.0.1:4840/other'}\n",
        [expect(6, "'opc", "endpoint-conflict", "device ua2", "device ua (line 4)", "port")],
    ),
    "localhost-is-127.0.0.1": (
        "cell: t\ndevices:\n"
        "  a: {driver: opcua, endpoint: 'opc.tcp://127.0.0.1:18840/a'}\n"
        "  b: {driver: opcua, endpoint: 'opc.tcp://localhost:18840/b'}\n",
        [expect(4, "'opc", "endpoint-conflict", "device b", "device a (line 3)", "port")],
    ),
    "opcua-same-endpoint": (
        HEAD + "  ua2: {driver: opcua, endpoint: 'opc.tcp://127.0.0.1:4840/ua'}\n",
        [expect(6, "'opc", "endpoint-conflict", "device ua2", "already device ua (line 4)")],
    ),
    "modbus-and-opcua-on-one-port": (
        HEAD + "  plc2: {driver: modbus-tcp, host: 127.0.0.1, port: 4840}\n",
        [expect(6, "4840", "endpoint-conflict", "device plc2", "device ua", "protocol")],
    ),
    "same-unit-on-one-gateway": (
        HEAD + "  plc2: {driver: modbus-tcp, host: 127.0.0.1, port: 5020, unit: 1}\n",
        [expect(6, "1}", "unit-conflict", "device plc2", "unit 1", "device plc (line 3)")],
    ),
    "same-unit-on-one-rs485-line": (
        "cell: t\ndevices:\n"
        "  a: {driver: modbus-rtu, port: /dev/ttyUSB0, unit: 2}\n"
        "  b: {driver: modbus-rtu, port: /dev/ttyUSB0, unit: 2}\n",
        [expect(4, "2}", "unit-conflict", "device b", "/dev/ttyUSB0", "device a (line 3)")],
    ),
    "serial-settings-differ-on-one-line": (
        "cell: t\ndevices:\n"
        "  a: {driver: modbus-rtu, port: /dev/ttyUSB0, unit: 1}\n"
        "  b: {driver: modbus-rtu, port: /dev/ttyUSB0, unit: 2, baudrate: 9600}\n",
        [expect(4, "/dev", "serial-conflict", "device b", "device a (line 3)", "baudrate")],
    ),
    "sim-signal-names-another-devices-tag": (
        HEAD + "  plc2: {driver: modbus-tcp, host: 127.0.0.2, sim: {model: conveyor,\n"
        "         signals: {run: ua.run, speed_rpm: nowhere}}}\n"
        "tags:\n  ua.run: {device: ua, node: 'ns=2;s=Run', type: bool}\n",
        [
            expect(7, "ua.run", "unknown-tag", "device plc2", "signal 'run'", "'ua.run'"),
            expect(7, "nowhere", "unknown-tag", "device plc2", "signal 'speed_rpm'"),
        ],
    ),
    "rtu-unit-zero-is-broadcast": (
        "cell: t\ndevices:\n  a: {driver: modbus-rtu, port: /dev/ttyS0, unit: 0}\n",
        [expect(3, "0}", "greater_than_equal", "device a", "unit")],
    ),
    "security-without-cert": (
        "cell: t\ndevices:\n  ua:\n    driver: opcua\n    endpoint: opc.tcp://10.0.0.5:4840\n"
        "    security: Basic256Sha256_SignAndEncrypt\n",
        [
            expect(6, "Basic", "missing", "device ua", "'cert'"),
            expect(6, "Basic", "missing", "device ua", "'key'"),
        ],
    ),
    # --- tags ------------------------------------------------------------------------------
    "bad-address": (
        HEAD + "tags:\n  a: {device: plc, address: 'hx:1'}\n",
        [expect(7, "'hx:1'", "bad-address", "tag a", "coil:N")],
    ),
    "modicon-number": (
        HEAD + "tags:\n  a: {device: plc, address: 40001}\n",
        [expect(7, "40001", "bad-address", "tag a", "write hr:0 for 40001")],
    ),
    "modicon-4x": (
        HEAD + "tags:\n  a: {device: plc, address: 3x0010}\n",
        [expect(7, "3x0010", "bad-address", "tag a", "write ir:9 for 3x0010")],
    ),
    "address-out-of-range": (
        HEAD + "tags:\n  a: {device: plc, address: 'hr:65536'}\n",
        [expect(7, "'hr", "bad-address", "tag a", "0..65535")],
    ),
    "bit-on-coil-and-bit-16": (
        HEAD + "tags:\n  a: {device: plc, address: 'coil:1.2'}\n"
        "  b: {device: plc, address: 'hr:1.16'}\n",
        [
            expect(7, "'coil", "bad-address", "tag a", "only for registers"),
            expect(8, "'hr", "bad-address", "tag b", "bit 16"),
        ],
    ),
    "two-tags-one-register": (
        HEAD + "tags:\n"
        "  a: {device: plc, address: 'hr:4'}\n"
        "  b: {device: plc, address: 'hr:4', type: int16}\n",
        [expect(8, "'hr:4'", "address-overlap", "tag b", "tag a", "line 7", "device plc")],
    ),
    "32-bit-tag-overlaps-next": (
        HEAD + "tags:\n"
        "  force: {device: plc, address: 'ir:0', type: float32}\n"
        "  count: {device: plc, address: 'ir:1'}\n"
        "  other_table_is_fine: {device: plc, address: 'hr:1'}\n",
        [expect(8, "'ir:1'", "address-overlap", "tag count", "tag force", "ir:0..1")],
    ),
    "bit-and-register-overlap-bits-do-not": (
        HEAD + "tags:\n"
        "  b0: {device: plc, address: 'hr:3.0'}\n"
        "  b1: {device: plc, address: 'hr:3.1'}\n"
        "  word: {device: plc, address: 'hr:2', type: uint32}\n",
        [expect(9, "'hr:2'", "address-overlap", "tag word", "tag b0", "hr:3.0")],
    ),
    "same-coil-twice": (
        HEAD
        + "tags:\n  a: {device: plc, address: 'coil:0'}\n  b: {device: plc, address: 'COIL:0'}\n",
        [expect(8, "'COIL", "address-overlap", "tag b", "tag a")],
    ),
    "tag-without-a-value": (
        HEAD + "tags:\n  a:\n",
        [expect(7, "a:", "model_type", "tag a", "expected a mapping, got nothing")],
    ),
    "float-on-coil": (
        HEAD + "tags:\n  a: {device: plc, address: 'coil:3', type: float32}\n",
        [expect(7, "float32", "type-mismatch", "tag a", "coil:3", "bool")],
    ),
    "non-bool-on-register-bit": (
        HEAD + "tags:\n  a: {device: plc, address: 'ir:3.1', type: uint16}\n",
        [expect(7, "uint16", "type-mismatch", "tag a", "register bit")],
    ),
    "string-without-length": (
        HEAD + "tags:\n  serial:\n    device: plc\n    address: 'hr:10'\n    type: string\n",
        [expect(8, "device", "missing", "tag serial", "'length'")],
    ),
    "length-on-number": (
        HEAD + "tags:\n  a: {device: plc, address: 'hr:10', length: 4}\n",
        [expect(7, "4}", "type-mismatch", "tag a", "length", "uint16")],
    ),
    "rw-on-discrete-input-and-input-register-bit": (
        HEAD + "tags:\n"
        "  a: {device: plc, address: 'di:1', access: rw}\n"
        "  b: {device: plc, address: 'ir:1.3', access: rw}\n",
        [
            expect(7, "rw", "read-only", "tag a", "discrete input"),
            expect(8, "rw", "read-only", "tag b", "input register"),
        ],
    ),
    "past-the-last-register": (
        HEAD + "tags:\n  a: {device: plc, address: 'hr:65534', type: float64}\n",
        [expect(7, "'hr", "bad-address", "tag a", "past address 65535")],
    ),
    "unknown-device": (
        HEAD + "tags:\n  a: {device: pcl, address: 'hr:0'}\n",
        [expect(7, "pcl", "unknown-device", "tag a", "'pcl'", "did you mean 'plc'")],
    ),
    "addressing-does-not-fit-driver": (
        HEAD + "tags:\n"
        "  a: {device: plc, address: 'hr:0', node: 'ns=2;s=A'}\n"
        "  b: {device: ua, address: 'hr:0', type: bool}\n"
        "  c: {device: mem, node: 'ns=2;s=C', type: bool}\n",
        [
            expect(7, "'ns", "wrong-driver", "tag a", "'node'", "modbus-tcp"),
            expect(8, "{", "missing", "tag b", "'node'", "opcua"),
            expect(8, "'hr", "wrong-driver", "tag b", "'address'", "opcua"),
            expect(9, "'ns", "wrong-driver", "tag c", "'node'", "memory"),
        ],
    ),
    "opcua-tag-without-type": (
        HEAD + "tags:\n  busy: {device: ua, node: 'ns=2;s=Robot.Busy'}\n",
        [expect(7, "{", "missing", "tag busy", "'type'")],
    ),
    "bad-node-id": (
        HEAD + "tags:\n  a: {device: ua, node: 'ns=2;x=Robot', type: bool}\n"
        "  b: {device: ua, node: 'ns=70000;i=1', type: bool}\n",
        [
            expect(7, "'ns", "bad-node", "tag a", "NodeId"),
            expect(8, "'ns", "bad-node", "tag b", "65535"),
        ],
    ),
    "two-tags-one-node": (
        HEAD + "tags:\n  a: {device: ua, node: 'i=2258', type: float64}\n"
        "  b: {device: ua, node: 'i=2258', type: float64}\n",
        [expect(8, "'i=", "address-overlap", "tag b", "tag a", "line 7")],
    ),
    "bad-tag-names": (
        HEAD
        + "tags:\n  robot.pass: {device: mem, type: bool}\n"
        + "  'two words': {device: mem, type: bool}\n",
        [
            expect(7, "robot", "bad-name", "'pass' is reserved"),
            expect(8, "'two", "bad-name", "'two words'"),
        ],
    ),
    "scaling-that-does-not-apply": (
        HEAD + "tags:\n"
        "  a: {device: plc, address: 'coil:0', scale: 2}\n"
        "  b: {device: plc, address: 'hr:0', scale: 0, min: 5, max: 1}\n",
        [
            expect(7, "2}", "type-mismatch", "tag a", "scale", "bool"),
            expect(8, "0,", "bad-value", "tag b", "scale: scale must not be 0"),
            expect(8, "1}", "bad-value", "tag b", "max 1 is below min 5"),
        ],
    ),
    "wrong-type-name": (
        HEAD + "tags:\n  a: {device: plc, address: 'hr:0', type: float}\n",
        [expect(7, "float}", "enum", "tag a", "type", "float32")],
    ),
    # --- methods ---------------------------------------------------------------------------
    "method-on-modbus-device": (
        HEAD + "methods:\n  plc.go: {device: plc, node: 'ns=2;s=P', method: '2:Go'}\n"
        "  x.go: {device: nowhere, node: 'ns=2;s=P', method: '2:Go'}\n",
        [
            expect(7, "plc,", "wrong-driver", "method plc.go", "OPC UA"),
            expect(8, "nowhere", "unknown-device", "method x.go", "'nowhere'"),
        ],
    ),
    "method-named-like-a-tag": (
        HEAD + "tags:\n  ua.pick: {device: ua, node: 'ns=2;s=P', type: bool}\n"
        "methods:\n  ua.pick: {device: ua, node: 'ns=2;s=R', method: '2:Pick'}\n",
        [expect(9, "ua.pick", "duplicate-name", "method ua.pick", "a tag has the same name")],
    ),
    "method-bad-arg-type": (
        HEAD + "methods:\n  ua.pick: {device: ua, node: 'ns=2;s=R', method: '2:Pick',\n"
        "            args: {slot: integer}}\n",
        [expect(8, "integer", "enum", "method ua.pick", "args.slot")],
    ),
    # --- interlocks ------------------------------------------------------------------------
    "interlock-unknown-tag": (
        HEAD + "tags:\n  ok: {device: plc, address: 'di:0'}\n"
        "interlocks:\n  - {name: guard, when: 'not ok and doorr_closed', action: hold}\n",
        [expect(9, "doorr", "expression", "interlock guard", "unknown name 'doorr_closed'")],
    ),
    "interlock-not-boolean": (
        HEAD + "tags:\n  speed: {device: plc, address: 'ir:0'}\n"
        "interlocks:\n  - name: overspeed\n    when: speed * 2\n    action: stop\n",
        [expect(10, "speed", "expression", "interlock overspeed", "must be a condition")],
    ),
    "interlock-refused-construct": (
        HEAD + "interlocks:\n  - {name: evil, when: \"__import__('os')\", action: abort}\n",
        [expect(7, "__import__", "expression", "interlock evil", "'__import__' not allowed")],
    ),
    "interlock-when-missing-or-not-text": (
        HEAD
        + "interlocks:\n  - {name: a, action: hold}\n  - {name: b, when: true, action: hold}\n",
        [
            expect(7, "{", "missing", "interlock a", "missing required key 'when'"),
            expect(8, "true", "string_type", "interlock b", "when", "valid string"),
        ],
    ),
    "interlock-duplicate-name-and-bad-action": (
        HEAD + "tags:\n  ok: {device: plc, address: 'di:0'}\ninterlocks:\n"
        "  - {name: guard, when: ok, action: hold}\n"
        "  - {name: guard, when: ok, action: halt}\n",
        [
            expect(10, "guard", "duplicate-name", "interlock guard", "first at line 9"),
            expect(10, "halt", "literal_error", "interlock guard", "action", "'hold'"),
        ],
    ),
    # --- safe state --------------------------------------------------------------------------
    "safe-state-unknown-and-read-only": (
        HEAD + "tags:\n  fault: {device: plc, address: 'di:0'}\n"
        "safe_state:\n  fault: false\n  conveyor.runn: false\n",
        [
            expect(9, "fault", "read-only", "tag fault", "read-only"),
            expect(10, "conveyor", "unknown-tag", "'conveyor.runn'"),
        ],
    ),
    "safe-state-wrong-type-and-range": (
        HEAD + "tags:\n"
        "  run: {device: plc, address: 'coil:0', access: rw}\n"
        "  speed: {device: plc, address: 'hr:0', access: rw}\n"
        "  force: {device: plc, address: 'hr:1', type: float32, access: rw, max: 20}\n"
        "safe_state:\n  run: 0\n  speed: 70000\n  force: 25.5\n",
        [
            expect(11, "0", "bad-value", "safe_state run", "true or false"),
            expect(12, "70000", "bad-value", "safe_state speed", "out of range for uint16"),
            expect(13, "25.5", "bad-value", "safe_state force", "above the maximum 20"),
        ],
    ),
    # --- reset and ready ---------------------------------------------------------------------
    "reset-unknown-read-only-wrong-type-and-heartbeat": (
        HEAD + "tags:\n"
        "  run: {device: plc, address: 'coil:0', access: rw}\n"
        "  done: {device: plc, address: 'di:0'}\n"
        "  beat: {device: plc, address: 'hr:0', access: rw}\n"
        "heartbeat:\n  - {tag: beat, period: 200ms, timeout: 1s}\n"
        "reset:\n  run: 0\n  done: false\n  runn: true\n  beat: 0\n",
        [
            expect(13, "0", "bad-value", "reset run", "true or false"),
            expect(14, "done", "read-only", "reset: tag done", "Resetting writes rw tags"),
            expect(15, "runn", "unknown-tag", "reset: unknown tag 'runn'", "did you mean 'run'"),
            expect(16, "beat", "heartbeat-in-reset", "tag beat is a heartbeat (line 11)"),
        ],
    ),
    "ready-unknown-tag-not-a-condition-and-bad-key": (
        HEAD + "tags:\n  done: {device: plc, address: 'di:0'}\n"
        "  count: {device: plc, address: 'ir:0'}\n"
        "ready: {when: 'not done and count and busy', timout: 5s}\n",
        [
            expect(9, "count and", "expression", "ready: when:", "'count' is a number"),
            expect(9, "busy", "expression", "ready: when:", "unknown name 'busy'"),
            expect(9, "timout", "unknown-key", "ready: unknown key", "did you mean 'timeout'"),
        ],
    ),
    "ready-missing-when-and-zero-timeout": (
        HEAD + "ready: {timeout: 0s}\n",
        [
            expect(6, "{", "missing", "ready: missing required key 'when'"),
            expect(6, "0s", "greater_than", "ready: timeout"),
        ],
    ),
    "restore-on-unhold-unknown-and-not-safe": (
        HEAD + "tags:\n"
        "  run: {device: plc, address: 'coil:0', access: rw}\n"
        "  speed: {device: plc, address: 'hr:0', access: rw}\n"
        "safe_state: {run: false}\n"
        "restore_on_unhold: [run, speed, runn]\n",
        [
            expect(10, "speed", "not-in-safe-state", "tag speed", "not in the safe state"),
            expect(10, "runn", "unknown-tag", "'runn'", "did you mean 'run'"),
        ],
    ),
}


def check(path: Path, data: bytes) -> list[Problem]:
    path.write_bytes(data)
    return check_cell_file(path)


@pytest.mark.parametrize("name", list(CASES))
def test_broken_cell(tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    path = tmp_path / f"{name}.yaml"
    problems = check(path, text.encode())
    assert_located(path, text, problems, expected)


def test_at_least_25_broken_files() -> None:
    assert len(CASES) >= 25


def test_all_problems_at_once_sorted_by_line(tmp_path: Path) -> None:
    text = (
        "cell: t\n"  # 1
        "devices:\n"  # 2
        "  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 0}\n"  # 3: port out of range
        "  ua: {driver: opcua, endpoint: 'opc.tcp://127.0.0.1:4840'}\n"  # 4
        "tags:\n"  # 5
        "  a: {device: plc, address: 'di:0', access: rw}\n"  # 6: rw on di, device still checked
        "  b: {device: ua, node: 'ns=2;s=B'}\n"  # 7: missing type
        "  a: {device: plc, address: 'di:1'}\n"  # 8: duplicate
        "interlocks:\n"  # 9
        "  - {name: x, when: 'a and nope', action: hold}\n"  # 10: unknown name
        "safe_state: {zz: 1}\n"  # 11: unknown tag
    )
    path = tmp_path / "cell.yaml"
    problems = check(path, text.encode())
    assert [p.line for p in problems] == [3, 6, 7, 8, 10, 11], "\n".join(map(str, problems))
    with pytest.raises(ValidationFailed) as caught:
        load_cell(path)
    assert caught.value.problems == problems
    assert str(caught.value).splitlines() == [str(p) for p in problems]


def test_non_utf8_is_reported_at_the_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    text = "cell: t\ndevices:\n  m: {driver: memory}  # Grüße\n"
    problems = check(path, text.encode("latin-1"))
    assert [str(p) for p in problems] == [
        f"{path}:3:{col_of(text, 3, 'üße')}: file is not UTF-8 text (save it as UTF-8)"
    ]
    assert problems[0].code == "encoding"


def test_control_character_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "nul.yaml"
    text = "cell: t\ndevices:\n  m: {driver: \x00memory}\n"
    problems = check(path, text.encode())
    assert [(p.line, p.col, p.code) for p in problems] == [
        (3, col_of(text, 3, "\x00"), "yaml-syntax")
    ]


def test_file_over_the_size_limit_is_refused_unparsed(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    problems = check(path, b"cell: t\n" + b"# padding\n" * 110_000)
    assert [(p.line, p.col, p.code) for p in problems] == [(1, 1, "too-large")]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    problems = check(path, ("\n".join(lines) + "\n").encode())
    assert len(problems) == 1 and problems[0].code == "alias"
    assert "refused" in problems[0].message


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    problems = check(tmp_path / "loop.yaml", b"cell: &c [1, *c]\n")
    assert [(p.line, p.code) for p in problems] == [(1, "alias")]


def test_an_anchor_defined_twice_is_located_at_its_second_definition(tmp_path: Path) -> None:
    # Found by the YAML fuzz test: ruamel only warns (a console line, or an error under -W).
    problems = check(tmp_path / "anchors.yaml", b"a: &a [1]\nb: &a [2]\ncell: t\n")
    assert [(p.line, p.col, p.code) for p in problems] == [(2, 4, "duplicate-anchor")]
    assert "first at line 1" in problems[0].message


def test_deep_flow_nesting_is_refused_quickly(tmp_path: Path) -> None:
    text = "cell: t\ndevices: " + "[" * 3000 + "]" * 3000 + "\n"
    problems = check(tmp_path / "deep.yaml", text.encode())
    assert [(p.line, p.col, p.code) for p in problems] == [
        (2, 10 + 64, "too-deep")
    ]  # the 65th bracket


def test_deep_block_nesting_is_refused(tmp_path: Path) -> None:
    text = "".join(" " * level + f"k{level}:\n" for level in range(1200)) + " " * 1200 + "x\n"
    problems = check(tmp_path / "deep.yaml", text.encode())
    assert [(p.line, p.code) for p in problems] == [(1, "too-deep")]


def test_missing_file_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    problems = check_cell_file(path)
    assert [(p.file, p.line, p.code) for p in problems] == [(str(path), 1, "unreadable")]


def test_problem_json_shape(tmp_path: Path) -> None:
    path = tmp_path / "cell.yaml"
    text = "cell: t\ndevices:\n  m: {driver: memory, pol: 1s}\n"
    (problem,) = check(path, text.encode())
    assert problem.to_json() == {
        "file": str(path),
        "line": 3,
        "col": col_of(text, 3, "pol"),
        "code": "unknown-key",
        "message": "device m: unknown key 'pol' (did you mean 'poll'?)",
    }
