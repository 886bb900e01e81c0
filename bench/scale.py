"""Figure 6: N Modbus TCP devices x 100 tags polled at 10 Hz, every value changing each cycle,
watched on the controller's tag board, beside raw pymodbus clients reading the same blocks.

Each device is its own pymodbus server (its own port and connection, as real devices are), in
the parent process; its action hook adds one to every register a read asks for, so each poll
reads new values. Ours (`CellSession.subscribe`, the board the controller listens to) and the
raw poller each run in a child process of their own, one after the other against the same
servers, so that only their own CPU is counted (time.process_time over the window).
"""

from __future__ import annotations

import asyncio
import cProfile
import itertools
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.childproc import quiet_pymodbus, running, say, stdin_closed
from bench.figure import Figure, percentile

#: Devices of the full run and of --quick.
SIZES = (10, 25, 50)
QUICK_SIZES = (10, 50)
#: Seconds measured (after WARMUP) per size and side, full and quick.
WINDOW = 10.0
QUICK_WINDOW = 3.0
WARMUP = 1.0
QUICK_WARMUP = 0.5
#: The poll period (s): 10 Hz.
PERIOD = 0.1
#: Tags per device: 80 uint16 registers and 20 float32 (two registers each), one read of 120.
UINT16_TAGS = 80
FLOAT32_TAGS = 20
REGISTERS = UINT16_TAGS + 2 * FLOAT32_TAGS
#: Goals: jitter p99 (ms), CPU at most this many times the raw poller's, per-device CPU at the
#: largest size at most this many times the smallest's (linear growth).
JITTER_GOAL_MS = 5.0
CPU_GOAL = 2.0
LINEAR_GOAL = 1.2
#: Seconds the raw pollers have to finish their cycle once the window is over.
STOP_WAIT = 5.0
#: Set to a path prefix, each child writes a cProfile of its window to PREFIX.PID (slower).
PROFILE_ENV = "CELLCTL_BENCH_PROFILE"
#: Seconds a child may take beyond its window (imports, loading the cell file, connecting).
CHILD_SLACK = 60.0


def cell_text(ports: Sequence[int]) -> str:
    """A cell file of one device per port, each with 100 tags on 120 holding registers."""
    lines = ["cell: bench-scale", "devices:"]
    poll = f"{PERIOD * 1000:g}ms"
    for d, port in enumerate(ports):
        lines.append(
            f"  d{d}: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, unit: 1, poll: {poll}}}"
        )
    lines.append("tags:")
    for d in range(len(ports)):
        lines += [f'  d{d}.u{t}: {{device: d{d}, address: "hr:{t}"}}' for t in range(UINT16_TAGS)]
        lines += [
            f'  d{d}.f{t}: {{device: d{d}, address: "hr:{UINT16_TAGS + 2 * t}", type: float32}}'
            for t in range(FLOAT32_TAGS)
        ]
    return "\n".join(lines) + "\n"


