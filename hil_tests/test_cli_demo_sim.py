"""`cellctl read/write/check` in-process against the demo cell on its simulators."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cell import load_cell
from cellctl.io.sim import CellSimulator
from cellctl.testing import LoopThread, cli, serve

DEMO_CELL = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CellSimulator, Path, LoopThread]]:
    """The demo cell on simulators at free ports, and a cell file pointing at them."""
    with serve(DEMO_CELL, tmp_path_factory.mktemp("demo"), speed=4.0) as served:
        yield served.simulator, served.cell_file, served.loop


def values(capsys: pytest.CaptureFixture[str], cell: Path, *tags: str) -> dict[str, object]:
    """Tag values through `cellctl read --json`."""
    code, out, err = cli(capsys, "read", "--cell", str(cell), "--json", *tags)
    assert code == 0, err
    return {row["tag"]: row["value"] for row in json.loads(out)}


def test_write_confirms_and_read_shows_the_value(demo, capsys) -> None:  # type: ignore[no-untyped-def]
    _, cell, _ = demo
    code, out, err = cli(
        capsys, "write", "--cell", str(cell), "conveyor.speed_rpm=1234", "press.setpoint_kN=12.3"
    )
    assert code == 0, err
    assert "conveyor.speed_rpm = 1234 (confirmed)" in out
    assert "press.setpoint_kN = 12.3 (confirmed)" in out
    got = values(capsys, cell, "conveyor.speed_rpm", "press.setpoint_kN")
    # float32 shown in its shortest round-trip form, not 12.300000190734863
    assert got == {"conveyor.speed_rpm": 1234, "press.setpoint_kN": 12.3}


def test_the_image_sees_what_the_cli_wrote(demo, capsys) -> None:  # type: ignore[no-untyped-def]
    simulator, cell, _ = demo
    assert cli(capsys, "write", "--cell", str(cell), "--yes", "press.cycle_start=true")[0] == 0
    assert simulator.images["press"].get("press.cycle_start") is True
    assert cli(capsys, "write", "--cell", str(cell), "--yes", "press.cycle_start=false")[0] == 0
    assert simulator.images["press"].get("press.cycle_start") is False


@pytest.mark.parametrize(
    ("assignment", "named"),
    [
        ("conveyor.speed_rpm=3001", "conveyor.speed_rpm"),  # above the tag's max
        ("conveyor.speed_rpm=-1", "conveyor.speed_rpm"),
        ("conveyor.speed_rpm=fast", "conveyor.speed_rpm"),
        ("conveyor.run=maybe", "conveyor.run"),
        ("conveyor.speed_rpm=１２００", "conveyor.speed_rpm"),  # int() would read 1200
        ("conveyor.speed_rpm=1_2", "conveyor.speed_rpm"),  # int() would read 12
        ("press.force_kN=3", "press.force_kN"),  # read-only
        ("conveyor.nosuch=1", "conveyor.nosuch"),
        ("conveyor.speed_rpm", "TAG=VALUE"),
    ],
)
def test_bad_writes_are_refused_before_anything_is_sent(
    demo, capsys, assignment: str, named: str
) -> None:  # type: ignore[no-untyped-def]
    simulator, cell, _ = demo
    before = simulator.images["conveyor"].snapshot()
    # A good assignment first: nothing at all may be written when any one is bad.
    code, out, err = cli(capsys, "write", "--cell", str(cell), "conveyor.speed_rpm=777", assignment)
    assert code == 1
    assert named in err
    assert "Traceback" not in out + err
    assert simulator.images["conveyor"].snapshot() == before


def test_plant_models_run_behind_the_protocol(demo, capsys) -> None:  # type: ignore[no-untyped-def]
    _, cell, _ = demo
    assert (
        cli(capsys, "write", "--cell", str(cell), "conveyor.speed_rpm=1200", "conveyor.run=true")[0]
        == 0
    )
    deadline = time.monotonic() + 10
    while not values(capsys, cell, "conveyor.part_at_station")["conveyor.part_at_station"]:
        assert time.monotonic() < deadline, "no part reached the station"
    assert cli(capsys, "write", "--cell", str(cell), "conveyor.run=false")[0] == 0


def test_a_plant_fault_is_seen_by_read(demo, capsys) -> None:  # type: ignore[no-untyped-def]
    simulator, cell, loop = demo
    loop.loop.call_soon_threadsafe(simulator.fault, "conveyor", "light-curtain", True)
    try:
        deadline = time.monotonic() + 5
        while values(capsys, cell, "safety.light_curtain_ok")["safety.light_curtain_ok"]:
            assert time.monotonic() < deadline, "the broken curtain never showed"
    finally:
        loop.loop.call_soon_threadsafe(simulator.fault, "conveyor", "light-curtain", False)


def test_check_lists_each_opcua_mismatch(demo, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, cell, _ = demo
    text = cell.read_text(encoding="utf-8")
    text = re.sub(r"(Robot\.Position['\"]?, type:) float64", r"\1 int32", text)
    text = re.sub(r"(Robot\.Busy['\"]?, type: bool)", r"\1, access: rw", text)
    assert "int32" in text and "access: rw}" in text
    wrong = tmp_path / "cell.yaml"
    wrong.write_text(text, encoding="utf-8")
    code, out, err = cli(capsys, "check", str(wrong))
    assert code == 2, out + err
    lines = [line for line in out.splitlines() if line.strip().startswith("robot:")]
    assert any("robot.position" in line and "Double" in line for line in lines), out
    assert any("robot.busy" in line for line in lines), out
    # The server was reached: its round trip is measured even though its nodes differ.
    assert re.search(r"^FAIL\s+robot\s.*rtt [0-9.]+ ms", out, re.M), out
    assert re.search(r"^ok\s+conveyor ", out, re.M), out


def test_unreachable_device_exits_2_naming_it(capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        "cell: lonely\n"
        "devices:\n"
        f"  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port},\n"
        "        timeout: 100ms, retries: 1}\n"
        "tags:\n"
        "  plc.count: {device: plc, address: 'hr:0'}\n",
        encoding="utf-8",
    )
    started = time.monotonic()
    code, _, err = cli(capsys, "read", "--cell", str(cell))
    assert code == 2
    assert "plc" in err and str(port) in err
    assert "Traceback" not in err
    assert time.monotonic() - started < 5  # retried within timeout × (retries + 1), then gave up


def test_demo_trips_holds_safe_unholds_and_completes(capsys) -> None:  # type: ignore[no-untyped-def]
    code, out, err = cli(capsys, "demo", "--fault", "light-curtain", "--speed", "4")
    assert code == 0, out + err
    lines = out.splitlines()

    def first(text: str) -> int:
        found = [i for i, line in enumerate(lines) if text in line]
        assert found, f"no line with {text!r} in:\n{out}"
        return found[0]

    trip = first("TRIP light-curtain")
    safe = first("safe state (Holding): conveyor.run = false ok")
    held = first("Holding -> Held")
    unhold = first("Held -> Unholding (Unhold)")
    complete = first("-> Complete")
    assert trip < safe < held < unhold < complete, out
    assert "outcome: Complete" in out


def test_robot_busy_is_visible_as_soon_as_pick_returns(demo) -> None:  # type: ignore[no-untyped-def]
    """The robot's Pick starts a move and returns; busy must already read true then."""
    from asyncua import Client, ua

    simulator, _, loop = demo
    endpoint = simulator.served_cell.devices["robot"].endpoint

    async def pick_then_read() -> tuple[object, object]:
        async with Client(endpoint, timeout=2) as client:
            robot = client.get_node("ns=2;s=Robot")
            accepted = await robot.call_method("2:Pick", ua.Variant(2, ua.VariantType.Int32))
            busy = await client.get_node("ns=2;s=Robot.Busy").read_value()
            return accepted, busy

    assert loop.run(pick_then_read()) == (True, True)


