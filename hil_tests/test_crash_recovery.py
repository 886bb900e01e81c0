"""Crash recovery, end to end: a child `cellctl run` of a press recipe on a Modbus TCP press
simulator, through a fault proxy, killed with SIGKILL at points chosen from outside, with no
hook in the product:

- the proxy holds a write request (the device never sees it), or forwards it and holds its
  answer (the device did it; the controller never hears so), and the child is killed then;
- a row is visible in the journal from a second connection (an intent, a confirmation, a
  step's end), and the child is killed then.

Each time: `cellctl resume` comes back Held (exit 3) at the right step, saying a write it
cannot know the outcome of is unknown; every row seen before the kill is still there, with its
hash; `audit verify` passes; `resume --choice skip` ends the batch Complete without sending
again a write whose outcome was unknown: the proxy's count of the press's cycle_start := true
requests that reached the device, and the press's own cycle count, are the witnesses.

A handful of points run in the default suite; all of them (>= 50) in the extended tier
(marker `extended`: `pytest -m extended`, which `.ci/run` runs after the default suite).
"""

from __future__ import annotations

import contextlib
import sqlite3
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cellctl.testing import Served, cli, serve, wait_until
from drivers.sim.faultproxy import FaultProxy, RequestAction
from hil_tests.run_support import edit_cell, run_child
from hil_tests.test_run_faults import Lines, target_of

CELLS = Path(__file__).parent / "cells" / "crash"
PARTS = 3
#: The press cell's unit id, and its cycle_start coil.
UNIT, CYCLE_START = 2, 0
#: Seconds within which the child reaches a point, and a resume ends.
WITHIN = 30.0

#: The batch's writes, in order, as (function code, address, value) of their requests:
#: Resetting's (the safe state: cycle_start false, FC 5), the setpoint (FC 16, two registers),
#: per part cycle_start false, true, false, then the setpoint 0; and the step of each.
SETPOINT, ON, OFF = (16, 0, None), (5, 0, 0xFF00), (5, 0, 0x0000)
WRITES = [OFF, SETPOINT, *([OFF, ON, OFF] * PARTS), SETPOINT]
STEPS = [None, "step 1 setpoint", *(["press-idle", "press", "release"] * PARTS), "step 3 done"]
ROUNDS = [None, None, *(part for part in range(1, PARTS + 1) for _ in range(3)), None]


@dataclass(frozen=True)
class Point:
    """Where the child is killed: at the nth write request (`hold` or `answer`), or once the
    nth row of a kind is visible in the journal (`row`)."""

    how: str  # hold, answer, row
    nth: int
    kind: str = ""  # the row kind (how == "row")

    @property
    def id(self) -> str:
        return f"{self.how}-{self.kind + '-' if self.kind else ''}{self.nth}"


def all_points() -> list[Point]:
    """Every point: each write held before and after the device, each intent, confirmation and
    step end seen on disk."""
    points = [Point(how, n) for n in range(1, len(WRITES) + 1) for how in ("hold", "answer")]
    # The rows of the last step: the batch may end between the row and the kill (then
    # nothing is left to resume, which is checked too).
    points += [Point("row", n, "intent") for n in range(1, len(WRITES) + 1)]
    points += [Point("row", n, "confirmed") for n in range(1, len(WRITES) + 1)]
    points += [Point("row", n, "step_ended") for n in range(1, 3 * PARTS + 4)]
    return points


#: The default suite's points: the first step's write held before the device, round 2's cycle
#: start held before it, round 1's after it, round 2's confirmed on disk, a step ended.
DEFAULT = [
    Point("hold", 2),
    Point("hold", 7),
    Point("answer", 4),
    Point("row", 7, "confirmed"),
    Point("row", 4, "step_ended"),
]
EXTENDED_POINTS = [p for p in all_points() if p not in DEFAULT]
assert len(all_points()) >= 50


def requests(chunk: bytes) -> Iterator[tuple[int, int, int, int | None]]:
    """(unit, function code, address, value) of each Modbus TCP request in a chunk; value is
    the coil or register value of FC 5 and 6, None otherwise."""
    while len(chunk) >= 8:
        length = struct.unpack(">H", chunk[4:6])[0]
        frame, chunk = chunk[: 6 + length], chunk[6 + length :]
        unit, code = frame[6], frame[7]
        address = struct.unpack(">H", frame[8:10])[0] if len(frame) >= 10 else -1
        value = (
            struct.unpack(">H", frame[10:12])[0] if code in (5, 6) and len(frame) >= 12 else None
        )
        yield unit, code, address, value


