"""Figures 7 and 8: what a technician waits for. Loading a 5,000-tag cell and a 5,000-step recipe,
reading 5,000 tags once, and how long `cellctl --version`, `validate` and `run --sim` take to
start.

Every figure is the wall time of child processes (`sys.executable -m cellctl ...`, as the
console script runs it), the median of several runs, each run beside a run of its reference
(alternately, so that both see the same load). The children run as an installed cellctl does,
with Python's bytecode cache: an environment that says PYTHONDONTWRITEBYTECODE (as CI's may)
would have every child compile cellctl's modules again, about 0.4 s that no user waits for.
One unmeasured run of each kind of child comes first, so that the cache and the OS's page cache
hold what they read.

- validate (7): the command on the 5,000-entry file less the same command on a file of a few
  entries (interpreter, imports, a small file), measured in the same run: what remains is the
  loading and checking of the big file.
- read (7): `cellctl read --cell CELL` of every tag of 50 Modbus TCP devices x 100 tags served by
  the cell's simulators at free ports (`cellctl.testing.serve`, a loop thread of this process,
  which otherwise only waits for its children); the reference is a child process that imports
  pymodbus,
  connects to the same 50 servers, reads the same registers and coils (two requests per
  device, the devices concurrently), decodes them and prints a line per tag: the same work from
  process start to the last line.
- start (8): `--version` beside the bare interpreter (`python -c pass`); `validate` of the demo
  recipe beside importing the libraries it uses; `run --sim` of the demo recipe up to the first
  step's writes confirmed (the wall clock stamped on the "step 1 ... done" event, less the
  moment the child was started) beside importing the libraries that command uses.

`python -m bench.startup raw-read ENDPOINTS.json` is figure 7's raw reader (see `_raw_read`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bench.childproc import ROOT
from bench.figure import Figure

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusTcpClient

#: The big cell: this many Modbus TCP devices, each with the tags of LAYOUT.
DEVICES = 50
#: Each device's tags: (count, name, table, type, registers each): 60 counters and set points,
#: 20 analogue values (float32), 20 status and command bits: 100 tags in one holding-register
#: block (hr:0..99) and one coil block (coil:0..19).
LAYOUT: tuple[tuple[int, str, str, str, int], ...] = (
    (60, "count", "hr", "uint16", 1),
    (20, "level", "hr", "float32", 2),
    (20, "flag", "coil", "bool", 1),
)
TAGS_PER_DEVICE = sum(count for count, *_ in LAYOUT)
REGISTERS = sum(count * width for count, _, table, _, width in LAYOUT if table == "hr")
COILS = sum(count for count, _, table, _, _ in LAYOUT if table == "coil")
#: Steps of the big recipe.
STEPS = 5000

#: The demo recipe figure 8 starts.
DEMO_RECIPE = ROOT / "recipes" / "demo" / "press-fit.yaml"
#: The libraries `validate` imports (what any implementation of it on this stack would load).
#: pydantic.main: `import pydantic` alone defers loading BaseModel's machinery to first use,
#: which any program with a model pays; yaml: PyYAML's libyaml parser, which the loader uses.
VALIDATE_LIBRARIES = "typer, pydantic.main, ruamel.yaml, yaml, rich.console, structlog"
#: The libraries `run --sim` imports: the protocols' clients and servers, the state machine, the
#: models, the loaders, the command line, the live view, logging.
RUN_LIBRARIES = (
    "asyncua, pymodbus.client, pymodbus.server, serial, transitions, pydantic.main, "
    "ruamel.yaml, yaml, typer, rich.live, structlog"
)
#: What the children import, loaded once before any is timed (its bytecode cached).
WARM_UP = (
    "cellctl.cli, cellctl.cli.validate, cellctl.cli.batch, cellctl.cli.views.tags, "
    "cellctl.io.session, cellctl.io.sim, cellctl.logsetup, bench.startup"
)
#: The event that says the first step's writes were confirmed, stamped HH:MM:SS.mmm.
FIRST_STEP = re.compile(r"^(\d\d):(\d\d):(\d\d(?:\.\d+)?) step 1 \S+ done$")
#: Seconds any one child may take before the benchmark gives up on it.
CHILD_LIMIT = 300.0


@dataclass(frozen=True)
class Sizes:
    """How many runs each command gets (quick or full)."""

    runs: int  # pairs of runs (ours, reference) at most
    budget: float  # seconds after which no further pair starts (one pair always runs)


QUICK = Sizes(runs=3, budget=4.0)
FULL = Sizes(runs=9, budget=30.0)


@dataclass(frozen=True)
class Run:
    """One child process: its wall and CPU seconds, and what it printed."""

    wall: float
    cpu: float
    out: str


def measure(quick: bool) -> list[Figure]:
    """Figures 7 (loading, read) and 8 (start)."""
    sizes = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="cellctl-bench-startup-") as name:
        folder = Path(name)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["CELLCTL_LOG_FILE"] = str(folder / "cellctl.log")
        _child(_python(f"import {WARM_UP}, {RUN_LIBRARIES}"), env)
        figures = [*_loading(folder, env, sizes), *_start(folder, env, sizes, warm=not quick)]
    return figures


# --- files -------------------------------------------------------------------------------------


def big_cell(ports: list[int]) -> str:
    """A cell of one Modbus TCP device per port on 127.0.0.1, each with the tags of LAYOUT."""
    lines = ["cell: bench-big", "devices:"]
    for d, port in enumerate(ports):
        lines.append(
            f"  d{d:02}: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, unit: 1, "
            "timeout: 1s, retries: 1}"
        )
    lines.append("tags:")
    for d in range(len(ports)):
        address = {"hr": 0, "coil": 0}
        for count, name, table, kind, width in LAYOUT:
            access = "rw" if kind != "float32" else "ro"
            for i in range(count):
                lines.append(
                    f'  d{d:02}.{name}{i:02}: {{device: d{d:02}, address: "{table}:'
                    f'{address[table]}", type: {kind}, access: {access}}}'
                )
                address[table] += width
    return "\n".join(lines) + "\n"


#: The cell the recipes are checked against, and the small cell of figure 7's baseline.
SMALL_CELL = """\
cell: bench-small
devices:
  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 5020, unit: 1}
