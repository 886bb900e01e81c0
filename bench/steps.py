"""Figures 1-3: `set` steps over Modbus TCP and over OPC UA beside the raw clients writing the
same values to the same simulator, and how fast a `wait` step answers a tag another client
changes.

The cell is served by `cellctl sim` in a child process, so that the CPU time measured in this
process is the client's alone (ours or the raw library's). Ours is `cellctl run` in this
process (`cellctl.cli.run`, as the console script runs it: JSON log file, one printed line per
event), timed by difference: a batch of `big` steps less a batch of `small` steps, so that
loading, connecting, Reset and the summary cancel out and what remains is the steps. Its journal
is the bench's own on a RAM disk (bench/state.py: its work counted, no fsync), so the figures
compare with raw clients that record nothing; figure 1 has a second line, for context, with the
journal on disk (every intent fsync'ed before its write is sent).

`python -m bench.steps changer ...` is the third client of figure 3, in a child process of its
own (see `_changer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass
from pathlib import Path

from bench.childproc import ROOT
from bench.figure import Figure, Stopwatch, percentile, rate_figure
from bench.state import disk_folder, journal_where

#: The bench cell: one generic Modbus TCP device and one generic OPC UA server, at `{modbus}`
#: and `{opcua}` (free ports). The `set` figures write `plc.value` and `panel.value`; the `wait`
#: figure waits on `plc.trigger` and answers on `plc.ack` (one polled block with it).
CELL = """\
cell: bench
devices:
  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {modbus}, unit: 1, poll: {poll}ms,
         timeout: 1s, retries: 1}}
  panel: {{driver: opcua, endpoint: "opc.tcp://127.0.0.1:{opcua}/panel",
           publishing_interval: {poll}ms, timeout: 1s}}
tags:
  plc.value:   {{device: plc, address: "hr:0", type: uint16, access: rw}}
  plc.trigger: {{device: plc, address: "hr:1", type: uint16, access: rw}}
  plc.ack:     {{device: plc, address: "hr:2", type: uint16, access: rw}}
  panel.value: {{device: panel, node: "ns=2;s=Panel.Value", type: int32, access: rw}}
"""

#: `n` set steps writing 1..n to one tag.
SET_RECIPE = """\
recipe: set-{name}
version: 1
parameters:
  n: {{type: int, default: 10, min: 1, max: 60000}}
steps:
  - repeat: n
    index: i
    steps:
      - {{id: put, set: {{{tag}: i}}}}
"""

#: `n` rounds of: wait until plc.trigger is the round number, then write it to plc.ack. The
#: first step writes ack 0: the changer starts once it sees that (the batch is running).
WAIT_RECIPE = """\
recipe: wait-change
version: 1
parameters:
  n: {type: int, default: 10, min: 1, max: 60000}
steps:
  - {id: armed, set: {plc.ack: 0}}
  - repeat: n
    index: i
    steps:
      - {id: await-change, wait: "plc.trigger == i", timeout: 10s}
      - {id: answer, set: {plc.ack: i}}
"""

#: Holding registers of the bench cell's tags, and its Modbus unit.
VALUE, TRIGGER, ACK, UNIT = 0, 1, 2, 1
#: The OPC UA node of panel.value.
PANEL_NODE = "ns=2;s=Panel.Value"
#: ack's value before a `wait` batch: not 0, so the changer knows when the batch runs.
NOT_ARMED = 65535
#: The poll period of the `wait` figure (and the cell's), seconds.
POLL = 0.020
#: How often the changer reads plc.ack to see the answer (its resolution), seconds.
LOOK = 0.001
#: The goal of figure 3: p99 within one poll period and this, seconds.
WAIT_SLACK = 0.005
#: Seconds the changer has to end once the waiting side is done (it has seen every answer).
CHANGER_END = 30.0


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does (quick or full)."""

    small: int  # steps of the batch subtracted
    big: int  # steps of the batch measured
    trials: int  # ours and the raw client alternately, this many times each
    changes: int  # figure 3: changes of plc.trigger


