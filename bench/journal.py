"""Figures 10-11: what the journal costs.

10. One durable intent: `JournalWriter.durable()` of an intent row (queued from the loop,
    committed by the writer thread with `synchronous=FULL`, the wait resolved on the loop) beside
    a bare sqlite3 INSERT and COMMIT of a row of the same size, in WAL mode with
    `synchronous=FULL`, on the same disk (a temporary folder in the nearest existing folder
    above the user's default journal: bench/state.py's `disk_folder`), in the same run, the two
    alternating.
11. `set` steps with the journal on (each write waits for its intent's commit) over Modbus TCP
    through drivers.sim.faultproxy adding 2 ms to every answer (server to client: 2 ms more per
    round trip, as a device on a real link answers), beside raw pymodbus writing the same values
    through the same proxy; and the same on plain loopback as context, where a durable intent
    costs more than the write itself. Batches run as bench/steps.py runs them (its helpers),
    with `--journal` in that folder on disk.

`python -m bench.journal proxy TARGET_PORT LATENCY` is the proxy, in a child process of its own
(see `_proxied`), so that the bench process pays only for its own client.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from bench.childproc import ROOT
from bench.figure import Figure
from bench.state import disk_folder, filesystem, isolated, journal_where

#: Seconds added by the proxy to every answer of figure 11's link.
LATENCY = 0.002
#: Figure 10's goal: a durable intent within this many times a bare commit.
INTENT_GOAL = 1.2
#: Figure 11's goal: the journaled step rate at least this share of raw pymodbus's.
STEP_GOAL = 0.9
#: Figure 10: durable intents (then bare commits) timed together, alternating.
BLOCK = 25
#: Seconds the proxy child has to start and say its port.
PROXY_START = 15.0


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does (quick or full)."""

    commits: int  # figure 10: durable intents (and bare commits) per trial
    trials: int  # figure 10: trials (commits // BLOCK alternating blocks each)
    small: int  # figure 11: steps of the batch subtracted
    big: int  # figure 11: steps of the batch measured (with the latency)
    loopback_big: int  # figure 11's context: steps of the batch measured on loopback
    step_trials: int  # figure 11: trials of each side, alternating


QUICK = Sizes(commits=150, trials=3, small=20, big=220, loopback_big=520, step_trials=2)
FULL = Sizes(commits=500, trials=5, small=50, big=1050, loopback_big=2050, step_trials=3)


# --- figure 10: one durable intent ---------------------------------------------------------