tags:
  plc.speed: {device: plc, address: "hr:0", type: uint16, access: rw, min: 0, max: 3000}
  plc.level: {device: plc, address: "hr:1", type: float32, unit: mm}
  plc.run:   {device: plc, address: "coil:0", access: rw}
"""


def big_recipe(steps: int) -> str:
    """A recipe of `steps` steps in turn: a set of two tags, a wait on a condition, a delay."""
    lines = [
        "recipe: bench-big",
        "version: 1",
        "parameters:",
        "  speed: {type: int, default: 1200, min: 0, max: 3000}",
        "steps:",
    ]
    for i in range(steps):
        if i % 3 == 0:
            lines.append(f"  - {{id: put-{i}, set: {{plc.speed: speed, plc.run: true}}}}")
        elif i % 3 == 1:
            lines.append(
                f'  - {{id: until-{i}, wait: "plc.level >= {i % 100} and plc.run", timeout: 2s}}'
            )
        else:
            lines.append(f"  - {{id: pause-{i}, delay: 10ms}}")
    return "\n".join(lines) + "\n"


# --- children ----------------------------------------------------------------------------------


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _child(argv: list[str], env: dict[str, str]) -> Run:
    """Run `argv` to its end (exit 0 required): its wall time, CPU (user + system) and stdout."""
    cpu = _children_cpu()
    start = time.perf_counter()
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=CHILD_LIMIT, check=False
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv[1:])}: exit code {done.returncode}\n{done.stdout[-2000:]}"
            f"{done.stderr[-2000:]}"
        )
    return Run(wall, _children_cpu() - cpu, done.stdout)


def _cellctl(*args: str | Path) -> list[str]:
    return [sys.executable, "-m", "cellctl", *map(str, args)]


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _pairs(
    ours: Callable[[], Run], reference: Callable[[], Run], sizes: Sizes
) -> tuple[list[Run], list[Run]]:
    """Ours and the reference run alternately, `sizes.runs` times each or until the budget is
    spent (one pair at least)."""
    mine: list[Run] = []
    theirs: list[Run] = []
    start = time.monotonic()
    while len(mine) < sizes.runs and (not mine or time.monotonic() - start < sizes.budget):
        mine.append(ours())
        theirs.append(reference())
    return mine, theirs


def _median(runs: list[Run], what: Callable[[Run], float] = lambda r: r.wall) -> float:
    return statistics.median(what(r) for r in runs)


# --- figure 7 ----------------------------------------------------------------------------------


def _loading(folder: Path, env: dict[str, str], sizes: Sizes) -> Iterator[Figure]:
    from cellctl.cell.tags import device_config
    from cellctl.testing import serve
    from drivers.config import ModbusTcpConfig

    cell = folder / "big" / "cell.yaml"
    cell.parent.mkdir()
    # The ports as a cell file would have them; the simulators serve at free ones.
    cell.write_text(big_cell([5020 + d for d in range(DEVICES)]), encoding="utf-8")
    small = folder / "small" / "cell.yaml"
    small.parent.mkdir()
    small.write_text(SMALL_CELL, encoding="utf-8")
    recipe = small.parent / "big.yaml"
    recipe.write_text(big_recipe(STEPS), encoding="utf-8")
    one_step = small.parent / "one.yaml"
    one_step.write_text(big_recipe(1), encoding="utf-8")

    yield _validate_figure(
        f"validate a {DEVICES * TAGS_PER_DEVICE:,}-tag cell (loading)",
        _cellctl("validate", cell),
        _cellctl("validate", small),
        "the same on a 3-tag cell",
        env,
        sizes,
    )
    yield _validate_figure(
        f"validate a {STEPS:,}-step recipe (loading)",
        _cellctl("validate", recipe),
        _cellctl("validate", one_step),
        "the same on a 1-step recipe",
        env,
        sizes,
    )
    (folder / "served").mkdir()
    with serve(cell, folder / "served") as served:
        configs = [device_config(served.cell, name) for name in served.cell.devices]
        endpoints = folder / "served" / "endpoints.json"
        endpoints.write_text(
            json.dumps([[c.host, c.port] for c in configs if isinstance(c, ModbusTcpConfig)])
        )
        yield _read_figure(served.cell_file, endpoints, env, sizes)


def _validate_figure(
    name: str,
    big: list[str],
    small: list[str],
    small_name: str,
    env: dict[str, str],
    sizes: Sizes,
) -> Figure:
    """`cellctl validate` of a big file less the same command on a small file."""
    ours, baseline = _pairs(lambda: _child(big, env), lambda: _child(small, env), sizes)
    whole, start = _median(ours), _median(baseline)
    loading = whole - start
    return Figure(
        7,
        name,
        loading,
        "s",
        start,
        small_name,
        None,
        "< 1 s beyond the start",
        loading < 1.0,
        f"whole command {whole:.3f} s ({_median(ours, lambda r: r.cpu):.3f} s CPU) less "
        f"{start:.3f} s; median of {len(ours)}",
        {"whole": whole, "runs": len(ours)},
    )


def _read_figure(served: Path, endpoints: Path, env: dict[str, str], sizes: Sizes) -> Figure:
    """`cellctl read` of every tag beside the raw reader, against the same simulators."""
    tags = DEVICES * TAGS_PER_DEVICE

    def ours() -> Run:
        run = _child(_cellctl("read", "--cell", served), env)
        _expect_lines(run, tags, "cellctl read")
        return run

    def raw() -> Run:
        # `-m` finds the bench package in the working folder, ROOT.
        run = _child([sys.executable, "-m", "bench.startup", "raw-read", str(endpoints)], env)
        _expect_lines(run, tags, "the raw reader")
        return run

    mine, theirs = _pairs(ours, raw, sizes)
    wall, reference = _median(mine), _median(theirs)
    return Figure(
        7,
        f"read {tags:,} tags once ({DEVICES} Modbus TCP devices)",
        wall,
        "s",
        reference,
        "raw pymodbus reader",
        reference / wall,
        "< 1.5 s",
        wall < 1.5,
        f"whole commands; CPU {_median(mine, lambda r: r.cpu):.3f} s, raw "
        f"{_median(theirs, lambda r: r.cpu):.3f} s; median of {len(mine)}",
        {"runs": len(mine)},
    )


def _expect_lines(run: Run, count: int, what: str) -> None:
    lines = run.out.splitlines()
    if len(lines) != count:
        raise RuntimeError(f"{what} printed {len(lines)} lines, not {count}:\n{run.out[-2000:]}")


# --- figure 7's raw reader (a child process) ---------------------------------------------------


async def _raw_device(client: AsyncModbusTcpClient, device: int) -> list[str]:
    """One device's tags, read in two requests and decoded, as `tag<TAB>value` lines."""
    registers = await client.read_holding_registers(0, count=REGISTERS, device_id=1)
    coils = await client.read_coils(0, count=COILS, device_id=1)
    if registers.isError() or coils.isError():
        raise RuntimeError(f"d{device:02}: {registers} {coils}")
    lines: list[str] = []
    offsets = {"hr": 0, "coil": 0}
    float32 = client.DATATYPE.FLOAT32
    for count, name, table, kind, width in LAYOUT:
        for i in range(count):
            at = offsets[table]
            value: object
            if table == "coil":
                value = coils.bits[at]
            elif kind == "float32":
                value = client.convert_from_registers(registers.registers[at : at + 2], float32)
            else:
                value = registers.registers[at]
            lines.append(f"d{device:02}.{name}{i:02}\t{value}")
            offsets[table] += width
    return lines