QUICK = Sizes(small=50, big=1000, trials=3, changes=40)
FULL = Sizes(small=100, big=4000, trials=4, changes=200)


@dataclass(frozen=True)
class Served:
    """The bench cell served by `cellctl sim` in a child: where, and the files of this run."""

    folder: Path
    cell_file: Path
    modbus_port: int
    opcua_port: int

    @property
    def opcua_url(self) -> str:
        """The OPC UA server's endpoint."""
        return f"opc.tcp://127.0.0.1:{self.opcua_port}/panel"


@dataclass(frozen=True)
class Cost:
    """Wall and CPU seconds of one step (or one raw write)."""

    wall: float
    cpu: float


def _median(costs: list[Cost]) -> Cost:
    """The median wall and the median CPU of the trials (each taken apart)."""
    return Cost(statistics.median(c.wall for c in costs), statistics.median(c.cpu for c in costs))


@contextlib.contextmanager
def _served() -> Iterator[Served]:
    """The bench cell on `cellctl sim` in a child process, at free loopback ports."""
    from cellctl.testing import free_port, serve_in_child

    with tempfile.TemporaryDirectory(prefix="cellctl-bench-steps-") as name:
        folder = Path(name)
        modbus, opcua = free_port(), free_port()
        cell = folder / "cell.yaml"
        cell.write_text(CELL.format(modbus=modbus, opcua=opcua, poll=round(POLL * 1000)))
        written = folder / "served.yaml"
        with serve_in_child(cell, written, log_file=folder / "sim.log"):
            yield Served(folder, written, modbus, opcua)


def _recipe(served: Served, name: str, text: str) -> Path:
    path = served.folder / f"{name}.yaml"
    path.write_text(text)
    return path


def _cellctl_run(served: Served, recipe: Path, steps: int, journal: Path | None = None) -> Cost:
    """`cellctl run RECIPE --cell served -p n=STEPS [--journal JOURNAL]` in this process: its
    wall and CPU time. Without `journal`, run's default: the bench's own ($CELLCTL_JOURNAL).

    Its output goes to a file (off a terminal: one line per event, as in CI or a pipe).
    """
    from cellctl.cli import run

    out = served.folder / "run.out"
    argv = ["--log-file", str(served.folder / "run.log"), "run", str(recipe)]
    argv += ["--cell", str(served.cell_file), "-p", f"n={steps}"]
    if journal is not None:
        argv += ["--journal", str(journal)]
    with out.open("w") as printed, contextlib.redirect_stdout(printed), Stopwatch() as watch:
        code = run(argv)
    if code != 0:
        raise RuntimeError(
            f"cellctl run {recipe.name} ended with exit code {code}:\n" + out.read_text()[-2000:]
        )
    return Cost(watch.wall, watch.cpu)


def _per_step(served: Served, recipe: Path, sizes: Sizes, journal: Path | None = None) -> Cost:
    """Wall and CPU of one step of ours: (big batch - small batch) / (big - small) steps."""
    small = _cellctl_run(served, recipe, sizes.small, journal)
    big = _cellctl_run(served, recipe, sizes.big, journal)
    steps = sizes.big - sizes.small
    return Cost((big.wall - small.wall) / steps, (big.cpu - small.cpu) / steps)