async def _alternating(folder: Path, sizes: Sizes) -> tuple[list[float], list[float], list[float]]:
    """Seconds per durable intent, per bare commit and per `SqliteStore.append` of one row on
    this thread, one value per block of BLOCK of each, the blocks alternating (the machine's
    load then weighs on all alike). The third tells the store's own cost (BEGIN IMMEDIATE, the
    last row's hash, the new hash) from the hand-off to the writer thread and back.

    Ours: `JournalWriter.durable()` of an intent row, one after another (as a recipe's writes
    wait for theirs). The reference: a bare INSERT + COMMIT (autocommit: one transaction each)
    of a row of the same size, WAL mode, synchronous=FULL, in another file in the same folder.
    """
    from cellctl.control.journal.events import intent_body
    from cellctl.control.journal.rows import Kind, format_at
    from cellctl.control.journal.store import NewRow, SqliteStore
    from cellctl.control.journal.writer import JournalWriter

    writer = JournalWriter(SqliteStore(folder / "ours.sqlite"))
    store = SqliteStore(folder / "store.sqlite")
    bare = sqlite3.connect(folder / "bare.sqlite", isolation_level=None)
    ours: list[float] = []
    theirs: list[float] = []
    alone: list[float] = []
    try:
        bare.execute("PRAGMA journal_mode = WAL")
        bare.execute("PRAGMA synchronous = FULL")
        bare.execute(
            "CREATE TABLE rows (seq INTEGER PRIMARY KEY, batch TEXT, at TEXT, kind TEXT, "
            "body TEXT, prev TEXT, hash TEXT, mac TEXT)"
        )
        insert = "INSERT INTO rows (batch, at, kind, body, prev, hash) VALUES (?, ?, ?, ?, ?, ?)"
        row = _intent_row()
        batch = row[0]
        n = 0
        for block in range(-1, sizes.commits * sizes.trials // BLOCK):  # block -1: warm-up
            started = time.perf_counter()
            for _ in range(BLOCK):
                n += 1
                body = intent_body(f"i{n}", "plc.value", n, f"steps[0][{n}]", "put")
                await writer.durable(batch, Kind.INTENT, body)
            middle = time.perf_counter()
            for _ in range(BLOCK):
                bare.execute(insert, row)
            ended = time.perf_counter()
            for _ in range(BLOCK):
                store.append([NewRow(batch, format_at(time.time()), Kind.INTENT, row[3])])
            last = time.perf_counter()
            if block >= 0:
                ours.append((middle - started) / BLOCK)
                theirs.append((ended - middle) / BLOCK)
                alone.append((last - ended) / BLOCK)
    finally:
        bare.close()
        store.close()
        writer.close()
    return ours, theirs, alone


def _intent_row() -> tuple[str, ...]:
    """A row of the size of figure 10's intents: batch, at, kind, body, prev, hash."""
    from cellctl.control.journal.events import intent_body
    from cellctl.control.journal.rows import canonical_json

    body = canonical_json(intent_body("i100", "plc.value", 100, "steps[0][100]", "put"))
    batch, at = "B-20261206-140000-bench", "2026-12-06T14:00:00.000000Z"
    return (batch, at, "intent", body, "0" * 64, "f" * 64)


def _intent_figure(folder: Path, sizes: Sizes) -> Figure:
    """Figure 10 from the medians of the alternating blocks."""
    ours, bare, alone = asyncio.run(_alternating(folder, sizes))
    mine, theirs = statistics.median(ours), statistics.median(bare)
    store = statistics.median(alone)
    ratio = theirs / mine
    fs = filesystem(folder)
    detail = (
        f"durable intent {mine * 1e3:.3f} ms, bare INSERT+COMMIT {theirs * 1e3:.3f} ms "
        f"({mine / theirs:.2f} x) on {fs} at {folder.parent}; the store alone, no thread, "
        f"{store * 1e3:.3f} ms ({store / theirs:.2f} x): the rest is the hand-off to the writer "
        f"thread and back to the loop; {len(ours)} alternating blocks of {BLOCK} each, medians"
    )
    figure = Figure(
        10,
        "journal: one durable intent",
        mine * 1e3,
        "ms",
        theirs * 1e3,
        "bare sqlite3 commit, WAL, FULL",
        ratio,
        f"<= {INTENT_GOAL:g} x bare commit",
        mine <= INTENT_GOAL * theirs,
        detail,
    )
    figure.extra.update(
        {
            "ours_ms": [t * 1e3 for t in ours],
            "bare_ms": [t * 1e3 for t in bare],
            "store_alone_ms": [t * 1e3 for t in alone],
            "block": BLOCK,
            "filesystem": fs,
        }
    )
    return figure


# --- figure 11: set steps with the journal on, over a link with latency -------------------


def _proxy_main(target: int, latency: float) -> None:
    """The proxy child: forward 127.0.0.1:free to 127.0.0.1:`target`, `latency` s added to
    every answer; print the port, run until stdin closes."""
    from drivers.sim.faultproxy import FaultProxy

    async def serve() -> None:
        proxy = FaultProxy("127.0.0.1", target)
        proxy.latency(latency)
        await proxy.start()
        print(proxy.port, flush=True)
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, sys.stdin.read)  # until the parent closes it
        finally:
            await proxy.stop()

    asyncio.run(serve())


@contextlib.contextmanager
def _proxied(target: int, latency: float) -> Iterator[int]:
    """The proxy in a child process; its port."""
    command = [sys.executable, "-m", "bench.journal", "proxy", str(target), str(latency)]
    child = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stdout is not None
        line = _line_within(child, PROXY_START)
        yield int(line)
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _line_within(child: subprocess.Popen[str], within: float) -> str:
    """The child's first line of output, or RuntimeError after `within` seconds."""
    import selectors

    assert child.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(child.stdout, selectors.EVENT_READ)
        if not selector.select(within):
            raise RuntimeError(f"the proxy child said nothing within {within:g} s")
    line = child.stdout.readline().strip()
    if not line:
        raise RuntimeError(f"the proxy child ended (exit {child.wait()}) before saying its port")
    return line


def _journal_on() -> bool:
    """Whether `cellctl run` takes --journal (the journal wired into runs)."""
    shown = subprocess.run(
        [sys.executable, "-m", "cellctl", "run", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, COLUMNS="200"),
        check=False,
    )
    return "--journal" in shown.stdout