async def _raw_read(endpoints: list[tuple[str, int]]) -> list[str]:
    """Every tag of the big cell with a raw pymodbus client per device, devices concurrently."""
    from pymodbus.client import AsyncModbusTcpClient

    clients = [AsyncModbusTcpClient(h, port=p, timeout=1, retries=1) for h, p in endpoints]
    try:
        connected = await asyncio.gather(*(client.connect() for client in clients))
        if not all(connected):
            raise RuntimeError("a device did not accept the connection")
        per_device = await asyncio.gather(*(_raw_device(c, d) for d, c in enumerate(clients)))
    finally:
        for client in clients:
            client.close()
    return [line for lines in per_device for line in lines]


# --- figure 8 ----------------------------------------------------------------------------------


def _start(folder: Path, env: dict[str, str], sizes: Sizes, warm: bool) -> Iterator[Figure]:
    version = _cellctl("--version")
    bare = _python("pass")
    validate = _cellctl("validate", DEMO_RECIPE)
    validate_libraries = _python(f"import {VALIDATE_LIBRARIES}")
    run_libraries = _python(f"import {RUN_LIBRARIES}")
    # One unmeasured run of each first; `run --sim` builds its OPC UA address-space cache
    # in the first run ever (skipped by --quick: the median absorbs one slow run).
    for argv in (version, bare, validate, validate_libraries):
        _child(argv, env)
    if warm:
        _first_step(folder, env)

    ours, reference = _pairs(lambda: _child(version, env), lambda: _child(bare, env), sizes)
    yield _start_figure("cellctl --version", ours, reference, "python -c pass", "< 0.3 s", 0.3)
    ours, reference = _pairs(
        lambda: _child(validate, env), lambda: _child(validate_libraries, env), sizes
    )
    yield _start_figure(
        "cellctl validate press-fit.yaml", ours, reference, "import its libraries", "< 0.6 s", 0.6
    )
    ours, reference = _pairs(
        lambda: _first_step(folder, env), lambda: _child(run_libraries, env), sizes
    )
    wall, imports = _median(ours), _median(reference)
    yield Figure(
        8,
        "run --sim press-fit to the first step written",
        wall,
        "s",
        imports,
        "import its libraries",
        imports / wall,
        "<= reference + 0.3 s",
        wall - imports <= 0.3,
        f"{wall - imports:.3f} s beyond the imports; libraries: {RUN_LIBRARIES}; "
        f"median of {len(ours)}",
        {"beyond": wall - imports, "runs": len(ours)},
    )