async def _raw_modbus_writes(port: int, count: int) -> Cost:
    """pymodbus writing 1..count to plc.value, each confirmed before the next: per write."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    if not await client.connect():
        raise RuntimeError(f"raw pymodbus: cannot connect to 127.0.0.1:{port}")
    try:
        with Stopwatch() as watch:
            for value in range(1, count + 1):
                reply = await client.write_register(VALUE, value, device_id=UNIT)
                if reply.isError():
                    raise RuntimeError(f"raw pymodbus: write refused: {reply}")
    finally:
        client.close()
    return Cost(watch.wall / count, watch.cpu / count)


async def _raw_opcua_writes(url: str, count: int) -> Cost:
    """asyncua writing 1..count to panel.value (an Int32 Variant), each confirmed: per write."""
    from asyncua import ua
    from asyncua.client.client import Client

    client = Client(url, timeout=1)
    await client.connect()
    try:
        node = client.get_node(PANEL_NODE)
        with Stopwatch() as watch:
            for value in range(1, count + 1):
                await node.write_value(ua.Variant(value, ua.VariantType.Int32))
    finally:
        await client.disconnect()
    return Cost(watch.wall / count, watch.cpu / count)


def _set_figure(
    number: int, protocol: str, reference: str, ours: list[Cost], raw: list[Cost], steps: int
) -> Figure:
    """Figure 1 or 2 from the trials' medians."""
    (wall, cpu), (raw_wall, raw_cpu) = astuple(_median(ours)), astuple(_median(raw))
    detail = (
        f"per step {wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms CPU ({cpu / raw_cpu:.1f} x raw); "
        f"raw write {raw_wall * 1e3:.2f} ms wall, {raw_cpu * 1e3:.2f} ms CPU "
        f"({steps} steps, {len(ours)} trial(s), medians); {journal_where()}"
    )
    figure = rate_figure(
        number,
        f"set steps over {protocol}",
        1 / wall,
        1 / raw_wall,
        reference,
        0.8,
        detail=detail,
    )
    extra = {
        "wall_ms": wall * 1e3,
        "cpu_ms": cpu * 1e3,
        "raw_wall_ms": raw_wall * 1e3,
        "raw_cpu_ms": raw_cpu * 1e3,
        "steps": steps,
        "trials": [
            {
                "ours_wall_ms": o.wall * 1e3,
                "ours_cpu_ms": o.cpu * 1e3,
                "raw_wall_ms": r.wall * 1e3,
                "raw_cpu_ms": r.cpu * 1e3,
            }
            for o, r in zip(ours, raw, strict=True)
        ],
    }
    figure.extra.update(extra)
    figure.extra["journal"] = journal_where()
    return figure


def _on_disk_figure(
    ram: list[Cost], disk: list[Cost], raw: list[Cost], steps: int, journal: Path
) -> Figure:
    """Figure 1's context line: the same steps with the journal on disk (each intent fsync'ed
    before its write is sent), beside raw pymodbus; the detail names the cost of durability."""
    (wall, cpu), (ram_wall, ram_cpu) = astuple(_median(disk)), astuple(_median(ram))
    raw_wall = _median(raw).wall
    detail = (
        f"per step {wall * 1e3:.2f} ms wall, {cpu * 1e3:.2f} ms CPU; durability per step "
        f"{(wall - ram_wall) * 1e3:+.2f} ms wall, {(cpu - ram_cpu) * 1e3:+.2f} ms CPU over the "
        f"journal on tmpfs; {journal_where(journal)}, {_intents(journal)} intent rows; "
        f"context, no goal: on loopback one fsync costs more than the write (figure 11: on a "
        f"link with latency)"
    )
    figure = Figure(
        1,
        "set steps over Modbus TCP, journal on disk",
        1 / wall,
        "steps/s",
        1 / raw_wall,
        "raw pymodbus",
        raw_wall / wall,
        "context",
        None,
        detail,
    )
    figure.extra.update(
        {
            "wall_ms": wall * 1e3,
            "cpu_ms": cpu * 1e3,
            "durability_wall_ms": (wall - ram_wall) * 1e3,
            "durability_cpu_ms": (cpu - ram_cpu) * 1e3,
            "steps": steps,
            "journal": journal_where(journal),
            "trials": [{"wall_ms": c.wall * 1e3, "cpu_ms": c.cpu * 1e3} for c in disk],
        }
    )
    return figure


