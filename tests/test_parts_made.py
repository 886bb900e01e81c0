"""Parts made (the recipe's `parts: {counter: TAG}`) on memory devices: the counter read before
Start and after the end, recorded (a notice row with the start, batch_ended with parts and the
counter's start and end) and said in the summary; a counter that wrapped, one that cannot be read
at the end, a resume that counts from the start the crashed run recorded; the field's problems
located in the recipe file."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.cli.batch import BatchRun, RunOptions, prepare
from cellctl.cli.resume_run import ResumeRun, find_unfinished
from cellctl.control.journal.events import intent_body
from cellctl.control.journal.recorder import file_sha256
from cellctl.control.journal.rows import JournalRow, Kind, canonical_json, format_at
from cellctl.control.journal.store import NewRow, SqliteStore
from cellctl.control.parts import recorded_start
from cellctl.control.resume import resume_point
from cellctl.recipe import check_recipe_file
from cellctl.testing import cli
from drivers.base import Driver, Value
from drivers.config import MemoryConfig
from drivers.memory import MemoryDriver
from drivers.points import Point
from tests.support import journal_rows
from tests.test_controller import DEADLINE
from tests.test_resume_cli import DEMO, add, started

CELL = """\
cell: counted
devices:
  m: {driver: memory}
tags:
  m.count: {device: m, type: uint16}
  m.go:    {device: m, type: bool, access: rw}
  m.force: {device: m, type: float32, access: rw}
  m.scaled: {device: m, type: int32, scale: 0.1, access: rw}
  m.last:  {device: m, type: bool, access: rw}
"""
# Makes `n` parts: the device counts each rising m.go, as a press counts its cycles.
COUNTING = """\
recipe: r
version: 1
parameters:
  n: {type: int, default: 3, min: 1, max: 10}
parts: {counter: m.count}
steps:
  - repeat: n
    steps:
      - {id: press, set: {m.go: true}}
      - {id: release, set: {m.go: false}}
  - {id: last, set: {m.last: true}}
"""


class Counted(MemoryDriver):
    """The memory device `m`: its uint16 counter m.count, at `count`, counts each m.go written
    true (and wraps); the counter BAD from the write of m.last on when `break_at_last` (a
    sensor that fails as the batch ends)."""

    def __init__(self, count: int, *, break_at_last: bool = False) -> None:
        super().__init__(MemoryConfig("m"))
        self.set_device_value("m.count", count)
        self.break_at_last = break_at_last

    async def write(self, point: Point, value: Value) -> None:
        """Take the write; break the counter when told."""
        await super().write(point, value)
        key = getattr(point, "key", None)
        if key == "m.go" and value is True:
            count = self.device_value("m.count")
            assert isinstance(count, int)
            self.set_device_value("m.count", (count + 1) % 2**16)
        if self.break_at_last and getattr(point, "key", None) == "m.last":
            self.set_bad("m.count", "counter sensor lost (the test's)")


class Rig(BatchRun):
    """`cellctl run` on the test's memory device."""

    def __init__(self, options: RunOptions, device: MemoryDriver) -> None:
        self.printed = io.StringIO()
        super().__init__(options, prepare(options), Console(file=self.printed, width=400))
        self.device = device

    def _drivers(self, cell: Cell) -> dict[str, Driver]:
        return {"m": self.device}


def files(tmp_path: Path, recipe: str = COUNTING) -> tuple[Path, Path]:
    (tmp_path / "cell.yaml").write_text(CELL)
    (tmp_path / "r.yaml").write_text(recipe)
    return tmp_path / "r.yaml", tmp_path / "cell.yaml"


async def run_counted(tmp_path: Path, device: MemoryDriver, recipe: str = COUNTING) -> Rig:
    recipe_file, cell_file = files(tmp_path, recipe)
    journal = tmp_path / "j.sqlite"
    options = RunOptions(recipe=recipe_file, cell=cell_file, journal=journal, safe_wait=5)
    run = Rig(options, device)
    async with asyncio.timeout(DEADLINE):
        assert await run.run() == exitcodes.OK, run.printed.getvalue()
    return run


def ended_parts(journal: Path) -> dict[str, Any]:
    ended = journal_rows(journal)[-1]
    assert ended.kind == Kind.BATCH_ENDED
    body = ended.data()
    return {k: body[k] for k in ("parts", "parts_counter", "parts_start", "parts_end")}


@pytest.mark.asyncio
async def test_parts_made_are_the_count_from_before_start_to_the_end(tmp_path: Path) -> None:
    run = await run_counted(tmp_path, Counted(120))
    journal = tmp_path / "j.sqlite"
    assert ended_parts(journal) == {
        "parts": 3,
        "parts_counter": "m.count",
        "parts_start": 120,
        "parts_end": 123,
    }
    assert "parts: 3 (m.count 120 -> 123)" in run.printed.getvalue().splitlines()
    # The start is on record before Start (resume counts from it).
    rows = journal_rows(journal)
    notice = next(
        i for i, r in enumerate(rows) if r.kind == Kind.NOTICE and "parts_counter" in r.data()
    )
    assert rows[notice].data()["start"] == 120
    starting = next(
        i for i, r in enumerate(rows) if r.kind == Kind.STATE and r.data()["target"] == "Starting"
    )
    assert notice < starting