def with_a_dead_device(cell: Path, folder: Path) -> tuple[Path, int]:
    """A copy of the served cell with one more device, `spare` (tags spare.a, spare.b), at a
    port nobody listens on; and that port."""
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = cell.read_text(encoding="utf-8")
    text = text.replace(
        "\ntags:\n",
        f"\n  spare: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, timeout: 100ms}}\n"
        "tags:\n  spare.a: {device: spare, address: 'hr:0'}\n"
        "  spare.b: {device: spare, address: 'hr:1'}\n",
        1,
    )
    partly = folder / "cell.yaml"
    partly.write_text(text, encoding="utf-8")
    return partly, port


def test_read_prints_what_it_can_when_one_device_is_down(demo, capsys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, cell, _ = demo
    partly, port = with_a_dead_device(cell, tmp_path)
    code, out, err = cli(capsys, "read", "--cell", str(partly), "--json")
    assert code == 2
    rows = {row["tag"]: row for row in json.loads(out)}
    assert rows["conveyor.run"]["quality"] == "good"
    assert rows["spare.a"]["quality"] == "bad" and rows["spare.b"]["value"] is None
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "2 tags" in lines[0] and str(port) in lines[0], err


def test_read_a_device_reads_all_its_tags_with_their_units(demo, capsys) -> None:  # type: ignore[no-untyped-def]
    _, cell, _ = demo
    code, out, err = cli(
        capsys, "read", "--cell", str(cell), "--json", "press", "conveyor.speed_rpm"
    )
    assert code == 0, err
    rows = json.loads(out)
    on_press = [tag for tag, spec in load_cell(cell).tags.items() if spec.device == "press"]
    assert "press.force_kN" in on_press and len(on_press) > 3
    assert [row["tag"] for row in rows] == [*on_press, "conveyor.speed_rpm"]
    units = {row["tag"]: row["unit"] for row in rows}
    assert (units["press.force_kN"], units["conveyor.speed_rpm"]) == ("kN", "rpm")
    assert units["press.cycles"] is None  # the cell file gives it no unit


def test_read_off_a_terminal_gives_an_unreadable_tag_its_own_error_field(  # type: ignore[no-untyped-def]
    demo, capsys, tmp_path: Path
) -> None:
    _, cell, _ = demo
    partly, port = with_a_dead_device(cell, tmp_path)
    code, out, err = cli(capsys, "read", "--cell", str(partly), "spare", "conveyor")
    assert code == 2, out + err
    lines = [line.split("\t") for line in out.splitlines()]
    # tag, device, value, unit, quality, error on every line
    assert lines and all(len(fields) == 6 for fields in lines), out
    rows = {fields[0]: fields for fields in lines}
    _, device, value, _, quality, error = rows["spare.a"]
    assert (device, value, quality) == ("spare", "", "bad")
    assert str(port) in error
    assert rows["conveyor.speed_rpm"][2].isdigit()
    assert rows["conveyor.speed_rpm"][3:] == ["rpm", "good", ""]