def _intents(journal: Path) -> int:
    """How many intent rows `journal` holds (the proof that the journal was on)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(journal)) as conn:
        count: int = conn.execute("SELECT count(*) FROM rows WHERE kind = 'intent'").fetchone()[0]
    return count


def _set_figures(served: Served, sizes: Sizes) -> list[Figure]:
    """Figures 1 and 2: ours and the raw client alternately, `trials` times each; for Modbus
    also ours with the journal on disk, in the same alternation."""
    figures = []
    steps = sizes.big - sizes.small
    with disk_folder("cellctl-bench-steps-") as folder:
        journal = folder / "journal.sqlite"
        for number, protocol, tag, reference in (
            (1, "Modbus TCP", "plc.value", "raw pymodbus"),
            (2, "OPC UA", "panel.value", "raw asyncua"),
        ):
            recipe = _recipe(served, f"set-{number}", SET_RECIPE.format(name=number, tag=tag))
            ours: list[Cost] = []
            raw: list[Cost] = []
            on_disk: list[Cost] = []
            # Once before the trials: the first batch in this process pays for imports and
            # warm-up (and the first one on disk, for creating its journal).
            _cellctl_run(served, recipe, sizes.small)
            if number == 1:
                _cellctl_run(served, recipe, sizes.small, journal)
            for _ in range(sizes.trials):
                ours.append(_per_step(served, recipe, sizes))
                if number == 1:
                    on_disk.append(_per_step(served, recipe, sizes, journal))
                    raw.append(asyncio.run(_raw_modbus_writes(served.modbus_port, steps)))
                else:
                    raw.append(asyncio.run(_raw_opcua_writes(served.opcua_url, steps)))
            figures.append(_set_figure(number, protocol, reference, ours, raw, steps))
            if on_disk:
                figures.append(_on_disk_figure(ours, on_disk, raw, steps, journal))
    return figures


# --- figure 3: wait steps ------------------------------------------------------------------


async def _arm(port: int) -> None:
    """Before a `wait` batch: trigger 0, ack not yet 0."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    if not await client.connect():
        raise RuntimeError(f"cannot connect to 127.0.0.1:{port}")
    try:
        await client.write_registers(TRIGGER, [0, NOT_ARMED], device_id=UNIT)
    finally:
        client.close()


async def _changer(port: int, count: int, seed: int) -> list[float]:
    """The third client: once ack is 0, `count` times: after a pause, write trigger = k and
    read ack every LOOK seconds until it is k; the seconds from the write's sending to then.

    The pause (10 ms and a random part of a poll period) lets the waiting side's next wait
    begin (a change before it would be seen by its first, fresh read) and spreads the changes
    over the phases of its poll.
    """
    from pymodbus.client import AsyncModbusTcpClient

    rng = random.Random(seed)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    if not await client.connect():
        raise RuntimeError(f"changer: cannot connect to 127.0.0.1:{port}")

    async def ack_is(value: int) -> None:
        # Read from outside, as any client sees it: every LOOK seconds until it is `value`.
        while True:
            reply = await client.read_holding_registers(ACK, count=1, device_id=UNIT)
            if reply.isError():
                raise RuntimeError(f"changer: reading ack refused: {reply}")
            if reply.registers[0] == value:
                return
            await asyncio.sleep(LOOK)

    latencies: list[float] = []
    try:
        async with asyncio.timeout(60):
            await ack_is(0)
        for k in range(1, count + 1):
            await asyncio.sleep(0.010 + rng.uniform(0, POLL))
            async with asyncio.timeout(10):
                sent = time.perf_counter()
                written = await client.write_register(TRIGGER, k, device_id=UNIT)
                if written.isError():
                    raise RuntimeError(f"changer: writing trigger refused: {written}")
                await ack_is(k)
                latencies.append(time.perf_counter() - sent)
    finally:
        client.close()
    return latencies


