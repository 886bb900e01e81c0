"""`cellctl run` records its batch (memory devices, journals in tmp_path): batch_started first
and batch_ended last with the exit code, every write's intent on disk before the device sees
it, a journal that cannot be opened stops the run before any device is touched, one that fails
mid-batch holds the cell with the safe state (exit 6), safe-state writes never wait for the
journal, and the summary names the batch, its head hash and the report command."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shlex
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.cli.batch import BatchRun, RunOptions, prepare
from cellctl.cli.views.summary import BatchIdentity, record_lines
from cellctl.control.controller import Controller
from cellctl.control.events import SafeStateWritten, WaitProgress
from cellctl.control.journal.record import build_record
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import JournalStore, JournalUnavailable, NewRow, SqliteStore
from cellctl.control.journal.verify import verify
from cellctl.control.journal.writer import JournalWriter
from cellctl.control.machine import Command, State
from cellctl.control.operator import ScriptedOperator
from cellctl.testing import cli, wait_until
from drivers.base import Driver, Value
from drivers.config import MemoryConfig
from drivers.memory import MemoryDriver
from drivers.points import MemoryPoint, Point
from tests.support import journal_rows
from tests.test_controller import DEADLINE, Bench, opened

CELL = """\
cell: jbench
devices:
  m: {driver: memory}
tags:
  m.x:    {device: m, type: int32, access: rw}
  m.y:    {device: m, type: int32, access: rw}
  m.run:  {device: m, type: bool, access: rw}
  m.done: {device: m, type: bool}
safe_state:
  m.run: false
"""
RECIPE = """\
recipe: r
version: 2
parameters:
  n: {type: int, default: 5, min: 0, max: 100}
steps:
  - {id: a, set: {m.x: n, m.run: true}}
  - {id: b, set: {m.y: 7}}
  - {id: c, wait: "m.x == n", timeout: 2s}
"""
# Held in its last step until the test lets it end.
WAITING = RECIPE.replace('wait: "m.x == n"', 'wait: "m.done"')


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """(recipe, cell) files of a memory cell."""
    (tmp_path / "cell.yaml").write_text(CELL)
    (tmp_path / "r.yaml").write_text(RECIPE)
    return tmp_path / "r.yaml", tmp_path / "cell.yaml"


class Witness(MemoryDriver):
    """A memory device that reads the journal (a second connection) as each write reaches it,
    and can make the journal fail from then on."""

    def __init__(self, journal: Path, fail_at: tuple[str, Value] | None = None) -> None:
        super().__init__(MemoryConfig("m"))
        self.journal = journal
        #: (key, value, the intent and confirmation rows on disk when it arrived)
        self.seen: list[tuple[str, Value, list[tuple[str, dict[str, Any]]]]] = []
        self.fail_at = fail_at
        self.store: FailingStore | None = None

    async def write(self, point: Point, value: Value) -> None:
        """Look at the journal first, then take the write."""
        assert isinstance(point, MemoryPoint)
        with contextlib.closing(sqlite3.connect(self.journal)) as conn:
            rows = conn.execute(
                "SELECT kind, body FROM rows WHERE kind IN ('intent', 'confirmed') ORDER BY seq"
            ).fetchall()
        self.seen.append((point.key, value, [(k, json.loads(b)) for k, b in rows]))
        if self.store is not None and self.fail_at == (point.key, value):
            self.store.failing = "disk I/O error (the test's)"
        await super().write(point, value)


class FailingStore:
    """The JournalStore protocol over a real SqliteStore, whose appends fail once `failing`
    names a reason, and block while `stall` is clear."""

    def __init__(self, store: SqliteStore) -> None:
        self.inner = store
        self.failing: str | None = None
        self.stall = threading.Event()
        self.stall.set()
        self.blocked = threading.Event()

    @property
    def where(self) -> str:
        """The inner store's path."""
        return self.inner.where

    def append(self, rows: Sequence[NewRow]) -> list[JournalRow]:
        """Fail or block as told, else append."""
        if not self.stall.is_set():
            self.blocked.set()
            self.stall.wait(10)
        if self.failing is not None:
            raise JournalUnavailable(self.where, self.failing)
        return self.inner.append(rows)

    def rows(self, batch: str | None = None) -> Iterator[JournalRow]:
        """The inner store's rows."""
        return self.inner.rows(batch)

    def batches(self) -> list[str]:
        """The inner store's batches."""
        return self.inner.batches()

    def close(self) -> None:
        """Close the inner store."""
        self.inner.close()


