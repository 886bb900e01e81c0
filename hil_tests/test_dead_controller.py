"""A controller that dies leaves a cell that makes itself safe: `cellctl run` of the demo
press-fit recipe, in its own process, against `cellctl sim` in another, is killed with SIGKILL
mid-batch while the conveyor runs and a press cycle is in progress. Raw pymodbus clients of our
own then see, within timeout × 3 + 1 s, the conveyor stopped and the press released: the plant
models play the PLCs that watch the controller's heartbeat.

And `cellctl check` names a heartbeat tag that a device refuses to have written (a raw pymodbus
server with a read-only register).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from cellctl.cell import Cell, ModbusRtuDevice, load_cell
from cellctl.testing import LoopThread, cli, free_port, serve_in_child
from hil_tests.run_support import DEMO_CELL, PRESS_FIT, ConveyorOutputs, read_conveyor
from hil_tests.test_run_faults import Lines

#: The demo cell's heartbeat timeout (both devices), and the bound for a safe cell (× 3 + 1 s).
TIMEOUT = 1.0
WITHIN = TIMEOUT * 3 + 1.0


@dataclass(frozen=True)
class PressOutputs:
    """The press's command and state as its RTU server holds them."""

    cycle_start: bool  # coil 0
    cycle_done: bool  # di 0
    force_kN: float  # ir 0..1


def demo_cell_on_free_ports(folder: Path) -> Path:
    """A copy of the demo cell whose TCP ports are free ones (the RTU line becomes a pty)."""
    text = DEMO_CELL.read_text(encoding="utf-8")
    for fixed, free in (
        ("port: 5020", f"port: {free_port()}"),
        ("127.0.0.1:4840", f"127.0.0.1:{free_port()}"),
        ("127.0.0.1:4841", f"127.0.0.1:{free_port()}"),
    ):
        assert fixed in text
        text = text.replace(fixed, free)
    cell = folder / "cell.yaml"
    cell.write_text(text, encoding="utf-8")
    return cell


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    """`cellctl sim` serving the demo cell (at speed 1) in a child process; its served file."""
    cell = demo_cell_on_free_ports(tmp_path)
    assert load_cell(cell).heartbeat, "the demo cell declares its heartbeats"
    with serve_in_child(cell, tmp_path / "served.yaml", log_file=tmp_path / "sim.log") as child:
        yield child.cell_file


async def read_press(cell: Cell) -> PressOutputs:
    """Coil 0, di 0 and ir 0..1 of the press, read over the served pty by a raw RTU client.

    Only once nobody else holds the line: two readers of one tty would split its bytes.
    """
    device = cell.devices["press"]
    assert isinstance(device, ModbusRtuDevice)
    client = AsyncModbusSerialClient(device.port, framer=FramerType.RTU, timeout=0.5, retries=1)
    try:
        assert await client.connect(), f"press at {device.port}: cannot open"
        start = await client.read_coils(0, count=1, device_id=device.unit)
        done = await client.read_discrete_inputs(0, count=1, device_id=device.unit)
        force = await client.read_input_registers(0, count=2, device_id=device.unit)
        assert not (start.isError() or done.isError() or force.isError()), (start, done, force)
        kn = client.convert_from_registers(force.registers, client.DATATYPE.FLOAT32)
        return PressOutputs(bool(start.bits[0]), bool(done.bits[0]), float(kn))
    finally:
        client.close()


def safe_within(
    cell: Cell, since: float, seconds: float
) -> tuple[float, ConveyorOutputs, PressOutputs]:
    """Poll both devices until the conveyor stands and the press is released, or `seconds`
    pass after the monotonic time `since`; (seconds since then, the last outputs seen)."""

    async def poll() -> tuple[ConveyorOutputs, PressOutputs]:
        while True:
            late = time.monotonic() - since > seconds
            conveyor = await read_conveyor(cell)
            try:
                press = await read_press(cell)
            except Exception:
                # The killed controller may have left half a request on the line: the press
                # answers it, and a later read starts clean.
                if late:
                    raise
            else:
                stopped = conveyor == ConveyorOutputs(run=False, speed_rpm=0)
                if (stopped and not press.cycle_start) or late:
                    return conveyor, press
            await asyncio.sleep(0.05)  # a poll interval; the deadline rules

    conveyor, press = asyncio.run(poll())
    return time.monotonic() - since, conveyor, press