def _step_trials(
    served: object, port: int, recipe: Path, sizes: Sizes, big: int, journal: Path
) -> tuple[list[float], list[float]]:
    """Per step of ours (journal on) and per raw write, seconds, alternating trials, against
    the Modbus server at `port` (the proxy's or the simulator's)."""
    from bench import steps

    assert isinstance(served, steps.Served)
    cell = served.folder / f"cell-{port}.yaml"
    cell.write_text(
        steps.CELL.format(modbus=port, opcua=served.opcua_port, poll=round(steps.POLL * 1000))
    )
    there = replace(served, cell_file=cell, modbus_port=port)
    work = steps.Sizes(small=sizes.small, big=big, trials=1, changes=0)
    ours: list[float] = []
    raw: list[float] = []
    steps._cellctl_run(there, recipe, sizes.small, journal)  # warm-up: imports, first connect
    for _ in range(sizes.step_trials):
        ours.append(steps._per_step(there, recipe, work, journal).wall)
        raw.append(asyncio.run(steps._raw_modbus_writes(port, big - sizes.small)).wall)
    return ours, raw


def _step_figures(folder: Path, sizes: Sizes) -> list[Figure]:
    """Figure 11: the step rate with the journal on through the proxy (goal), and on loopback
    (context)."""
    from bench import steps

    journal = folder / "steps.sqlite"
    figures: list[Figure] = []
    with steps._served() as served:
        recipe = steps._recipe(
            served, "set-journal", steps.SET_RECIPE.format(name="j", tag="plc.value")
        )
        with _proxied(served.modbus_port, LATENCY) as proxy_port:
            ours, raw = _step_trials(served, proxy_port, recipe, sizes, sizes.big, journal)
        loop_ours, loop_raw = _step_trials(
            served, served.modbus_port, recipe, sizes, sizes.loopback_big, journal
        )
    intent = _last_intent_cost(journal)
    for context, mine, theirs, big in (
        (False, ours, raw, sizes.big),
        (True, loop_ours, loop_raw, sizes.loopback_big),
    ):
        wall, raw_wall = statistics.median(mine), statistics.median(theirs)
        ratio = raw_wall / wall
        link = "plain loopback" if context else f"+{LATENCY * 1e3:g} ms per answer (fault proxy)"
        detail = (
            f"per step {wall * 1e3:.2f} ms with the journal on, raw write {raw_wall * 1e3:.2f} ms "
            f"({big - sizes.small} steps, {len(mine)} trial(s), medians); "
            f"{journal_where(journal)}, {intent}"
        )
        if context:
            detail += (
                "; context, no goal: on loopback a durable intent (one fsync) costs more than the"
                " write itself"
            )
        figure = Figure(
            11,
            f"set steps, journal on, {link}",
            1 / wall,
            "steps/s",
            1 / raw_wall,
            "raw pymodbus",
            ratio,
            "" if context else f">= {STEP_GOAL:g} x raw pymodbus",
            None if context else ratio >= STEP_GOAL,
            detail,
        )
        figure.extra.update(
            {
                "ours_ms": [t * 1e3 for t in mine],
                "raw_ms": [t * 1e3 for t in theirs],
                "latency_ms_per_answer": 0.0 if context else LATENCY * 1e3,
                "steps": big - sizes.small,
            }
        )
        figures.append(figure)
    return figures


def _last_intent_cost(journal: Path) -> str:
    """How many intent rows the runs wrote (the proof that the journal was on)."""
    if not journal.exists():
        return "NO JOURNAL WRITTEN"
    with contextlib.closing(sqlite3.connect(journal)) as conn:
        intents = conn.execute("SELECT count(*) FROM rows WHERE kind = 'intent'").fetchone()[0]
    return f"{intents} intent rows journaled"


def measure(quick: bool) -> list[Figure]:
    """Figure 10, and figure 11 once `cellctl run` takes --journal."""
    sizes = QUICK if quick else FULL
    with disk_folder("cellctl-bench-journal-") as folder:
        figures = [_intent_figure(folder, sizes)]
        if _journal_on():
            figures += _step_figures(folder, sizes)
        else:
            print("figure 11: skipped, `cellctl run` has no --journal yet", flush=True)
        return figures


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "proxy":
        _proxy_main(int(sys.argv[2]), float(sys.argv[3]))
    else:
        with isolated():  # as `python -m bench` runs it: no run touches the user's journal
            for shown in measure("--quick" in sys.argv):
                print(shown)
