"""Figures 4 and 9: `set` steps on a memory cell run as `cellctl run` runs them, against
bluesky's RunEngine moving an ophyd soft signal (`bps.mv`); RSS after long batches.

Every measurement runs in a child process (`python -m bench.peer ...`), so that the bench's own
heap, its logging setup and the other modules' imports stay out of the figures:

- figure 4: one child runs both sides, interleaved, in the same process: our side is the
  in-process CLI (`cellctl --log-file F run RECIPE --cell CELL`, stdout to /dev/null), timed from
  the first step's StepStarted to BatchEnded in the JSON log the run writes (the recipe's parsing
  and the connect are outside that window); the peer is `RE(plan)` with `RE = RunEngine({})`, no
  subscriptions, timed inside the plan from before its first `bps.mv` to after its last.
- figure 9: one child per batch size runs the in-process CLI on a recipe of that many steps and
  reads VmRSS from /proc/self/status after it. Two kinds of recipe separate what running costs
  from what the recipe's size costs: N distinct `set` steps (the recipe grows with N: its parsed
  model is kept for the run) and `repeat: N` over one `set` step (a small recipe, N steps run);
  a traced child (tracemalloc) says where the memory of the distinct recipe goes: while it is
  parsed and kept, and while the batch runs.

The children journal to the bench's own journal on a RAM disk (bench/state.py, through
$CELLCTL_JOURNAL): the journal's work is counted, its fsync is not (the peer records nothing).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.childproc import ROOT
from bench.figure import Figure, rate_figure
from bench.state import journal_where

#: A cell of memory devices with an interlock and a safe state, as a real cell has: the
#: controller watches the interlock's tag and keeps its safe state ready on every step.
CELL = """\
cell: bench-peer
devices:
  axis:   {driver: memory}
  safety: {driver: memory}
tags:
  axis.position:    {device: axis, type: uint16, access: rw}
  safety.fault:     {device: safety, type: bool}
interlocks:
  - {name: fault, when: "safety.fault", action: hold}