def test_a_controller_killed_mid_batch_leaves_the_cell_safe(served: Path, tmp_path: Path) -> None:
    cell = load_cell(served)
    command = ["run", str(PRESS_FIT), "--cell", str(served), "-p", "parts=5"]
    run = subprocess.Popen(
        [sys.executable, "-m", "cellctl", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        # A journal of its own: the batch it leaves unfinished must not refuse the session's
        # later runs of the demo cell (cellctl resume would be their next step).
        env=dict(
            os.environ,
            CELLCTL_LOG_FILE=str(tmp_path / "run.log"),
            CELLCTL_JOURNAL=str(tmp_path / "journal.sqlite"),
            PYTHONUNBUFFERED="1",
        ),
    )
    try:
        out = Lines(run)
        # The conveyor runs (our own client sees it)...
        out.wait_for(
            lambda line: "wrote conveyor.run = true" in line or run.poll() is not None,
            30,
            "the conveyor to start",
        )
        assert asyncio.run(read_conveyor(cell)) == ConveyorOutputs(run=True, speed_rpm=1200)
        # ...and the press has confirmed cycle_start: killed at once, mid-cycle.
        out.wait_for(
            lambda line: "wrote press.cycle_start = true" in line or run.poll() is not None,
            30,
            "a press cycle to start",
        )
        run.kill()  # SIGKILL: no cleanup, no safe state written; the controller is gone
        assert run.wait(timeout=10) == -signal.SIGKILL, "\n".join(out.lines)
        killed = time.monotonic()
        run.wait(timeout=10)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == -signal.SIGKILL
    lines = out.rest(10)
    # After its cycle start nothing of ours released the press (Resetting and the recipe's
    # own releases come before it): the press's PLC did, on the heartbeat's timeout.
    pressed = max(i for i, line in enumerate(lines) if "wrote press.cycle_start = true" in line)
    assert not [line for line in lines[pressed:] if "cycle_start = false" in line], lines
    took, conveyor, press = safe_within(cell, killed, WITHIN)
    assert conveyor == ConveyorOutputs(run=False, speed_rpm=0), (took, conveyor)
    assert press.cycle_start is False, (took, press)
    # The cycle in progress was aborted (or, had it just ended, reset): no force, no done.
    assert (press.force_kN, press.cycle_done) == (0.0, False), (took, press)
    assert took <= WITHIN, took
    assert [line for line in lines if "wrote conveyor.run = true" in line], lines


# --- cellctl check --------------------------------------------------------------------------

CHECKED = """\
cell: checked
devices:
  plc:  {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, unit: 1, timeout: 300ms}}
  gate: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, unit: 2, timeout: 300ms}}
tags:
  plc.life:  {{device: plc, address: "hr:2", type: uint16, access: rw}}
  gate.life: {{device: gate, address: "hr:0", type: uint16, access: rw}}
heartbeat:
  - {{tag: plc.life, period: 200ms, timeout: 1s}}
  - {{tag: gate.life, period: 200ms, timeout: 1s}}
"""


def unit(device_id: int, register: int, value: int, *, readonly: bool) -> SimDevice:
    """A unit whose only holding register `register` holds `value` (read-only if asked)."""
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    holding = [SimData(register, values=[value], datatype=DataType.REGISTERS, readonly=readonly)]
    inputs = [SimData(0, values=[0], datatype=DataType.REGISTERS)]
    return SimDevice(id=device_id, simdata=(bits, bits, holding, inputs))


def test_check_names_a_heartbeat_the_device_refuses_to_have_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    loop = LoopThread()
    try:

        async def start() -> ModbusTcpServer:
            devices = [unit(1, 2, 41, readonly=True), unit(2, 0, 1234, readonly=False)]
            server = ModbusTcpServer(devices, address=("127.0.0.1", 0))
            await server.serve_forever(background=True)
            return server

        server = loop.run(start())
        port = server.transport.sockets[0].getsockname()[1]
        cell = tmp_path / "cell.yaml"
        cell.write_text(CHECKED.format(port=port), encoding="utf-8")
        code, out, err = cli(capsys, "check", cell)
        values = loop.run(server.async_getValues(2, 3, 0, 1))  # the gate's hr:0, after check
        loop.run(server.shutdown())
    finally:
        loop.close()
    assert code == 2, out + err
    assert re.search(r"^FAIL\s+plc ", out, re.M), out
    assert re.search(r"^ok\s+gate ", out, re.M), out
    problem = [line for line in out.splitlines() if "plc.life" in line]
    assert len(problem) == 1 and "heartbeat cannot be written" in problem[0], out
    assert "exception" in problem[0].lower() or "illegal" in problem[0].lower(), out
    assert list(values) == [1234]  # written back as read: the gate saw no change