class Rigged(BatchRun):
    """`cellctl run` on the test's own memory device (and, when given, a failing store)."""

    def __init__(self, options: RunOptions, device: Witness, *, failing: bool = False) -> None:
        self.printed = io.StringIO()
        super().__init__(options, prepare(options), Console(file=self.printed, width=400))
        self.device = device
        self.failing = failing

    def _drivers(self, cell: Cell) -> dict[str, Driver]:
        return {"m": self.device}

    def _open_store(self, path: Path) -> JournalStore:
        store = super()._open_store(path)
        if not self.failing:
            return store
        assert isinstance(store, SqliteStore)
        self.device.store = FailingStore(store)
        return self.device.store


def options(files: tuple[Path, Path], journal: Path, **more: Any) -> RunOptions:
    recipe, cell = files
    return RunOptions(recipe=recipe, cell=cell, journal=journal, safe_wait=5, **more)


@pytest.mark.asyncio
async def test_a_batch_is_recorded_and_each_intent_is_on_disk_before_its_write(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    device = Witness(journal)
    run = Rigged(options(files, journal, operator="ana", params=["n=9"]), device)
    async with asyncio.timeout(DEADLINE):
        code = await run.run()
    assert code == exitcodes.OK
    rows = journal_rows(journal)
    batch = rows[0].batch
    assert batch is not None and all(r.batch == batch for r in rows)
    assert rows[0].kind == Kind.BATCH_STARTED and rows[-1].kind == Kind.BATCH_ENDED
    started = rows[0].data()
    assert {k: started[k] for k in ("cell", "recipe", "version", "parameters", "operator")} == {
        "cell": "jbench",
        "recipe": "r",
        "version": 2,
        "parameters": {"n": 9},
        "operator": "ana",
    }
    assert started["mode"] == "Production" and started["pid"] > 0 and started["host"]
    assert len(started["cell_sha256"]) == 64 and len(started["recipe_sha256"]) == 64
    ended = rows[-1].data()
    assert (ended["state"], ended["exit_code"], ended["parts"]) == ("Complete", 0, None)
    kinds = [r.kind for r in rows]
    assert Kind.STEP_STARTED in kinds and Kind.STATE in kinds
    # No confirmed row without its intent (Resetting's writes are bracketed too).
    intents = {r.data()["intent"]: r for r in rows if r.kind == Kind.INTENT}
    confirmed = [r for r in rows if r.kind == Kind.CONFIRMED]
    assert len(confirmed) == len(intents) and all(
        c.data()["intent"] in intents and c.data()["ok"] and intents[c.data()["intent"]].seq < c.seq
        for c in confirmed
    )
    # Every write the device took (Resetting's safe state, then a and b): its intent was on
    # disk before it arrived, and its confirmation was not.
    assert [(k, v) for k, v, _ in device.seen] == [
        ("m.run", False),
        ("m.x", 9),
        ("m.run", True),
        ("m.y", 7),
    ]
    for key, value, on_disk in device.seen:
        kind, body = on_disk[-1]
        assert (kind, body["tag"], body["value"]) == ("intent", key, value)
    by_tag = {intents[i].data()["tag"]: intents[i].data()["step_id"] for i in intents}
    assert by_tag["m.y"] == "b"
    # The summary: the batch, its parameters and operator, the head hash, the commands.
    out = run.printed.getvalue().splitlines()
    assert f"batch: {batch}" in out and "parameters: n=9" in out and "operator: ana" in out
    assert f"head hash: {rows[-1].hash}" in out
    assert f"report: cellctl report {batch} --journal {journal}" in out
    assert any(line.startswith("started: ") for line in out)
    store = SqliteStore(journal, readonly=True)
    try:
        assert verify(store, batch=batch, head=rows[-1].hash).ok
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["not a journal", "a folder"])
def test_a_journal_that_cannot_be_opened_stops_the_run_before_any_device(
    files: tuple[Path, Path], tmp_path: Path, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.sqlite"
    if kind == "a folder":
        journal.mkdir()
    else:
        journal.write_bytes(b"these are not the bytes of an SQLite database" * 100)
    device = Witness(journal)
    run = Rigged(options(files, journal), device)
    with pytest.raises(JournalUnavailable) as raised:
        asyncio.run(run.run())
    assert raised.value.exit_code == exitcodes.JOURNAL and str(journal) in str(raised.value)
    assert device.seen == [] and device.writes == []
    assert not device._connected  # never connected, let alone written
    # The command says so: exit 6, the path and the reason.
    recipe, cell = files
    result = cli(capsys, "run", recipe, "--cell", cell, "--journal", journal)
    assert result.exit_code == exitcodes.JOURNAL
    assert str(journal) in result.err and result.out == ""


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("fail_at", "then"),
    [
        # From step a's first write on: m.run := true has no intent on disk, it is not sent
        # (nor is anything after it but the safe state); the step fails, the cell holds.
        (("m.x", 5), [("m.x", 5), ("m.run", False)]),
        # From step b's write on, while nothing waits for the journal (step c waits for
        # m.done): the writer's failure alone holds the cell, with the safe state.
        (("m.y", 7), [("m.x", 5), ("m.run", True), ("m.y", 7), ("m.run", False)]),
    ],
)
async def test_a_journal_failing_mid_batch_holds_with_the_safe_state_and_exits_6(
    files: tuple[Path, Path],
    tmp_path: Path,
    fail_at: tuple[str, Value],
    then: list[tuple[str, Value]],
) -> None:
    recipe, _ = files
    recipe.write_text(WAITING)
    journal = tmp_path / "j.sqlite"
    device = Witness(journal, fail_at=fail_at)
    run = Rigged(options(files, journal), device, failing=True)
    async with asyncio.timeout(DEADLINE):
        code = await run.run()
    assert code == exitcodes.JOURNAL
    assert run.controller is not None and run.controller.state is State.HELD
    assert [(k, v) for k, v, _ in device.seen][1:] == then
    assert device.device_value("m.run") is False
    out = run.printed.getvalue()
    assert "outcome: Held" in out
    assert "journal cannot be written: disk I/O error (the test's)" in out
    assert "refused" not in out  # the step's failure and the journal's ask one Hold between them
    assert f"journal: {journal}: NOT fully written" in out
    assert "head hash" not in out
    assert "rows could not be written" in out  # the rows it lost, counted
    # What reached the disk before the failure still verifies.
    store = SqliteStore(journal, readonly=True)
    try:
        assert verify(store).ok
    finally:
        store.close()