def is_write(code: int) -> bool:
    return code in (5, 6, 15, 16)


class Witness:
    """The proxy's request watcher: counts the write requests that reach the press, and holds
    the nth write (before or after the device) when told to."""

    def __init__(self, hold: RequestAction | None = None, nth: int = 0) -> None:
        self.hold, self.nth = hold, nth
        self.writes: list[tuple[int, int, int | None]] = []  # forwarded: (code, address, value)
        self.held = threading.Event()

    def __call__(self, chunk: bytes) -> RequestAction:
        if self.held.is_set():
            return RequestAction.HOLD  # the child is being killed: nothing more goes through
        for unit, code, address, value in requests(chunk):
            if unit != UNIT or not is_write(code):
                continue
            if self.hold is not None and len(self.writes) + 1 == self.nth:
                self.held.set()
                if self.hold is RequestAction.HOLD:
                    return RequestAction.HOLD
            self.writes.append((code, address, value))
            if self.held.is_set():
                return RequestAction.HOLD_ANSWER
        return RequestAction.FORWARD

    def starts(self) -> int:
        """cycle_start := true requests that reached the device."""
        return self.writes.count(ON)


@pytest.fixture(scope="module")
def press(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The press on its simulator (5 × real time: a cycle takes a quarter second)."""
    with serve(CELLS / "cell.yaml", tmp_path_factory.mktemp("press"), speed=5.0) as served:
        yield served


@pytest.fixture
def proxy(press: Served) -> Iterator[FaultProxy]:
    """A fault proxy in front of the press, on the simulators' loop."""
    proxy = FaultProxy(*target_of(press, "press"))
    press.loop.run(proxy.start())
    try:
        yield proxy
    finally:
        press.on_loop(proxy.clear)
        press.loop.run(proxy.stop())


def journal_rows(journal: Path) -> list[tuple[int, str, str]]:
    """(seq, kind, hash) of every row on disk, read by a connection of our own."""
    if not journal.exists():
        return []
    uri = f"file:{journal}?mode=ro"
    # closing(): an sqlite3 connection's own `with` only ends a transaction.
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
        try:
            found = conn.execute("SELECT seq, kind, hash FROM rows ORDER BY seq").fetchall()
        except sqlite3.OperationalError:  # the child is making the journal: no table yet
            return []
        return [(int(seq), str(kind), str(hash_)) for seq, kind, hash_ in found]


def crash_at(
    point: Point, press: Served, proxy: FaultProxy, folder: Path
) -> tuple[Path, Path, Witness]:
    """Run the recipe in a child through the proxy and SIGKILL it at `point`; the proxied
    cell file, the journal, and what reached the press. Returns once the child is gone."""
    cell = folder / "cell.yaml"
    edit_cell(press.cell_file, cell, "press", host=proxy.host, port=proxy.port)
    journal = folder / "journal.sqlite"
    hold = {"hold": RequestAction.HOLD, "answer": RequestAction.HOLD_ANSWER}.get(point.how)
    witness = Witness(hold, point.nth)
    press.on_loop(lambda: proxy.watch_requests(witness))
    child = run_child(CELLS / "crash.yaml", cell, PARTS, journal, folder)
    out = Lines(child)
    try:
        if hold is not None:
            wait_until(
                lambda: witness.held.is_set() or child.poll() is not None,
                WITHIN,
                f"write {point.nth} to be held",
            )
            if hold is RequestAction.HOLD_ANSWER and WRITES[point.nth - 1][0] == 5:
                # The device took it before the kill: its coil holds the value written.
                wanted = WRITES[point.nth - 1] == ON
                wait_until(
                    lambda: press.image_value("press", "press.cycle_start") is wanted,
                    WITHIN,
                    "the press to take the write",
                )
        else:
            wait_until(
                lambda: (
                    sum(k == point.kind for _, k, _ in journal_rows(journal)) >= point.nth
                    or child.poll() is not None
                ),
                WITHIN,
                f"row {point.nth} of kind {point.kind} on disk",
            )
        assert child.poll() is None, "the batch ended before its point:\n" + "\n".join(out.lines)
        child.kill()  # SIGKILL: no cleanup, nothing more written by the controller
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    press.on_loop(proxy.drop)  # the links it held go with it
    return cell, journal, witness


def resume_round(out: str) -> str:
    """The 'taken up Held ...' line of resume's output."""
    return next(line for line in out.splitlines() if "taken up Held" in line)


def check_point(
    point: Point,
    press: Served,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Crash at `point`, then check what resume does (the module docstring)."""
    cycles_before = int(press.image_value("press", "press.cycles"))
    cell, journal, crashed = crash_at(point, press, proxy, tmp_path)
    before = journal_rows(journal)
    assert before, "the batch_started row is on disk before any device is touched"
    # From here the proxy only counts: what reaches the device after the kill.
    after_kill = Witness()
    press.on_loop(lambda: proxy.watch_requests(after_kill))

    if "batch_ended" in (kind for _, kind, _ in before):
        # Killed after the batch ended (its safe state being confirmed): nothing to resume.
        nothing = cli(capsys, "resume", "--cell", cell, "--journal", journal)
        assert nothing.exit_code == 1 and "nothing to resume" in nothing.err, nothing
        assert cli(capsys, "audit", "verify", "--journal", journal).exit_code == 0
        assert crashed.starts() == PARTS
        return
    # A new batch is refused while this one is unfinished, naming it and the resume command.
    refused = cli(capsys, "run", CELLS / "crash.yaml", "--cell", cell, "--journal", journal)
    assert refused.exit_code == 7, refused
    assert "never ended" in refused.err and "cellctl resume" in refused.err

    held = cli(capsys, "resume", "--cell", cell, "--journal", journal)
    assert held.exit_code == 3, held
    assert "Traceback" not in held.out + held.err
    line = resume_round(held.out)
    if point.how in ("hold", "answer"):
        code, _, value = WRITES[point.nth - 1]
        step, part = STEPS[point.nth - 1], ROUNDS[point.nth - 1]
        if step is None:  # Resetting's: no step had started
            assert "Held at its first step" in line, line
        elif code == 5:  # a cycle_start write: its step, unknown
            shown = "true" if value else "false"
            assert f"unknown outcome: press.cycle_start := {shown} was sent or not" in held.out
            assert f"{step} (round {part} of step 2 cycle)" in line, line
        else:  # a setpoint: the first step or the last
            assert "unknown outcome: press.setpoint_kN" in held.out
            assert f"at {step}" in line, line
    assert "the batch stays unfinished and Held" in held.out
    assert after_kill.writes == [OFF], "only the safe state was written: " + str(after_kill.writes)

    ended = cli(capsys, "resume", "--cell", cell, "--journal", journal, "--choice", "skip")
    assert ended.exit_code == 0, ended
    assert "outcome: Complete" in ended.out

    # No committed row lost, none changed; the chain holds.
    assert set(before) <= set(journal_rows(journal))
    verified = cli(capsys, "audit", "verify", "--journal", journal)
    assert verified.exit_code == 0, verified

    # The witnesses: no cycle start sent twice for one part (skip was chosen for a write of
    # unknown outcome), no part pressed twice.
    starts = crashed.starts() + after_kill.starts()
    assert starts <= PARTS, (crashed.writes, after_kill.writes)
    if point.how == "hold" and WRITES[point.nth - 1] == ON:
        assert starts == PARTS - 1  # the part whose start never reached the press: skipped
    elif point.how in ("hold", "answer"):
        assert starts == PARTS, (crashed.writes, after_kill.writes)
    cycles = int(press.image_value("press", "press.cycles")) - cycles_before
    assert cycles <= PARTS, f"{cycles} press cycles for {PARTS} parts"


@pytest.mark.parametrize("point", DEFAULT, ids=lambda p: p.id)
def test_crash_and_resume(
    point: Point,
    press: Served,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_point(point, press, proxy, tmp_path, capsys)


@pytest.mark.extended
@pytest.mark.parametrize("point", EXTENDED_POINTS, ids=lambda p: p.id)
def test_crash_and_resume_everywhere(
    point: Point,
    press: Served,
    proxy: FaultProxy,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    check_point(point, press, proxy, tmp_path, capsys)