async def _changing_server() -> tuple[Any, int]:
    """A pymodbus server whose registers all change on every read; (server, port)."""
    from pymodbus.server import ModbusTcpServer
    from pymodbus.simulator import DataType, SimData, SimDevice

    async def change(
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> None:
        # Inline, before the answer is built: this read and the next see new values.
        if set_values is None:
            first = address - start_address
            for i in range(first, first + count):
                registers[i] = (registers[i] + 1) & 0xFFFF

    # Float32 high words start at 0x4000 (2.0): a few thousand reads never make a NaN.
    values = [1] * UINT16_TAGS + [0x4000, 0] * FLOAT32_TAGS
    block = SimData(0, values=values, datatype=DataType.REGISTERS)
    device = SimDevice(id=1, simdata=[block], action=change)
    server = ModbusTcpServer(device, address=("127.0.0.1", 0))
    await server.serve_forever(background=True)
    # The listening transport is an asyncio Server: it has the bound sockets.
    sockets = getattr(server.transport, "sockets", None) or []
    return server, int(sockets[0].getsockname()[1])


async def _side(
    kind: str, devices: int, window: float, warmup: float, folder: Path
) -> dict[str, Any]:
    """One side's result ('ours' or 'raw') against `devices` fresh changing servers."""
    servers: list[Any] = []
    try:
        for _ in range(devices):
            servers.append(await _changing_server())
        cell = folder / f"scale-{devices}.yaml"
        cell.write_text(cell_text([port for _, port in servers]))
        # The raw poller is told the ports (it has no cell file to load); ours the cell file.
        where = str(cell) if kind == "ours" else ",".join(str(port) for _, port in servers)
        args = [kind, where, str(window), str(warmup), str(folder / f"scale-{kind}.log")]
        async with running("bench.scale", args, folder / f"scale-{kind}-{devices}.stderr") as child:
            result: dict[str, Any] = json.loads(await child.line(window + warmup + CHILD_SLACK))
            await child.finish()
        return result
    finally:
        for server, _ in servers:
            await server.shutdown()


def _jitter_p99(arrivals: list[list[float]]) -> float:
    """p99 (ms) over every device of |interval between two cycles - the period|."""
    gaps = [abs(b - a - PERIOD) for times in arrivals for a, b in itertools.pairwise(times)]
    return percentile(gaps, 99) * 1000


def _cycles(arrivals: list[list[float]]) -> tuple[int, int]:
    """(cycles made, cycles due) over every device between its first and last cycle seen."""
    made = sum(max(0, len(times) - 1) for times in arrivals)
    due = sum(round((times[-1] - times[0]) / PERIOD) for times in arrivals if len(times) > 1)
    return made, due


def _rate(arrivals: list[list[float]]) -> float:
    """Cycles per second per device, from the first cycle seen to the last."""
    spans = [(len(t) - 1) / (t[-1] - t[0]) for t in arrivals if len(t) > 1 and t[-1] > t[0]]
    return sum(spans) / len(spans) if spans else 0.0


def _figures(devices: int, ours: dict[str, Any], raw: dict[str, Any]) -> list[Figure]:
    name = f"scale {devices} devices x 100 tags, 10 Hz"
    cpu, ref_cpu = (100 * side["cpu"] / side["wall"] for side in (ours, raw))
    made, due = _cycles(ours["arrivals"])
    raw_made, raw_due = _cycles(raw["arrivals"])
    jitter, raw_jitter = _jitter_p99(ours["arrivals"]), _jitter_p99(raw["arrivals"])
    rate, raw_rate = _rate(ours["arrivals"]), _rate(raw["arrivals"])
    detail = (
        f"cycles {made}/{due} due (raw {raw_made}/{raw_due}), {rate:.2f} Hz per device (raw "
        f"{raw_rate:.2f}), jitter p99 {jitter:.1f} ms (raw {raw_jitter:.1f}), CPU {cpu:.1f} % "
        f"(raw {ref_cpu:.1f} %), {ours['updates']} board updates in {ours['wall']:.1f} s"
    )
    return [
        Figure(
            6,
            f"{name}: CPU",
            cpu,
            "% core",
            ref_cpu,
            "raw poller",
            ref_cpu / cpu if cpu else None,
            f"<= {CPU_GOAL:g} x raw CPU",
            cpu <= CPU_GOAL * ref_cpu,
            detail,
        ),
        Figure(
            6,
            f"{name}: cycles made",
            100 * made / due if due else 0.0,
            "% due",
            100 * raw_made / raw_due if raw_due else 0.0,
            "raw poller",
            (made / due) / (raw_made / raw_due) if due and raw_made else None,
            "every cycle made",
            due > 0 and made >= due,
        ),
        Figure(
            6,
            f"{name}: poll jitter p99",
            jitter,
            "ms",
            raw_jitter,
            "raw poller",
            raw_jitter / jitter if jitter else None,
            f"< {JITTER_GOAL_MS:g} ms",
            jitter < JITTER_GOAL_MS,
        ),
    ]


def _growth(results: dict[int, tuple[dict[str, Any], dict[str, Any]]]) -> Figure:
    """How CPU per device grows from the smallest size to the largest (1.0: linear)."""
    small, large = min(results), max(results)

    def per_device(side: dict[str, Any], devices: int) -> float:
        return float(side["cpu"]) / float(side["wall"]) / devices

    ours = per_device(results[large][0], large) / per_device(results[small][0], small)
    raw = per_device(results[large][1], large) / per_device(results[small][1], small)
    return Figure(
        6,
        f"scale: CPU per device, {large} vs {small} devices",
        ours,
        "x",
        raw,
        "raw poller",
        raw / ours if ours else None,
        f"<= {LINEAR_GOAL:g} (linear)",
        ours <= LINEAR_GOAL,
    )


async def _scale(quick: bool) -> list[Figure]:
    window = QUICK_WINDOW if quick else WINDOW
    warmup = QUICK_WARMUP if quick else WARMUP
    figures: list[Figure] = []
    results: dict[int, tuple[dict[str, Any], dict[str, Any]]] = {}
    with quiet_pymodbus(), tempfile.TemporaryDirectory(prefix="cellctl-bench-scale-") as name:
        folder = Path(name)
        for devices in QUICK_SIZES if quick else SIZES:
            ours = await _side("ours", devices, window, warmup, folder)
            raw = await _side("raw", devices, window, warmup, folder)
            results[devices] = (ours, raw)
            figures += _figures(devices, ours, raw)
    figures.append(_growth(results))
    return figures


def measure(quick: bool) -> list[Figure]:
    """Figure 6: the scale figures (bench.reaction lists them after figure 5)."""
    return asyncio.run(_scale(quick))


# -- the children --------------------------------------------------------------------------


class Tally:
    """What one side heard: each device's cycle times, and the values delivered."""

    def __init__(self, devices: int) -> None:
        self.arrivals: list[list[float]] = [[] for _ in range(devices)]
        self.updates = 0

    async def window(self, window: float, warmup: float) -> tuple[float, float]:
        """Let the pollers warm up, then measure `window` s: (wall, CPU) of this process; what
        was heard before the window is forgotten."""
        await asyncio.sleep(warmup)
        for times in self.arrivals:
            times.clear()
        self.updates = 0
        profile = os.environ.get(PROFILE_ENV)
        profiler = cProfile.Profile() if profile else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        await asyncio.sleep(window)
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        if profiler is not None and profile:
            profiler.dump_stats(f"{profile}.{os.getpid()}")
        return wall, cpu

    def report(self, wall: float, cpu: float) -> None:
        """One JSON line for the parent."""
        result = {"wall": wall, "cpu": cpu, "arrivals": self.arrivals, "updates": self.updates}
        say(json.dumps(result))


async def _ours(cell_file: Path, window: float, warmup: float, log_file: Path) -> None:
    """The cell's tags on the board of a CellSession, as the controller watches them."""
    from cellctl import heap
    from cellctl.cell import load_cell
    from cellctl.io.session import CellSession
    from cellctl.logsetup import configure_logging
    from cellctl.values import TagValue

    configure_logging(log_file)
    cell = load_cell(cell_file)
    first: dict[str, int] = {}  # each device's index, in cell-file order
    for spec in cell.tags.values():
        first.setdefault(spec.device, len(first))
    marks = {f"{device}.u0": index for device, index in first.items()}
    tally = Tally(len(first))

    def heard(value: TagValue) -> None:
        tally.updates += 1
        index = marks.get(value.tag)
        if index is not None:
            tally.arrivals[index].append(time.perf_counter())

    async with CellSession(cell, list(cell.tags)) as session:
        session.subscribe(heard)
        # As `cellctl run` and `read --watch` do once connected, in a process of their own.
        heap.own_process()
        heap.settle()
        wall, cpu = await tally.window(window, warmup)
    tally.report(wall, cpu)


async def _raw(ports: list[int], window: float, warmup: float) -> None:
    """pymodbus clients, one per device, reading the same 120 registers at the same rate and
    decoding the same 100 values (uint16 as read, float32 by the client's codec)."""
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.exceptions import ModbusException

    from drivers.modbus.driver import poll_phase

    # The cell file's defaults: timeout 1 s, one retry.
    clients = [AsyncModbusTcpClient("127.0.0.1", port=p, timeout=1.0, retries=1) for p in ports]
    for client, port in zip(clients, ports, strict=True):
        if not await client.connect():
            raise SystemExit(f"cannot reach 127.0.0.1:{port}")
    tally = Tally(len(ports))
    latest: list[list[int | float]] = [[] for _ in ports]
    float32 = AsyncModbusTcpClient.DATATYPE.FLOAT32

    polling = True

    async def poll(index: int, client: AsyncModbusTcpClient) -> None:
        loop = asyncio.get_running_loop()
        # Staggered as ours staggers its pollers (the same phases, devices started in the same
        # order): the first cycle at once, the next `phase` of a period later.
        due = loop.time() - (1.0 - poll_phase(index)) * PERIOD
        while polling:
            try:
                answer = await client.read_holding_registers(0, count=REGISTERS, device_id=1)
            except ModbusException:  # no answer in time: a cycle missed, as ours counts it
                answer = None
            if answer is not None and not answer.isError():
                words = answer.registers
                values: list[int | float] = list(words[:UINT16_TAGS])
                for k in range(UINT16_TAGS, REGISTERS, 2):
                    decoded = client.convert_from_registers(words[k : k + 2], float32)
                    assert isinstance(decoded, float)
                    values.append(decoded)
                latest[index] = values
                tally.updates += len(values)
                tally.arrivals[index].append(time.perf_counter())
            now = loop.time()
            due += PERIOD
            if due <= now:
                due = now + PERIOD
            await asyncio.sleep(due - now)

    tasks = [asyncio.ensure_future(poll(i, c)) for i, c in enumerate(clients)]
    try:
        wall, cpu = await tally.window(window, warmup)
    finally:
        # A flag, not a cancel first: pymodbus may swallow a cancel that comes mid-request.
        polling = False
        _, pending = await asyncio.wait(tasks, timeout=STOP_WAIT)
        for task in pending:
            task.cancel()
        for client in clients:
            client.close()
    tally.report(wall, cpu)


def _child(argv: list[str]) -> None:
    kind, where, window, warmup, log_file = argv

    async def side() -> None:
        if kind == "ours":
            await _ours(Path(where), float(window), float(warmup), Path(log_file))
        elif kind == "raw":
            await _raw([int(port) for port in where.split(",")], float(window), float(warmup))
        else:
            raise SystemExit(f"unknown side {kind!r}: ours or raw")
        await stdin_closed()

    asyncio.run(side())


if __name__ == "__main__":
    _child(sys.argv[1:])