@pytest.mark.asyncio
async def test_a_safe_state_write_does_not_wait_for_a_stalled_journal(tmp_path: Path) -> None:
    rig = Bench()
    store = FailingStore(SqliteStore(tmp_path / "j.sqlite"))
    writer = JournalWriter(store)
    recorder = BatchRecorder(writer, "B-test")
    rig.ctl = Controller(
        rig.ctl.loaded,
        {},
        rig.io,
        ScriptedOperator({}),
        listener=rig._heard,
        comm_devices=["line", "press", "aux", "arm"],
        ledger=recorder,
    )
    rig.ctl.listeners.append(recorder.event)
    try:
        async with opened(rig):
            await rig.to_execute()  # the recipe waits in its last step: its writes recorded
            await writer.flush()
            store.stall.clear()  # from now on the journal does not answer
            rig.device("safety.ok", False)  # the light curtain: Hold, the safe state
            await wait_until(lambda: rig.of(SafeStateWritten) != [], DEADLINE, "safe state")
            # Written to the devices while its row waits for the stalled journal (the writer
            # takes rows nobody waits for within its LINGER).
            await wait_until(store.blocked.is_set, DEADLINE, "the writer in the stalled journal")
            assert Kind.SAFE_STATE not in [r.kind for r in journal_rows(tmp_path / "j.sqlite")]
            assert rig.drivers["line"].device_value("line.run") is False
            assert rig.drivers["press"].device_value("press.go") is False
            assert await rig.settle(State.HELD) is State.HELD
            # A recipe write would wait for its intent: Unhold's restores are held back.
            rig.device("safety.ok", True)
            rig.forget_writes()
            unhold = asyncio.ensure_future(rig.ctl.command(Command.UNHOLD))
            await wait_until(lambda: rig.state() is State.UNHOLDING, DEADLINE, "Unholding")
            assert rig.writes("line") == []  # its intent is not on disk yet
            store.stall.set()
            await unhold
            await wait_until(lambda: rig.writes("line") != [], DEADLINE, "the restores")
            await rig.ctl.command(Command.ABORT)
            await rig.settle(State.ABORTED)
    finally:
        store.stall.set()
        writer.close()
    rows = journal_rows(tmp_path / "j.sqlite")
    kinds = [r.kind for r in rows]
    assert Kind.SAFE_STATE in kinds and Kind.TRIP in kinds  # appended once it could be