def _changed_for(port: int, count: int, waiting: Callable[[], object]) -> list[float]:
    """Run `waiting()` (the side that waits and answers) while the changer, a child process,
    changes plc.trigger `count` times; the changer's latencies, seconds.

    The child is killed when `waiting` fails, so that its own timeout cannot hide the cause.
    """
    command = [sys.executable, "-m", "bench.steps", "changer", str(port), str(count), "11"]
    child = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        waiting()
        out, err = child.communicate(timeout=CHANGER_END)
    except BaseException:
        child.kill()
        child.communicate()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"the changer failed (exit {child.returncode}):\n{err[-3000:]}")
    return [float(x) for x in json.loads(out)]


async def _raw_waiter(port: int, count: int) -> None:
    """The reference: pymodbus polling trigger and ack (one request) every POLL seconds, and
    writing ack = k once trigger is k, for rounds 1..count; ack 0 first, as the recipe does."""
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    if not await client.connect():
        raise RuntimeError(f"raw waiter: cannot connect to 127.0.0.1:{port}")
    loop = asyncio.get_running_loop()
    try:
        await client.write_register(ACK, 0, device_id=UNIT)
        k = 1
        due = loop.time()
        async with asyncio.timeout(60):
            while k <= count:
                reply = await client.read_holding_registers(TRIGGER, count=2, device_id=UNIT)
                if reply.registers[0] == k:
                    await client.write_register(ACK, k, device_id=UNIT)
                    k += 1
                due += POLL
                await asyncio.sleep(max(0.0, due - loop.time()))
    finally:
        client.close()


def _wait_figure(served: Served, sizes: Sizes) -> Figure:
    """Figure 3: from the change to the answer's write, ours (`cellctl run`) and the raw loop."""
    recipe = _recipe(served, "wait", WAIT_RECIPE)
    port = served.modbus_port
    asyncio.run(_arm(port))
    ours = _changed_for(port, sizes.changes, lambda: _cellctl_run(served, recipe, sizes.changes))
    asyncio.run(_arm(port))
    raw = _changed_for(port, sizes.changes, lambda: asyncio.run(_raw_waiter(port, sizes.changes)))
    p50, p99 = percentile(ours, 50) * 1e3, percentile(ours, 99) * 1e3
    raw50, raw99 = percentile(raw, 50) * 1e3, percentile(raw, 99) * 1e3
    goal = (POLL + WAIT_SLACK) * 1e3
    return Figure(
        3,
        "wait step: change to next write, p99",
        p99,
        "ms",
        raw99,
        "raw pymodbus poll loop",
        raw99 / p99 if p99 else None,
        f"p99 <= {goal:g} ms (poll {POLL * 1e3:g} + {WAIT_SLACK * 1e3:g})",
        p99 <= goal,
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; raw loop p50 {raw50:.1f} ms, p99 {raw99:.1f} ms "
        f"({sizes.changes} changes each, seen by a third client reading every "
        f"{LOOK * 1e3:g} ms); {journal_where()}",
        {
            "p50_ms": p50,
            "p99_ms": p99,
            "raw_p50_ms": raw50,
            "raw_p99_ms": raw99,
            "changes": sizes.changes,
        },
    )


def measure(quick: bool) -> list[Figure]:
    """Figures 1-3 against one `cellctl sim` child."""
    sizes = QUICK if quick else FULL
    with _served() as served:
        figures = _set_figures(served, sizes)
        figures.append(_wait_figure(served, sizes))
    return figures


def main(argv: list[str]) -> int:
    """`python -m bench.steps changer PORT COUNT SEED`: the third client of figure 3."""
    if len(argv) != 4 or argv[0] != "changer":
        print("usage: python -m bench.steps changer PORT COUNT SEED", file=sys.stderr)
        return 1
    latencies = asyncio.run(_changer(int(argv[1]), int(argv[2]), int(argv[3])))
    print(json.dumps(latencies))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