@pytest.mark.asyncio
async def test_a_counter_that_wrapped_counts_modulo_its_range(tmp_path: Path) -> None:
    # A uint16 from 65535 to 2 made 3.
    run = await run_counted(tmp_path, Counted(65535))
    assert ended_parts(tmp_path / "j.sqlite")["parts"] == 3
    assert "parts: 3 (m.count 65535 -> 2)" in run.printed.getvalue().splitlines()


@pytest.mark.asyncio
async def test_a_counter_unreadable_at_the_end_gives_no_parts_and_says_why(
    tmp_path: Path,
) -> None:
    run = await run_counted(tmp_path, Counted(7, break_at_last=True))
    ended = journal_rows(tmp_path / "j.sqlite")[-1].data()
    assert (ended["parts"], ended["parts_start"], ended["parts_end"]) == (None, 7, None)
    why = "m.count could not be read at the end: m m.count: counter sensor lost (the test's)"
    assert ended["parts_unknown"] == why
    assert f"parts: unknown ({why})" in run.printed.getvalue().splitlines()


@pytest.mark.asyncio
async def test_a_counter_unreadable_at_the_start_is_recorded_and_the_batch_runs(
    tmp_path: Path,
) -> None:
    device = Counted(5)
    device.set_bad("m.count", "counter sensor lost (the test's)")
    run = await run_counted(tmp_path, device)
    rows = journal_rows(tmp_path / "j.sqlite")
    start = next(r.data() for r in rows if r.kind == Kind.NOTICE and "parts_counter" in r.data())
    assert (start["start"], start["level"]) == (None, "warning")
    assert start["error"] == "m m.count: counter sensor lost (the test's)"
    ended = rows[-1].data()
    assert (ended["state"], ended["parts"], ended["parts_start"]) == ("Complete", None, None)
    why = "m.count could not be read at the start: m m.count: counter sensor lost (the test's)"
    assert ended["parts_unknown"] == why
    assert f"parts: unknown ({why})" in run.printed.getvalue().splitlines()


@pytest.mark.asyncio
async def test_a_recipe_without_a_counter_says_nothing_of_parts(tmp_path: Path) -> None:
    plain = COUNTING.replace("parts: {counter: m.count}\n", "")
    run = await run_counted(tmp_path, Counted(0), plain)
    assert journal_rows(tmp_path / "j.sqlite")[-1].data()["parts"] is None
    assert "parts:" not in run.printed.getvalue()


class ResumeRig(ResumeRun):
    """`cellctl resume` on the test's memory device."""

    device: MemoryDriver

    def _drivers(self, cell: Cell) -> dict[str, Driver]:
        return {"m": self.device}


@pytest.mark.asyncio
async def test_a_resumed_batch_counts_from_the_start_its_first_run_recorded(
    tmp_path: Path,
) -> None:
    # Crashed after round 1 (120 -> 121): resumed, rounds 2 and 3 make 2 more.
    recipe_file, cell_file = files(tmp_path)
    journal = tmp_path / "j.sqlite"
    started = {
        "cell": "counted",
        "recipe": "r",
        "version": 1,
        "recipe_file": str(recipe_file),
        "recipe_sha256": file_sha256(recipe_file),
        "cell_file": str(cell_file),
        "parameters": {"n": 3},
        "operator": "ann",
        "pid": 999_999_999,  # no such process: it crashed
        "host": socket.gethostname(),
    }
    start = {"text": "start", "level": "info", "parts_counter": "m.count", "start": 120}
    batch = "B-crashed"
    rows = [
        (Kind.BATCH_STARTED, started),
        (Kind.NOTICE, start),
        (Kind.STEP_STARTED, {"path": "1", "step_id": None}),
        (Kind.STEP_STARTED, {"path": "1.1", "step_id": "press", "round": 1}),
        (Kind.INTENT, {"intent": "w1", "tag": "m.go", "value": True, "path": "1.1"}),
        (Kind.CONFIRMED, {"intent": "w1", "ok": True, "error": None}),
        (Kind.STEP_ENDED, {"path": "1.1", "step_id": "press", "outcome": "done"}),
        (Kind.STEP_STARTED, {"path": "1.2", "step_id": "release", "round": 1}),
        (Kind.INTENT, {"intent": "w2", "tag": "m.go", "value": False, "path": "1.2"}),
        (Kind.CONFIRMED, {"intent": "w2", "ok": True, "error": None}),
        (Kind.STEP_ENDED, {"path": "1.2", "step_id": "release", "outcome": "done"}),
    ]
    store = SqliteStore(journal)
    try:
        at = format_at(time.time() - 60)
        store.append([NewRow(batch, at, kind, canonical_json(body)) for kind, body in rows])
    finally:
        store.close()
    found, recorded = find_unfinished(journal, None)
    options = RunOptions(
        recipe=recipe_file, cell=cell_file, params=["n=3"], journal=journal, safe_wait=5
    )
    prepared = prepare(options)
    point = resume_point(prepared.loaded.recipe, batch, recorded)
    run = ResumeRig(
        options, prepared, Console(file=io.StringIO()), found, point, "continue", recorded
    )
    run.device = Counted(121)
    async with asyncio.timeout(DEADLINE):
        code = await run.run()
    assert code == exitcodes.OK
    assert run.device.device_value("m.count") == 123
    assert ended_parts(journal) == {
        "parts": 3,
        "parts_counter": "m.count",
        "parts_start": 120,
        "parts_end": 123,
    }