def test_unhold_is_refused_while_the_journal_cannot_be_written() -> None:
    async def scenario() -> None:
        rig = Bench()

        class Broken(BatchRecorder):
            def unavailable(self) -> str | None:
                return "the disk is full"

        class NoWriter:
            failed = "the disk is full"

        recorder = Broken(NoWriter(), "B-x")  # type: ignore[arg-type]
        rig.ctl = Controller(
            rig.ctl.loaded, {}, rig.io, ScriptedOperator({}), listener=rig._heard, ledger=recorder
        )
        async with opened(rig):
            with pytest.raises(Exception, match="the journal cannot be written: the disk is full"):
                await rig.ctl.command(Command.RESET)
            assert rig.state() is State.STOPPED and rig.writes() == []

    asyncio.run(scenario())


def test_wait_progress_is_not_recorded(tmp_path: Path) -> None:
    """The recorder's listener queues rows only for journaled events (WaitProgress is not)."""

    async def scenario() -> int:
        writer = JournalWriter(SqliteStore(tmp_path / "j.sqlite"))
        recorder = BatchRecorder(writer, "B-y")
        recorder.event(WaitProgress(path="1", step_id="a", condition="x", values={}, met=False))
        backlog = writer.backlog
        writer.close()
        return backlog

    assert asyncio.run(scenario()) == 0


# The arm is an OPC UA device in the file (methods need one) and a memory driver here.
CALL_CELL = CELL.replace(
    "devices:\n", 'devices:\n  arm: {driver: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}\n'
) + (
    "methods:\n"
    '  arm.pick: {device: arm, node: "ns=2;s=Arm", method: "2:Pick", args: {slot: int32},'
    " result: bool}\n"
)
CALL_RECIPE = """\
recipe: c
version: 1
steps:
  - {id: pick, call: arm.pick, args: {slot: 3}, timeout: 2s}
  - {id: again, call: arm.pick, args: {slot: 4}, timeout: 2s}
"""


class Armed(Rigged):
    """`cellctl run` with an arm (memory) whose Pick reads the journal when it is called, and
    fails (no answer) for slot 4."""

    def __init__(self, options: RunOptions, device: Witness) -> None:
        super().__init__(options, device)
        self.arm = MemoryDriver(MemoryConfig("arm"))
        #: (slot, the call_intent rows on disk when the call reached the arm)
        self.picks: list[tuple[int, list[dict[str, Any]]]] = []

        async def pick(slot: int) -> bool:
            with contextlib.closing(sqlite3.connect(device.journal)) as conn:
                rows = conn.execute("SELECT body FROM rows WHERE kind = 'call_intent'").fetchall()
            self.picks.append((slot, [json.loads(b) for (b,) in rows]))
            if slot == 4:
                raise RuntimeError("gripper stalled")
            return True

        self.arm.register_method("Pick", pick)

    def _drivers(self, cell: Cell) -> dict[str, Driver]:
        return {"m": self.device, "arm": self.arm}


