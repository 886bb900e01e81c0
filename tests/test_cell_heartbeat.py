"""The cell file's `heartbeat:` section: its model, its rules (located, naming the tag), the demo
cell's heartbeats, the schema."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cellctl.cell import Heartbeat, check_cell_file, load_cell
from cellctl.cli.schema import schema_of
from cellctl.testing import cli
from tests.located import Expect, assert_located, expect

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"

# Lines 1-10: a Modbus TCP device and a memory device with tags of every kind a rule looks at.
HEAD = """\
cell: t
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020}
  mem: {driver: memory}
tags:
  plc.count: {device: plc, address: 'hr:0', type: uint16, access: rw}
  plc.bit: {device: plc, address: 'coil:0', access: rw}
  plc.level: {device: plc, address: 'ir:0'}
  plc.speed: {device: plc, address: 'hr:1', type: float32, access: rw}
  mem.life: {device: mem, type: int16, access: rw, scale: 2}
heartbeat:
"""

CASES: dict[str, tuple[str, list[Expect]]] = {
    "unknown-tag": (
        HEAD + "  - {tag: plc.cont, period: 200ms, timeout: 1s}\n",
        [expect(12, "plc.cont", "unknown-tag", "heartbeat plc.cont", "did you mean 'plc.count'")],
    ),
    "read-only-tag": (
        HEAD + "  - {tag: plc.level, period: 200ms, timeout: 1s}\n",
        [expect(12, "plc.level", "read-only", "heartbeat plc.level", "access: rw")],
    ),
    "float-tag": (
        HEAD + "  - {tag: plc.speed, period: 200ms, timeout: 1s}\n",
        [expect(12, "plc.speed", "type-mismatch", "heartbeat plc.speed", "not float32")],
    ),
    "scaled-counter": (
        HEAD + "  - {tag: mem.life, period: 200ms, timeout: 1s}\n",
        [expect(12, "mem.life", "type-mismatch", "heartbeat mem.life", "remove scale")],
    ),
    "period-not-shorter-than-timeout": (
        HEAD + "  - {tag: plc.count, period: 1s, timeout: 1s}\n",
        [expect(12, "1s,", "bad-value", "heartbeat plc.count", "period 1s", "timeout 1s")],
    ),
    "duration-without-unit": (
        HEAD + "  - {tag: plc.count, period: 200, timeout: 1s}\n",
        [expect(12, "200", "bad-duration", "heartbeat plc.count", "period", "needs a unit")],
    ),
    "zero-period-and-missing-timeout": (
        HEAD + "  - {tag: plc.count, period: 0ms}\n",
        [
            expect(12, "{", "missing", "heartbeat plc.count", "missing required key 'timeout'"),
            expect(12, "0ms", "greater_than", "heartbeat plc.count", "period"),
        ],
    ),
    "unknown-key": (
        HEAD + "  - {tag: plc.count, period: 200ms, timeout: 1s, every: 1s}\n",
        [expect(12, "every", "unknown-key", "heartbeat plc.count", "'every'")],
    ),
    "two-on-one-device": (
        HEAD
        + "  - {tag: plc.count, period: 200ms, timeout: 1s}\n"
        + "  - {tag: plc.bit, period: 200ms, timeout: 1s}\n",
        [
            expect(
                13,
                "plc.bit",
                "duplicate-heartbeat",
                "heartbeat plc.bit",
                "device plc already has heartbeat plc.count (line 12)",
            )
        ],
    ),
    "also-in-safe-state": (
        HEAD + "  - {tag: plc.bit, period: 200ms, timeout: 1s}\nsafe_state: {plc.bit: false}\n",
        [
            expect(
                12,
                "plc.bit",
                "heartbeat-in-safe-state",
                "heartbeat plc.bit",
                "safe state (line 13)",
            )
        ],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_broken_heartbeat(tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    problems = check_cell_file(path)
    assert_located(path, text, problems, expected)


def test_a_counter_and_a_bit_on_two_devices_are_valid(tmp_path: Path) -> None:
    path = tmp_path / "cell.yaml"
    path.write_text(
        HEAD.replace("scale: 2", "scale: 1")
        + "  - {tag: plc.count, period: 200ms, timeout: 1s}\n"
        + "  - {tag: mem.life, period: 1.5s, timeout: 5s}\n",
        encoding="utf-8",
    )
    cell = load_cell(path)
    assert [(b.tag, b.period, b.timeout) for b in cell.heartbeat] == [
        ("plc.count", 0.2, 1.0),
        ("mem.life", 1.5, 5.0),
    ]
    assert all(isinstance(b, Heartbeat) for b in cell.heartbeat)


def test_the_demo_cell_beats_to_the_conveyor_and_the_press() -> None:
    cell = load_cell(DEMO)
    assert [(b.tag, cell.tags[b.tag].device, b.period, b.timeout) for b in cell.heartbeat] == [
        ("conveyor.heartbeat", "conveyor", 0.2, 1.0),
        ("press.heartbeat", "press", 0.2, 1.0),
    ]


def test_the_schema_describes_heartbeat_with_durations_as_written() -> None:
    schema = schema_of("cell")
    assert "heartbeat" in schema["properties"]
    beat = schema["$defs"]["Heartbeat"]
    assert beat["required"] == ["tag", "period", "timeout"]
    assert beat["additionalProperties"] is False
    assert beat["properties"]["period"]["examples"] == ["20ms", "1.5s", "2m"]


def test_a_recipe_may_not_write_a_heartbeat_tag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copyfile(DEMO, tmp_path / "cell.yaml")
    recipe = tmp_path / "beat.yaml"
    recipe.write_text(
        "recipe: beat\nversion: 1\nsteps:\n  - {id: poke, set: {conveyor.heartbeat: 7}}\n",
        encoding="utf-8",
    )
    code, out, err = cli(capsys, "validate", recipe)
    assert code == 1, out + err
    assert f"{recipe}:4:" in err and "conveyor.heartbeat" in err and "heartbeat" in err