safe_state: {axis.position: 0}
"""

#: Steps per batch (figure 4) and rounds per side, quick and full.
STEPS = {True: 1_000, False: 5_000}
ROUNDS = {True: 2, False: 3}
#: Batch sizes of figure 9; the reference is 1,000 steps, 10 steps is shown beside it.
RSS_SIZES = (10, 1_000, 10_000)
#: Figure 9's recipes: N distinct set steps, or one set step repeated N times.
DISTINCT, REPEATED = "distinct", "repeat"
#: "Flat": RSS after 10,000 steps at most this much above RSS after 1,000.
FLAT_GROWTH = 0.10
#: The RSS goal after 10,000 steps, in MB (10^6 bytes).
RSS_GOAL_MB = 100.0
#: How long one child may take before the bench gives up on it.
CHILD_TIMEOUT = 600.0


def position(step: int) -> int:
    """The value step `step` moves to: a new one each step (never the safe state's 0)."""
    return step % 60_000 + 1


def write_files(folder: Path, steps: int) -> tuple[Path, Path]:
    """The cell file and a recipe of `steps` distinct set steps, in `folder`."""
    cell = folder / "cell.yaml"
    cell.write_text(CELL, encoding="utf-8")
    recipe = folder / f"moves-{steps}.yaml"
    lines = ["recipe: moves", "version: 1", "steps:"]
    lines += [f"  - {{id: s{i}, set: {{axis.position: {position(i)}}}}}" for i in range(steps)]
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cell, recipe


def write_repeat(folder: Path, steps: int) -> tuple[Path, Path]:
    """The cell file and a recipe of one set step run `steps` times (`repeat`), in `folder`:
    each round writes its own value, as the distinct recipe's steps do."""
    cell, _ = write_files(folder, 1)
    recipe = folder / f"repeat-{steps}.yaml"
    lines = ["recipe: moves", "version: 1", "steps:", f"  - repeat: {steps}", "    index: n"]
    lines += ["    steps:", "      - {id: move, set: {axis.position: n}}"]
    recipe.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return cell, recipe


def _run_cli(cell: Path, recipe: Path, log_file: Path) -> None:
    """`cellctl --log-file LOG run RECIPE --cell CELL` in this process, as the console script
    runs it, its output to /dev/null (a run off a terminal prints one line per event)."""
    from cellctl.cli import run

    with open(os.devnull, "w", encoding="utf-8") as sink, contextlib.redirect_stdout(sink):
        code = run(["--log-file", str(log_file), "run", str(recipe), "--cell", str(cell)])
    if code != 0:
        raise RuntimeError(f"cellctl run {recipe} exited {code}; see {log_file}")


def _log_events(log_file: Path) -> Iterator[dict[str, Any]]:
    """The JSON lines of the log, in order: its rotated parts first (NAME.N ... NAME.1: a long
    batch's log is rotated past cellctl.logfile.MAX_BYTES), then NAME."""
    rotated: list[Path] = []
    while (older := log_file.with_name(f"{log_file.name}.{len(rotated) + 1}")).exists():
        rotated.append(older)
    for part in [*reversed(rotated), log_file]:
        with part.open(encoding="utf-8") as lines:
            for line in lines:
                if line.strip():
                    yield json.loads(line)


def _stamp(record: dict[str, Any]) -> float:
    return datetime.datetime.fromisoformat(record["timestamp"]).timestamp()


def steps_timed(log_file: Path) -> tuple[int, float]:
    """(steps ended, seconds from the first StepStarted to BatchEnded) of the run logged."""
    first: float | None = None
    ended = 0
    for record in _log_events(log_file):
        kind = record.get("event")
        if kind == "StepStarted" and first is None:
            first = _stamp(record)
        elif kind == "StepEnded":
            ended += 1
        elif kind == "BatchEnded" and first is not None:
            if record.get("state") != "Complete":
                raise RuntimeError(f"the batch ended {record.get('state')}, not Complete")
            return ended, _stamp(record) - first
    raise RuntimeError(f"no StepStarted ... BatchEnded in {log_file}: has the log format changed?")


def ours_rate(cell: Path, recipe: Path, folder: Path, tag: str) -> tuple[float, float]:
    """(steps/s, CPU seconds per step) of one headless `cellctl run` of the recipe."""
    log_file = folder / f"run-{tag}.log"
    cpu0 = time.process_time()
    _run_cli(cell, recipe, log_file)
    cpu = time.process_time() - cpu0  # the whole command, parsing included: an upper bound
    steps, seconds = steps_timed(log_file)
    return steps / seconds, cpu / steps


def bare_rate(cell: Path, recipe: Path) -> tuple[float, float]:
    """(steps/s, CPU seconds per step) of the Controller as `cellctl run` builds it
    (cellctl.testing.controller_for: operator, interlocks, events to its listeners) with nothing
    recorded: no event lines, the log at WARNING, as the peer records nothing."""
    import asyncio
    import logging

    from cellctl.control.events import BatchEnded, Event, StepStarted
    from cellctl.control.machine import State
    from cellctl.testing import controller_for

    marks: list[tuple[float, float]] = []
    steps: list[StepStarted] = []

    def mark(event: Event) -> None:
        if isinstance(event, StepStarted):
            steps.append(event)
        if isinstance(event, BatchEnded) or (isinstance(event, StepStarted) and not marks):
            marks.append((time.perf_counter(), time.process_time()))

    async def batch() -> State:
        async with controller_for(cell, recipe) as harness:
            harness.controller.listeners.append(mark)
            return (await harness.run_batch()).state

    logger = logging.getLogger("cellctl")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        state = asyncio.run(batch())
    finally:
        logger.setLevel(level)
    if state is not State.COMPLETE:
        raise RuntimeError(f"the batch ended {state}, not Complete")
    (wall0, cpu0), (wall1, cpu1) = marks
    return len(steps) / (wall1 - wall0), (cpu1 - cpu0) / len(steps)


class Peer:
    """bluesky's RunEngine, set up once (`RunEngine({})`, no subscriptions), moving an ophyd
    soft signal with `bps.mv`."""

    def __init__(self) -> None:
        from bluesky import RunEngine
        from ophyd import Signal

        self.engine = RunEngine({})
        self.signal = Signal(name="axis_position", value=0)

    def rate(self, steps: int) -> tuple[float, float]:
        """(steps/s, CPU seconds per step) of `steps` moves, timed inside the plan."""
        import bluesky.plan_stubs as bps

        marks: list[tuple[float, float]] = []

        def plan() -> Iterator[Any]:
            marks.append((time.perf_counter(), time.process_time()))
            for i in range(steps):
                yield from bps.mv(self.signal, position(i))
            marks.append((time.perf_counter(), time.process_time()))

        self.engine(plan())
        (wall0, cpu0), (wall1, cpu1) = marks
        if self.signal.get() != position(steps - 1):
            raise RuntimeError("the peer's signal did not reach the last position")
        return steps / (wall1 - wall0), (cpu1 - cpu0) / steps


def rates_child(steps: int, rounds: int, folder: Path) -> dict[str, Any]:
    """Figure 4's child: both sides, interleaved, `rounds` times each; every round's rate."""
    cell, recipe = write_files(folder, steps)
    _run_cli(cell, write_files(folder, 10)[1], folder / "warm.log")  # imports, first-call costs
    peer = Peer()
    peer.rate(10)
    ours: list[tuple[float, float]] = []
    bare: list[tuple[float, float]] = []
    theirs: list[tuple[float, float]] = []
    for i in range(rounds):
        ours.append(ours_rate(cell, recipe, folder, str(i)))
        theirs.append(peer.rate(steps))
        bare.append(bare_rate(cell, recipe))
    return {"ours": ours, "bare": bare, "peer": theirs}


def _vm(field: str) -> int:
    """A VmXXX line of /proc/self/status, in bytes."""
    for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def rss_child(kind: str, steps: int, folder: Path) -> dict[str, Any]:
    """Figure 9's child: RSS after one headless `cellctl run` of `steps` set steps, distinct
    or repeated (`kind`)."""
    cell, recipe = (write_files if kind == DISTINCT else write_repeat)(folder, steps)
    log_file = folder / f"rss-{steps}.log"
    _run_cli(cell, recipe, log_file)
    rss, hwm = _vm("VmRSS"), _vm("VmHWM")  # before the log is read back
    ended = sum(record.get("event") == "StepEnded" for record in _log_events(log_file))
    return {"steps": steps, "ended": ended, "rss": rss, "hwm": hwm}


def _where(frames: Any) -> str:
    """A traceback as its innermost frame, and the project's own frame that led there."""
    # Frames run from the oldest to the innermost.
    here = [f"{f.filename.replace(str(ROOT) + os.sep, '')}:{f.lineno}" for f in reversed(frames)]
    ours = next((h for h in here if h.startswith(("cellctl", "drivers"))), None)
    return here[0] if ours is None or ours == here[0] else f"{here[0]} from {ours}"


def _top(after: Any, before: Any, count: int = 5) -> list[str]:
    """The `count` places whose live memory grew most from `before` to `after`."""
    import tracemalloc

    own = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(own).compare_to(before.filter_traces(own), "traceback")
    return [
        f"{s.size_diff / 1e6:+.1f} MB in {s.count_diff:+d} blocks at {_where(s.traceback)}"
        for s in stats[:count]
    ]


def trace_child(kind: str, steps: int, folder: Path) -> dict[str, Any]:
    """Where the memory of a `steps`-step run of a `kind` recipe goes (tracemalloc): the recipe
    parsed and kept (`prepare`, as `run` calls it), then the batch run on it (`BatchRun`, as
    `run` runs it)."""
    import asyncio
    import tracemalloc

    from rich.console import Console

    from cellctl.cli.batch import BatchRun, RunOptions, prepare
    from cellctl.logsetup import configure_logging

    cell, recipe = (write_files if kind == DISTINCT else write_repeat)(folder, steps)
    configure_logging(folder / f"trace-{steps}.log")
    options = RunOptions(recipe=recipe, cell=cell)
    tracemalloc.start()  # one frame: deeper tracebacks make a 10,000-step trace take minutes
    start = tracemalloc.take_snapshot()
    prepared = prepare(options)
    parsed_peak = tracemalloc.get_traced_memory()[1]
    parsed = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()
    with open(os.devnull, "w", encoding="utf-8") as sink:
        out = Console(file=sink, highlight=False, soft_wrap=True, emoji=False)
        code = asyncio.run(BatchRun(options, prepared, out).run())
    if code != 0:
        raise RuntimeError(f"the traced batch exited {code}")
    batch_peak = tracemalloc.get_traced_memory()[1]
    ran = tracemalloc.take_snapshot()
    return {
        "steps": steps,
        "parse_peak": parsed_peak,
        "parse_kept": sum(s.size_diff for s in parsed.compare_to(start, "filename")),
        "parse_top": _top(parsed, start),
        "batch_peak": batch_peak,
        "batch_kept": sum(s.size_diff for s in ran.compare_to(parsed, "filename")),
        "batch_top": _top(ran, parsed),
    }


def _child(*args: str) -> dict[str, Any]:
    """Run `python -m bench.peer ARGS` from the project root; the JSON it wrote."""
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as tmp:
        folder = Path(tmp)
        result = folder / "result.json"
        done = subprocess.run(
            [sys.executable, "-m", "bench.peer", *args, str(folder), str(result)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT,
            check=False,
        )
        if done.returncode != 0 or not result.exists():
            raise RuntimeError(f"bench.peer {' '.join(args)} failed:\n{done.stderr[-4000:]}")
        data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
        return data


def figure_rates(quick: bool) -> list[Figure]:
    """Figure 4: our steps/s against the peer's, best round of each, same child process: as
    `cellctl run` records (the goal), and with nothing recorded on either side (context)."""
    steps, rounds = STEPS[quick], ROUNDS[quick]
    data = _child("rates", str(steps), str(rounds))
    # Best round of each side: the one least disturbed by the shared machine's load.
    ours, bare, theirs = (max(data[side]) for side in ("ours", "bare", "peer"))
    every = "; ".join(
        f"{a:.0f}/{c:.0f} vs {b:.0f}"
        for (a, _), (c, _), (b, _) in zip(data["ours"], data["bare"], data["peer"], strict=True)
    )
    run_detail = (
        f"{steps} set steps on a memory cell, headless `cellctl run` (an event line and a JSON "
        f"log line per event) vs RunEngine({{}}) bps.mv on an ophyd Signal, nothing subscribed; "
        f"best of {rounds} interleaved rounds (steps/s run/bare vs peer: {every}); CPU/step: "
        f"peer {theirs[1] * 1e6:.0f} us, ours {ours[1] * 1e6:.0f} us with the recipe's parsing; "
        f"{journal_where()}"
    )
    run = rate_figure(
        4,
        "memory set steps vs bluesky (cellctl run)",
        ours[0],
        theirs[0],
        "RunEngine bps.mv",
        3.0,
        detail=run_detail,
    )
    bare_detail = (
        f"the Controller as `run` builds it (controller_for), no event lines, log at WARNING: "
        f"CPU/step {bare[1] * 1e6:.0f} us; no journal (controller_for records nothing)"
    )
    equal = rate_figure(
        4,
        "memory set steps vs bluesky (nothing recorded)",
        bare[0],
        theirs[0],
        "RunEngine bps.mv",
        3.0,
        detail=bare_detail,
    )
    return [
        Figure(**{**run.to_json(), "extra": data}),
        Figure(**{**equal.to_json(), "goal": "context", "passed": None}),
    ]


def _rss_sizes(kind: str) -> dict[int, dict[str, Any]]:
    """Figure 9's children for one kind of recipe, one per batch size; checks each ran its
    steps (a repeat block ends too: one StepEnded more)."""
    rss = {size: _child("rss", kind, str(size)) for size in RSS_SIZES}
    for size, got in rss.items():
        if got["ended"] < size:
            raise RuntimeError(f"the {kind} {size}-step batch ended {got['ended']} steps")
    return rss


def _growth(rss: dict[int, dict[str, Any]]) -> tuple[float, float, float, str]:
    """(MB after 10, 1,000 and 10,000 steps, the words on growth and peaks)."""
    small, mid, large = (rss[size]["rss"] / 1e6 for size in RSS_SIZES)
    hwm = ", ".join(f"{size}: {rss[size]['hwm'] / 1e6:.0f}" for size in RSS_SIZES)
    words = (
        f"{large / mid - 1:+.1%} over 1,000 steps ({(large - mid) * 1e6 / 9_000:.0f} B/step); "
        f"10 steps {small:.1f} MB; peak VmHWM MB {hwm}"
    )
    return small, mid, large, words


def figure_rss(quick: bool) -> list[Figure]:
    """Figure 9: RSS after 1,000 and 10,000 steps, one child each, beside 1,000 steps: a small
    recipe repeated (what running costs: the goal's "flat") and distinct steps (what the
    recipe's size costs as well: its parsed model is kept for the run)."""
    goal = f"< {RSS_GOAL_MB:g} MB, <= +{FLAT_GROWTH:.0%} over 1,000"
    rss = _rss_sizes(REPEATED)
    _, mid, large, words = _growth(rss)
    flat = large / mid - 1 <= FLAT_GROWTH and large < RSS_GOAL_MB
    run = Figure(
        9,
        "RSS after 10,000 repeated set steps (running)",
        large,
        "MB",
        mid,
        "1,000 repeated steps",
        mid / large,
        goal,
        flat,
        f"{steps_words(REPEATED)}; {words}; {journal_where()}",
        {"rss": rss, "journal": journal_where()},
    )
    rss = _rss_sizes(DISTINCT)
    _, mid, large, words = _growth(rss)
    # Where the memory goes: a traced child (quick: 1,000 steps, tracing is slow).
    steps = 1_000 if quick else 10_000
    traced = _child("trace", DISTINCT, str(steps))
    kept = traced["parse_kept"] / steps
    lines = [
        f"the recipe's model kept: {kept:.0f} B/step traced ({kept * 9_000 / 1e6:.1f} MB of the "
        f"{large - mid:.1f} MB from 1,000 to 10,000 steps; the rest is the parse's freed memory "
        "the allocator keeps)",
        f"parsing {steps} steps: peak {traced['parse_peak'] / 1e6:.1f} MB traced, "
        f"{traced['parse_kept'] / 1e6:.1f} MB kept",
        *traced["parse_top"],
        f"the batch: peak {traced['batch_peak'] / 1e6:.1f} MB traced, "
        f"{traced['batch_kept'] / 1e6:+.1f} MB kept",
        *traced["batch_top"],
    ]
    distinct = Figure(
        9,
        "RSS after 10,000 distinct set steps (recipe size)",
        large,
        "MB",
        mid,
        "1,000 distinct steps",
        mid / large,
        f"< {RSS_GOAL_MB:g} MB (flat: the running figure)",
        large < RSS_GOAL_MB,
        f"{steps_words(DISTINCT)}; {words}; {journal_where()}\n       " + "\n       ".join(lines),
        {"rss": rss, "trace": traced},
    )
    return [run, distinct]


def steps_words(kind: str) -> str:
    """How figure 9's recipe of `kind` is made."""
    if kind == DISTINCT:
        return "N distinct set steps (the recipe grows with N), a child per N"
    return "`repeat: N` over one set step, a child per N"


def measure(quick: bool) -> list[Figure]:
    """Figures 4 and 9."""
    return [*figure_rates(quick), *figure_rss(quick)]


def main(argv: list[str]) -> int:
    """The children: `rates STEPS ROUNDS`, `rss KIND STEPS` or `trace KIND STEPS`, then FOLDER
    RESULT (KIND: distinct or repeat)."""
    kind, *numbers, folder, result = argv
    if kind == "rates":
        done = rates_child(int(numbers[0]), int(numbers[1]), Path(folder))
    elif kind == "rss":
        done = rss_child(numbers[0], int(numbers[1]), Path(folder))
    else:
        done = trace_child(numbers[0], int(numbers[1]), Path(folder))
    Path(result).write_text(json.dumps(done), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