def _start_figure(
    name: str, ours: list[Run], reference: list[Run], reference_name: str, goal: str, bound: float
) -> Figure:
    wall, theirs = _median(ours), _median(reference)
    return Figure(
        8,
        name,
        wall,
        "s",
        theirs,
        reference_name,
        theirs / wall,
        goal,
        wall < bound,
        f"CPU {_median(ours, lambda r: r.cpu):.3f} s; median of {len(ours)}",
        {"runs": len(ours)},
    )


def _first_step(folder: Path, env: dict[str, str]) -> Run:
    """`cellctl run press-fit --sim`: seconds from starting the child to its first step done (by
    the event's own wall-clock stamp); then stopped by SIGTERM, as an operator would."""
    return asyncio.run(_first_step_async(folder, dict(env, PYTHONUNBUFFERED="1")))


async def _first_step_async(folder: Path, env: dict[str, str]) -> Run:
    errors = folder / "run.err"
    cpu = _children_cpu()
    with errors.open("wb") as err:
        started = time.time()
        child = await asyncio.create_subprocess_exec(
            *_cellctl("run", DEMO_RECIPE, "--sim"),
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
            cwd=ROOT,
            env=env,
        )
    assert child.stdout is not None
    printed: list[str] = []
    try:
        async with asyncio.timeout(CHILD_LIMIT):
            while True:
                raw = await child.stdout.readline()
                if not raw:
                    raise RuntimeError(
                        f"cellctl run --sim ended ({await child.wait()}) before its first step:"
                        f"\n{''.join(printed)}{errors.read_text(errors='replace')[-2000:]}"
                    )
                printed.append(raw.decode())
                if (done := FIRST_STEP.match(printed[-1].rstrip("\n"))) is not None:
                    break
            child.send_signal(signal.SIGTERM)
            await child.stdout.read()
            await child.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            if child.returncode is None:
                child.kill()
                await child.wait()
    hours, minutes, seconds = done.groups()
    of_day = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    local = time.localtime(started)
    start_of_day = local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + started % 1
    wall = (of_day - start_of_day) % 86400
    return Run(wall, _children_cpu() - cpu, "".join(printed))


def main(argv: list[str]) -> int:
    """`raw-read ENDPOINTS.json`: figure 7's raw reader, one `tag<TAB>value` line per tag."""
    if argv[:1] != ["raw-read"] or len(argv) != 2:
        print("usage: python -m bench.startup raw-read ENDPOINTS.json", file=sys.stderr)
        return 2
    endpoints = [(host, int(port)) for host, port in json.loads(Path(argv[1]).read_text())]
    lines = asyncio.run(_raw_read(endpoints))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