@pytest.mark.parametrize(
    ("field", "where", "code", "says"),
    [
        (
            "parts: {counter: m.cont}",
            (5, 18),
            "unknown-tag",
            "parts: counter m.cont: unknown tag 'm.cont' (did you mean 'm.count'?)",
        ),
        (
            "parts: {counter: m.force}",
            (5, 18),
            "type-mismatch",
            "not float32",
        ),
        (
            "parts: {counter: m.scaled}",
            (5, 18),
            "type-mismatch",
            "the tag has a scale or offset",
        ),
        (
            "parts: m.count",
            (5, 8),
            "bad-value",
            "the counter is written as a mapping: parts: {counter: m.count}",
        ),
        ("parts:", (5, 1), "bad-value", "no parts counter given"),
        ("parts: {counter: m.count, per: 2}", (5, 27), "unknown-key", "unknown key 'per'"),
    ],
)
def test_a_bad_parts_counter_is_located_in_the_recipe_file(
    tmp_path: Path, field: str, where: tuple[int, int], code: str, says: str
) -> None:
    recipe_file, cell_file = files(tmp_path, COUNTING.replace("parts: {counter: m.count}", field))
    problems = check_recipe_file(recipe_file, cell_file)
    assert len(problems) == 1, problems
    problem = problems[0]
    assert (problem.file, problem.line, problem.col) == (str(recipe_file), *where)
    assert problem.code == code and says in problem.message, problem


def test_plan_and_schema_name_the_parts_counter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe_file, cell_file = files(tmp_path)
    code, out, err = cli(capsys, "plan", recipe_file, "--cell", cell_file)
    assert code == 0, err
    assert "parts counted:   by m.count (its count at the end - at Start)" in out.splitlines()
    code, out, err = cli(capsys, "plan", recipe_file, "--cell", cell_file, "--json")
    assert code == 0 and json.loads(out)["parts_counter"] == "m.count", err
    code, out, err = cli(capsys, "schema", "recipe")
    counter = json.loads(out)["$defs"]["PartsCounter"]
    assert counter["required"] == ["counter"] and counter["additionalProperties"] is False


def test_the_recorded_start_is_the_counters_notice_or_none_and_why() -> None:
    def notice(body: dict[str, Any]) -> JournalRow:
        return JournalRow(1, "B", format_at(0), Kind.NOTICE, canonical_json(body), "", "", None)

    other = notice({"text": "x", "level": "info", "parts_counter": "m.other", "start": 9})
    assert recorded_start([other], "m.count") == (
        None,
        "none on record (the batch stopped before Start)",
    )
    read = notice({"text": "x", "level": "info", "parts_counter": "m.count", "start": 41})
    assert recorded_start([other, read], "m.count") == (41, None)
    failed = {"text": "x", "level": "warning", "parts_counter": "m.count", "start": None}
    assert recorded_start([notice({**failed, "error": "timed out"})], "m.count") == (
        None,
        "timed out",
    )


def test_a_resume_on_fresh_simulators_says_the_count_died_with_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recipe = tmp_path / "press-fit.yaml"
    recipe.write_bytes((DEMO / "press-fit.yaml").read_bytes())
    journal = tmp_path / "j.sqlite"
    add(journal, "B-sim", Kind.BATCH_STARTED, started(recipe, sim=True))
    start = {"text": "x", "level": "info", "parts_counter": "press.cycles", "start": 0}
    add(journal, "B-sim", Kind.NOTICE, start)
    add(journal, "B-sim", Kind.INTENT, intent_body("w1", "conveyor.run", True, "1", "feed"))
    result = cli(capsys, "resume", "--journal", journal, "--sim", "--choice", "abort")
    assert result.exit_code == exitcodes.BATCH_NOT_COMPLETE, result
    why = (
        "press.cycles could not be read at the start: its count was on the simulators that "
        "died with the crashed process (resume --sim runs on fresh ones)"
    )
    assert f"parts: unknown ({why})" in result.out.splitlines(), result.out