@pytest.mark.asyncio
async def test_a_call_is_recorded_as_an_intent_on_disk_before_it_is_made(
    tmp_path: Path,
) -> None:
    (tmp_path / "cell.yaml").write_text(CALL_CELL)
    (tmp_path / "c.yaml").write_text(CALL_RECIPE)
    journal = tmp_path / "j.sqlite"
    run = Armed(options((tmp_path / "c.yaml", tmp_path / "cell.yaml"), journal), Witness(journal))
    async with asyncio.timeout(DEADLINE):
        await run.run()
    # Each call found its own intent on disk when it reached the device.
    assert [(slot, [b["args"] for b in on_disk]) for slot, on_disk in run.picks] == [
        (3, [{"slot": 3}]),
        (4, [{"slot": 3}, {"slot": 4}]),
    ]
    rows = journal_rows(journal)
    intents = [r for r in rows if r.kind == Kind.CALL_INTENT]
    assert [(r.data()["method"], r.data()["step_id"]) for r in intents] == [
        ("arm.pick", "pick"),
        ("arm.pick", "again"),
    ]
    first, second = (r.data()["intent"] for r in intents)
    confirmed = {r.data()["intent"]: r.data() for r in rows if r.kind == Kind.CONFIRMED}
    assert confirmed[first]["ok"] is True
    # The call that got no answer: the device may have acted, and the record says so.
    assert confirmed[second]["ok"] is False and confirmed[second]["unknown"] is True
    assert "gripper stalled" in confirmed[second]["error"]
    assert [r.data()["args"] for r in rows if r.kind == Kind.CALL] == [{"slot": 3}]
    store = SqliteStore(journal, readonly=True)
    try:
        assert verify(store).ok
    finally:
        store.close()
    # The report reads them as calls: no write of its own, the unanswered one a fault.
    record = build_record(str(rows[0].batch), rows)
    assert {w.tag for w in record.writes} == {"m.run"}  # Resetting's only
    texts = [(e.kind, e.text, e.flag) for e in record.timeline if e.text.startswith("call arm")]
    assert texts[:2] == [
        (Kind.CALL_INTENT, 'call arm.pick({"slot": 3}) (intent)', None),
        (Kind.CALL, 'call arm.pick({"slot": 3}) -> true', None),
    ]
    unknown = [t for k, t, flag in texts if k == Kind.CONFIRMED and flag == "fault"]
    assert len(unknown) == 1 and "outcome UNKNOWN" in unknown[0] and "gripper stalled" in unknown[0]


@pytest.mark.asyncio
async def test_a_write_stopped_by_a_trip_while_its_intent_was_committed_is_not_sent(
    tmp_path: Path,
) -> None:
    """Not sent, and recorded so: a write of unknown outcome would make `resume` ask about it."""
    rig = Bench()
    writer = JournalWriter(SqliteStore(tmp_path / "j.sqlite"))

    class Tripping(BatchRecorder):
        async def intent(
            self, tag: str, value: Value, path: str | None, step_id: str | None
        ) -> object:
            token = await super().intent(tag, value, path, step_id)
            if tag == "press.heat" and path is not None:  # the light curtain, meanwhile
                rig.device("safety.ok", False)
                await wait_until(lambda: rig.state() is not State.EXECUTE, DEADLINE, "the trip")
            return token

    recorder = Tripping(writer, "B-trip")
    rig.ctl = Controller(
        rig.ctl.loaded, {}, rig.io, ScriptedOperator({}), listener=rig._heard, ledger=recorder
    )
    try:
        async with opened(rig):
            await rig.ctl.command(Command.RESET)
            await rig.settle(State.IDLE)
            await rig.ctl.command(Command.START)
            assert await rig.settle(State.HELD) is State.HELD
            assert ("press.heat", True) not in rig.writes("press")
            await rig.ctl.command(Command.ABORT)
            await rig.settle(State.ABORTED)
    finally:
        writer.close()
    rows = journal_rows(tmp_path / "j.sqlite")
    [intent] = [
        r.data()["intent"]
        for r in rows
        if r.kind == Kind.INTENT and r.data()["tag"] == "press.heat" and r.data()["path"]
    ]
    heat = [r.data() for r in rows if r.kind == Kind.CONFIRMED and r.data()["intent"] == intent]
    assert len(heat) == 1 and not heat[0]["ok"], heat
    assert heat[0]["unknown"] is False and heat[0]["error"].startswith("not sent"), heat


def test_the_summarys_commands_copy_whole_with_a_journal_path_holding_a_space() -> None:
    journal = Path("/home/ana/my journals/j.sqlite")
    record = BatchIdentity("B-1", journal, {}, "ana", 0.0)
    lines = record_lines(record, 1.0, "ab" * 32, None)
    commands = [line.split(": ", 1)[1] for line in lines if line.startswith(("verify:", "report:"))]
    assert len(commands) == 2
    for command in commands:
        words = shlex.split(command)
        assert words[words.index("--journal") + 1] == str(journal), command
