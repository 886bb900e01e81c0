"""The service core (cellctl.service.core) on memory drivers: the command layer's roles, records,
loads, commands, modes, stepping and breakpoints, prompts, forces; its listeners, its standby
before the first batch, its close on SIGTERM, and a crashed batch taken up Held."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from cellctl.cell import Cell
from cellctl.cell.load import load_cell
from cellctl.control.events import Notice, WaitProgress
from cellctl.control.journal.record import history
from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import JournalUnavailable, SqliteStore
from cellctl.control.machine import Command
from cellctl.io.session import TagIO
from cellctl.service.api import (
    REQUIRED_ROLE,
    Accepted,
    Action,
    Caller,
    RefusalKind,
    Refused,
    Request,
    Role,
    ServiceStatus,
)
from cellctl.service.core import CellService, ServiceOptions
from cellctl.service.resuming import CannotTakeUp, resume_unfinished
from cellctl.testing import wait_until
from cellctl.values import TagValue
from drivers.base import Value
from drivers.config import MemoryConfig
from drivers.memory import MemoryDriver
from tests.support import journal_rows

DEADLINE = 3.0

CELL = """\
cell: bench
devices:
  line:  {driver: memory}
  press: {driver: memory}
tags:
  safety.ok:   {device: line, type: bool}
  line.jam:    {device: line, type: bool}
  line.done:   {device: line, type: bool}
  line.feed:   {device: line, type: uint16}
  line.run:    {device: line, type: bool, access: rw}
  line.speed:  {device: line, type: uint16, access: rw, max: 500}
  line.count:  {device: line, type: uint16, access: rw, max: 10}
  press.go:    {device: press, type: bool, access: rw}
interlocks:
  - {name: curtain, when: "not safety.ok", action: hold}
  - {name: jam, when: "line.jam", action: stop}
safe_state:
  line.run: false
  line.speed: 0
  press.go: false
"""
SAFE: dict[str, Value] = {"line.run": False, "line.speed": 0, "press.go": False}

RECIPES = {
    # Runs to Complete on its own.
    "simple": """\
recipe: simple
version: 1
parameters:
  speed: {type: int, default: 100, min: 1, max: 500}
steps:
  - {id: go, set: {line.run: true, line.speed: speed}}
  - {id: press, set: {press.go: true}}
  - {id: count, set: {line.count: 1}}
""",
    # Waits in Execute until the test's device sets line.done.
    "waiting": """\
recipe: waiting
version: 1
steps:
  - {id: go, set: {line.run: true, line.speed: 50}}
  - {id: finish, wait: line.done, timeout: 30s}
  - {id: press, set: {press.go: true}}
""",
    # A typed prompt, its answer written.
    "asking": """\
recipe: asking
version: 1
steps:
  - id: ask
    prompt: How many parts?
    answer: {name: n, type: int, min: 1, max: 5}
  - {id: put, set: {line.count: n}}
""",
    # A wait that times out: Held, Unhold asks retry or skip.
    "failing": """\
recipe: failing
version: 1
steps:
  - {id: early, wait: line.done, timeout: 100ms, on_error: {action: hold}}
  - {id: after, set: {press.go: true}}
""",
    # Does not validate: an unknown tag (located at its line).
    "broken": """\
recipe: broken
version: 1
steps:
  - {id: go, set: {line.nope: true}}
""",
}


def request(action: Action, **kw: Any) -> Request:
    """A request of `action` (the nine commands: `command=`)."""
    return Request(action, **kw)


def command(which: Command, choice: str = "") -> Request:
    """A PackML command request."""
    return Request(Action.COMMAND, command=which, choice=choice)


def caller(role: Role, user: str | None = None) -> Caller:
    """A caller of `role`, named after it unless `user` is given."""
    return Caller(user or f"{role.label}-user", role, via="test", peer="127.0.0.1:1")


ENGINEER = caller(Role.ENGINEER, "erin")
OPERATOR = caller(Role.OPERATOR, "otto")


@dataclass
class Rig:
    """A memory cell, its recipes beside its file, a journal, and the service over them."""

    folder: Path
    cell: Cell
    drivers: dict[str, MemoryDriver]
    io: TagIO
    service: CellService
    journal: Path

    async def submit(self, who: Caller, req: Request) -> Accepted | Refused:
        """The service's answer to `req` from `who`."""
        return await self.service.submit(who, req)

    async def ok(self, who: Caller, req: Request) -> str:
        """Submit, and fail the test unless it is accepted; the result."""
        answer = await self.submit(who, req)
        assert isinstance(answer, Accepted), f"{req.describe()}: {answer}"
        return answer.result

    async def refused(self, who: Caller, req: Request, kind: RefusalKind) -> str:
        """Submit, and fail the test unless it is refused with `kind`; the reason."""
        answer = await self.submit(who, req)
        assert isinstance(answer, Refused), f"{req.describe()}: accepted: {answer}"
        assert answer.kind is kind, f"{req.describe()}: {answer}"
        return answer.reason

    def state(self) -> str:
        """The state the status shows now."""
        return self.service.status().state

    async def settle(self, state: str, within: float = DEADLINE) -> None:
        """Wait until the status shows `state`."""
        await wait_until(lambda: self.state() == state, within, f"state {state}")

    def device(self, tag: str, value: Value) -> None:
        """The device side changes a value."""
        self.drivers[self.cell.tags[tag].device].set_device_value(tag, value)

    def on_device(self, tag: str) -> Value:
        """The value the device holds."""
        return self.drivers[self.cell.tags[tag].device].device_value(tag)

    async def loaded(self, name: str, *params: str, who: Caller = OPERATOR) -> str:
        """Load `name` and reset it to Idle; the batch id."""
        await self.ok(who, request(Action.LOAD, name=name, parameters=params))
        await self.ok(who, command(Command.RESET))
        await self.settle("Idle")
        return self.service.status().batch

    async def ended(self) -> None:
        """Wait until the batch's end is on record (its batch_ended row on disk)."""
        served = self.service.served
        assert served is not None
        await wait_until(
            lambda: served.finishing is not None and served.finishing.done(),
            DEADLINE,
            "the batch's end on record",
        )


@pytest_asyncio.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The service of a memory cell, open; closed after the test."""
    async with rigged(tmp_path) as made:
        yield made


def write_files(folder: Path) -> Path:
    """The cell file and the recipe files in `folder`; the cell file."""
    cell_file = folder / "cell.yaml"
    cell_file.write_text(CELL)
    for name, text in RECIPES.items():
        (folder / f"{name}.yaml").write_text(text)
    return cell_file


@contextlib.asynccontextmanager
async def rigged(folder: Path) -> AsyncIterator[Rig]:
    """A rig on `folder` (its files written the first time), its service open; closed after."""
    cell_file = folder / "cell.yaml"
    if not cell_file.exists():
        write_files(folder)
    cell = load_cell(cell_file)
    drivers = {d: MemoryDriver(MemoryConfig(d)) for d in cell.devices}
    drivers["line"].set_device_value("safety.ok", True)
    io = TagIO(cell, dict(drivers), list(cell.tags))
    journal = folder / "journal.sqlite"
    options = ServiceOptions(journal, folder, "none (loopback)", safe_wait=DEADLINE)
    service = CellService(cell, io, options)
    await io.connect()
    try:
        await service.open()
        try:
            yield Rig(folder, cell, drivers, io, service, journal)
        finally:
            await service.close()
    finally:
        await io.close()


async def rows_of(rig: Rig, *kinds: str) -> list[JournalRow]:
    """The journal's rows of `kinds` (every row when none is named), once every row queued
    so far is on disk (the service's own writer and the loaded batch's)."""
    writers = [rig.service.record.writer]  # the service's own record
    served = rig.service.served
    if served is not None and served.recorder.writer.on_failure is not None:
        writers.append(served.recorder.writer)
    for writer in writers:
        if writer is not None:
            with contextlib.suppress(JournalUnavailable):  # closed: on disk already
                await writer.flush()
    return [r for r in journal_rows(rig.journal) if not kinds or r.kind in kinds]


def snapshot(rig: Rig) -> tuple[Any, ...]:
    """What a refused request must leave as it was: the status (but its seq) and the devices."""
    status = rig.service.status()
    shown = (
        status.state,
        status.mode,
        status.batch,
        status.recipe,
        dict(status.forced),
        status.breakpoints,
        status.paused,
        status.prompt,
        status.trips,
        rig.service.served.controller.executor.step_mode if rig.service.served else None,
    )
    written = {n: d.writes.total for n, d in rig.drivers.items()}
    return shown, written


# -- roles -----------------------------------------------------------------------------------

#: One request of each action, in an order in which each is accepted from an engineer on a batch
#: loaded Idle in Maintenance, with a breakpoint at press, line.speed forced and a trip cleared
#: but not acknowledged (ANSWER: allowed, refused for its input: no prompt waits). Each one
#: would change something, so that a refusal that changed nothing shows.
EVERY_ACTION: list[tuple[Request, type[Accepted] | RefusalKind]] = [
    (request(Action.BREAK_RM, name="press"), Accepted),
    (request(Action.BREAK_ADD, name="count"), Accepted),
    (request(Action.UNFORCE, name="line.speed"), Accepted),
    (request(Action.FORCE, name="line.count", value="4"), Accepted),
    (request(Action.ACK), Accepted),
    (request(Action.ANSWER, name="ask", value="3"), RefusalKind.INPUT),
    (request(Action.STEP, value="run"), Accepted),
    (request(Action.MODE, value="Manual"), Accepted),
    (command(Command.STOP), Accepted),
    (request(Action.LOAD, name="simple"), Accepted),
]


def test_every_action_is_in_the_matrix() -> None:
    assert {r.action for r, _ in EVERY_ACTION} == set(Action) == set(REQUIRED_ROLE)


@pytest.mark.asyncio
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.label)
async def test_roles_against_every_action(rig: Rig, role: Role) -> None:
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    await rig.loaded("simple")
    rig.device("safety.ok", False)
    await wait_until(lambda: rig.service.status().trips != (), DEADLINE, "the trip")
    rig.device("safety.ok", True)
    await wait_until(lambda: "cleared" in str(rig.service.status().trips), DEADLINE, "cleared")
    await rig.ok(ENGINEER, request(Action.BREAK_ADD, name="press"))
    await rig.ok(ENGINEER, request(Action.FORCE, name="line.speed", value="7"))
    assert rig.state() == "Idle"
    who = caller(role)
    for req, expected in EVERY_ACTION:
        needed = REQUIRED_ROLE[req.action]
        before = snapshot(rig)
        answer = await rig.submit(who, req)
        if role >= needed:
            if expected is Accepted:
                assert isinstance(answer, Accepted), (role, req, answer)
                if req.action is Action.COMMAND:
                    await rig.settle("Stopped")
            else:
                assert isinstance(answer, Refused) and answer.kind is expected, (role, req, answer)
            continue
        assert isinstance(answer, Refused), (role, req, answer)
        assert answer.kind is RefusalKind.ROLE
        assert f"needs the {needed.label} role" in answer.reason
        assert f"{who.name} is {role.label}" in answer.reason
        assert snapshot(rig) == before, f"{req.describe()} refused to {role.label} changed things"
    # The refusals are on record with the user and their role.
    refused = [
        r.data() for r in await rows_of(rig, Kind.REFUSED) if r.data().get("refusal") == "role"
    ]
    expected_refusals = [r.describe() for r, _ in EVERY_ACTION if role < REQUIRED_ROLE[r.action]]
    assert [b["command"] for b in refused] == expected_refusals
    assert all(b["operator"] == who.name and b["role"] == role.label for b in refused)


# -- records ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_every_request_is_recorded_with_its_user(rig: Rig) -> None:
    viewer = caller(Role.VIEWER, "vera")
    # Before any batch: the service's own rows (no batch).
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    await rig.refused(
        viewer, request(Action.FORCE, name="line.run", value="true"), RefusalKind.ROLE
    )
    await rig.refused(OPERATOR, command(Command.RESET), RefusalKind.STATE)  # nothing loaded
    await rig.refused(ENGINEER, request(Action.FORCE, name="nope", value="1"), RefusalKind.INPUT)
    before = await rows_of(rig, Kind.COMMAND, Kind.REFUSED)
    assert [(r.batch, r.kind, r.data()["operator"]) for r in before] == [
        (None, Kind.COMMAND, "erin"),
        (None, Kind.REFUSED, "vera"),
        (None, Kind.REFUSED, "otto"),
        (None, Kind.REFUSED, "erin"),
    ]
    assert [r.data()["command"] for r in before] == [
        "mode Maintenance",
        "force line.run=true",
        "Reset",
        "force nope=1",
    ]
    # A batch loaded: its rows, accepted and refused, each with its user.
    batch = await rig.loaded("simple")
    mark = len(await rows_of(rig))
    await rig.refused(OPERATOR, command(Command.UNSUSPEND), RefusalKind.STATE)  # illegal in Idle
    await rig.refused(viewer, command(Command.START), RefusalKind.ROLE)
    await rig.refused(OPERATOR, command(Command.UNHOLD, "maybe"), RefusalKind.INPUT)
    await rig.ok(ENGINEER, request(Action.BREAK_ADD, name="press"))
    await rig.refused(ENGINEER, request(Action.BREAK_RM, name="count"), RefusalKind.INPUT)
    await rig.ok(ENGINEER, request(Action.FORCE, name="line.count", value="2"))
    rows = [r for r in (await rows_of(rig))[mark:] if r.kind in (Kind.COMMAND, Kind.REFUSED)]
    assert {r.batch for r in rows} == {batch}
    users = [(r.kind, r.data()["command"], r.data().get("operator")) for r in rows]
    assert users == [
        (Kind.COMMAND, "Unsuspend", "otto"),  # the batch's command layer hears it first
        (Kind.REFUSED, "Unsuspend", "otto"),  # the controller's refusal, with who
        (Kind.REFUSED, "Start", "vera"),
        (Kind.REFUSED, "Unhold (maybe)", "otto"),
        (Kind.COMMAND, "break add press", "erin"),
        (Kind.REFUSED, "break rm count", "erin"),
        (Kind.COMMAND, "force line.count=2", "erin"),
    ]
    # The force's own write row names the user too.
    writes = [r.data() for r in await rows_of(rig, Kind.WRITE)]
    assert [(w["tag"], w["operator"]) for w in writes] == [("line.count", "erin")]


# -- load ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_load_refuses_bad_input(rig: Rig) -> None:
    reason = await rig.refused(OPERATOR, request(Action.LOAD, name="simpel"), RefusalKind.INPUT)
    assert "no recipe 'simpel'" in reason and "did you mean 'simple'" in reason.lower()
    reason = await rig.refused(OPERATOR, request(Action.LOAD, name="broken"), RefusalKind.INPUT)
    assert f"{rig.folder / 'broken.yaml'}:4:" in reason and "line.nope" in reason
    reason = await rig.refused(
        OPERATOR, request(Action.LOAD, name="simple", parameters=("speed=900",)), RefusalKind.INPUT
    )
    assert "speed" in reason and "500" in reason
    reason = await rig.refused(
        OPERATOR, request(Action.LOAD, name="simple", parameters=("sped=9",)), RefusalKind.INPUT
    )
    assert "sped" in reason
    status = rig.service.status()
    assert (status.batch, status.state) == ("", "Stopped")
    assert "simple" in status.recipes and "broken" not in status.recipes
    assert await rows_of(rig, Kind.BATCH_STARTED) == []


@pytest.mark.asyncio
async def test_load_while_a_batch_runs_is_refused(rig: Rig) -> None:
    batch = await rig.loaded("waiting")
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Execute")
    reason = await rig.refused(OPERATOR, request(Action.LOAD, name="simple"), RefusalKind.STATE)
    assert f"batch {batch} is Execute" in reason
    assert rig.service.status().batch == batch
    rig.device("line.done", True)
    await rig.settle("Complete")


@pytest.mark.asyncio
async def test_two_batches_one_after_another(rig: Rig) -> None:
    first = await rig.loaded("simple", "speed=200")
    assert rig.service.status().parameters == {"speed": "200"}
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Complete")
    await rig.ended()
    assert rig.on_device("line.speed") == 200
    # Reset after Complete (on the first batch's record), then the next load starts Idle.
    await rig.ok(OPERATOR, command(Command.RESET))
    await rig.settle("Idle")
    result = await rig.ok(OPERATOR, request(Action.LOAD, name="simple"))
    second = rig.service.status().batch
    assert second != first and result.endswith("(Idle)")
    assert rig.state() == "Idle" and rig.service.status().legal == ("Start", "Stop", "Abort")
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Complete")
    await rig.ended()
    assert rig.on_device("line.speed") == 100
    # Each batch its own record, from batch_started to batch_ended.
    for batch in (first, second):
        kinds = [r.kind for r in await rows_of(rig) if r.batch == batch]
        assert kinds[0] == Kind.BATCH_STARTED and Kind.BATCH_ENDED in kinds
        assert kinds.count(Kind.BATCH_STARTED) == 1
    # The Reset after Complete is on the first batch's record, after its end.
    first_rows = [r for r in await rows_of(rig) if r.batch == first]
    ended_at = next(r.seq for r in first_rows if r.kind == Kind.BATCH_ENDED)
    after = [r.data() for r in first_rows if r.seq > ended_at]
    assert any(b.get("command") == "Reset" and b.get("operator") == "otto" for b in after)
    store = SqliteStore(rig.journal, readonly=True)
    try:
        listed = history(store)
    finally:
        store.close()
    assert [(s.batch, s.outcome, s.operator) for s in listed] == [
        (second, "Complete", "otto"),
        (first, "Complete", "otto"),
    ]


# -- commands --------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_packml_commands_go_through_commands(rig: Rig) -> None:
    await rig.refused(OPERATOR, command(Command.START), RefusalKind.STATE)  # nothing loaded
    await rig.ok(OPERATOR, request(Action.LOAD, name="waiting"))
    reason = await rig.refused(OPERATOR, command(Command.START), RefusalKind.STATE)
    assert "Stopped" in reason
    assert await rig.ok(OPERATOR, command(Command.RESET)) == "Resetting"
    await rig.settle("Idle")
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Execute")
    for which, acting, rest in [
        (Command.HOLD, "Holding", "Held"),
        (Command.UNHOLD, "Unholding", "Execute"),
        (Command.SUSPEND, "Suspending", "Suspended"),
        (Command.UNSUSPEND, "Unsuspending", "Execute"),
        (Command.HOLD, "Holding", "Held"),
        (Command.STOP, "Stopping", "Stopped"),  # Stop in Execute would finish the step first
        (Command.RESET, "Resetting", "Idle"),
    ]:
        result = await rig.ok(OPERATOR, command(which))
        assert result in (acting, rest), (which, result)
        await rig.settle(rest)
        if which in (Command.HOLD, Command.STOP):  # who stopped it, and from where
            reason = rig.service.status().stop_reason
            assert reason.startswith(f"{which} by {OPERATOR.name} ("), reason
    reason = await rig.refused(OPERATOR, command(Command.CLEAR), RefusalKind.STATE)
    assert "Idle" in reason
    await rig.ok(OPERATOR, command(Command.ABORT))
    await rig.settle("Aborted")
    await rig.ok(OPERATOR, command(Command.CLEAR))
    await rig.settle("Stopped")


@pytest.mark.asyncio
async def test_the_batch_detail_follows_the_steps(rig: Rig) -> None:
    assert rig.service.batch_detail() is None  # nothing loaded
    names = [r["name"] for r in rig.service.recipes_info()]
    assert "waiting" in names
    waiting = next(r for r in rig.service.recipes_info() if r["name"] == "waiting")
    assert {"name", "version", "parameters"} <= waiting.keys()
    await rig.loaded("waiting")
    detail = rig.service.batch_detail()
    assert detail is not None and detail["steps"]
    assert {s["state"] for s in detail["steps"]} == {"pending"}
    await rig.ok(OPERATOR, command(Command.START))
    await wait_until(lambda: "finish" in rig.service.status().step, DEADLINE, "the wait")

    def waiting_now() -> bool:
        shown = rig.service.batch_detail()
        return shown is not None and shown["wait"] is not None

    await wait_until(waiting_now, DEADLINE, "the wait shown")
    shown = rig.service.batch_detail()
    assert shown is not None and "line.done" in shown["wait"]["tags"]
    assert shown["running"] is not None and shown["started_at"] is not None
    rig.device("line.done", True)
    await rig.settle("Complete")
    done = rig.service.batch_detail()
    assert done is not None and done["running"] is None and done["wait"] is None
    assert {s["state"] for s in done["steps"]} <= {"done", "skipped"}
    assert done["safe_state"] is None or done["safe_state"]["results"]


@pytest.mark.asyncio
async def test_a_wait_looking_again_changes_no_status(rig: Rig) -> None:
    """Each poll cycle of a wait is an event; only a change a client shows rebuilds the status."""
    await rig.loaded("waiting")
    await rig.ok(OPERATOR, command(Command.START))

    def waiting() -> bool:
        shown = rig.service.batch_detail()
        return shown is not None and shown["wait"] is not None

    await wait_until(waiting, DEADLINE, "the wait shown")
    shown = rig.service.batch_detail()
    assert shown is not None and shown["wait"] is not None
    wait, path = shown["wait"], shown["running"]

    def look(met: bool) -> WaitProgress:
        values: dict[str, Value | None] = {str(tag): met for tag in wait["tags"]}
        return WaitProgress(
            path=path, step_id=None, condition=wait["condition"], values=values, met=met
        )

    seq = rig.service.feed.seq
    for _ in range(3):  # the controller's own listener: as the executor emits them
        rig.service._event(look(False))
    assert rig.service.feed.seq == seq  # nothing a client shows changed
    rig.service._event(look(True))
    assert rig.service.feed.seq > seq  # the wait is over: that shows
    # Ended here: a Stop (the rig's close) lets a wait run to its boundary, here its 30 s.
    rig.device("line.done", True)
    await rig.settle("Complete")


@pytest.mark.asyncio
async def test_reset_refused_until_the_trip_is_acknowledged(rig: Rig) -> None:
    await rig.loaded("waiting")
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Execute")
    rig.device("line.jam", True)  # a stop trip
    await rig.settle("Stopped")
    assert any(t.startswith("jam:") for t in rig.service.status().trips)
    reason = await rig.refused(OPERATOR, command(Command.RESET), RefusalKind.STATE)
    assert "jam" in reason
    rig.device("line.jam", False)
    await wait_until(lambda: "cleared" in " ".join(rig.service.status().trips))
    reason = await rig.refused(OPERATOR, command(Command.RESET), RefusalKind.STATE)
    assert "not acknowledged: jam" in reason
    # The refusal is on record with its user.
    refused = [r.data() for r in await rows_of(rig, Kind.REFUSED)]
    assert any(
        b["command"] == "Reset"
        and "not acknowledged" in b["reason"]
        and b.get("operator") == "otto"
        for b in refused
    ), refused
    assert rig.state() == "Stopped"
    await rig.ok(OPERATOR, request(Action.ACK))
    assert rig.service.status().trips == ()
    await rig.ok(OPERATOR, command(Command.RESET))
    await rig.settle("Idle")


@pytest.mark.asyncio
async def test_unhold_choice(rig: Rig) -> None:
    await rig.loaded("failing")
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Held")
    reason = await rig.refused(OPERATOR, command(Command.UNHOLD), RefusalKind.STATE)
    assert "retry" in reason and "skip" in reason
    reason = await rig.refused(OPERATOR, command(Command.UNHOLD, "later"), RefusalKind.INPUT)
    assert "retry (re-run) or skip" in reason
    assert rig.state() == "Held"
    await rig.ok(OPERATOR, command(Command.UNHOLD, " Skip "))
    await rig.settle("Complete")
    assert rig.on_device("press.go") is True


# -- mode, stepping, breakpoints ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_mode_changes(rig: Rig) -> None:
    reason = await rig.refused(ENGINEER, request(Action.MODE, value="Turbo"), RefusalKind.INPUT)
    assert "Production" in reason and "Maintenance" in reason
    assert await rig.ok(ENGINEER, request(Action.MODE, value="maintenance")) == "mode Maintenance"
    await rig.loaded("waiting", who=ENGINEER)
    assert rig.service.status().mode == "Maintenance"
    await rig.ok(ENGINEER, request(Action.MODE, value="Manual"))  # Idle: legal
    mode_rows = [r.data() for r in await rows_of(rig, Kind.MODE)]
    assert mode_rows[-1]["mode"] == "Manual"
    await rig.refused(OPERATOR, command(Command.START), RefusalKind.STATE)  # not in Manual
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Execute")
    reason = await rig.refused(
        ENGINEER, request(Action.MODE, value="Production"), RefusalKind.STATE
    )
    assert "Execute" in reason
    assert rig.service.status().mode == "Maintenance"
    rig.device("line.done", True)
    await rig.settle("Complete")
    await rig.ok(ENGINEER, request(Action.MODE, value="Production"))
    assert rig.service.status().mode == "Production"


@pytest.mark.asyncio
async def test_step_and_breakpoints_need_maintenance(rig: Rig) -> None:
    await rig.loaded("simple")
    step = request(Action.STEP, value="run")
    reason = await rig.refused(ENGINEER, step, RefusalKind.STATE)
    assert "Maintenance" in reason and "Production" in reason
    reason = await rig.refused(ENGINEER, request(Action.BREAK_ADD, name="press"), RefusalKind.STATE)
    assert "Production" in reason
    assert rig.service.status().breakpoints == ()
    reason = await rig.refused(ENGINEER, request(Action.BREAK_ADD, name="pres"), RefusalKind.INPUT)
    assert "no step 'pres'" in reason and "press" in reason
    reason = await rig.refused(ENGINEER, request(Action.STEP, value="jump"), RefusalKind.INPUT)
    assert "run" in reason


@pytest.mark.asyncio
async def test_breakpoint_pauses_and_step_resumes(rig: Rig) -> None:
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    await rig.loaded("simple")
    await rig.ok(ENGINEER, request(Action.BREAK_ADD, name="press"))
    await rig.ok(ENGINEER, request(Action.BREAK_ADD, name="count"))
    assert rig.service.status().breakpoints == ("count", "press")
    await rig.refused(ENGINEER, request(Action.STEP, value="continue"), RefusalKind.STATE)
    await rig.ok(OPERATOR, command(Command.START))
    await wait_until(lambda: rig.service.status().paused != "", DEADLINE, "the pause at press")
    assert "press" in rig.service.status().paused
    assert rig.state() == "Execute" and rig.on_device("press.go") is False
    assert (await rig.ok(ENGINEER, request(Action.STEP))).startswith("run ")
    await wait_until(lambda: "count" in rig.service.status().paused, DEADLINE, "count")
    assert rig.on_device("press.go") is True
    await rig.ok(ENGINEER, request(Action.BREAK_RM, name="count"))
    assert rig.service.status().breakpoints == ("press",)
    await rig.ok(ENGINEER, request(Action.STEP, value="continue"))
    await rig.settle("Complete")
    assert rig.on_device("line.count") == 1


@pytest.mark.asyncio
async def test_breakpoints_do_not_pause_production(rig: Rig) -> None:
    """A breakpoint set in Maintenance does not pause a batch run in Production after."""
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    await rig.loaded("simple")
    await rig.ok(ENGINEER, request(Action.BREAK_ADD, name="press"))
    result = await rig.ok(ENGINEER, request(Action.MODE, value="Production"))
    assert result == "mode Production (breakpoints removed: press)"
    assert rig.service.status().breakpoints == ()
    await rig.ok(OPERATOR, command(Command.START))
    await rig.settle("Complete")


# -- prompts ---------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_typed_prompt(rig: Rig) -> None:
    await rig.loaded("asking")
    reason = await rig.refused(
        OPERATOR, request(Action.ANSWER, name="ask", value="3"), RefusalKind.INPUT
    )
    assert "no prompt" in reason
    await rig.ok(OPERATOR, command(Command.START))
    await wait_until(lambda: rig.service.status().prompt is not None, DEADLINE, "the prompt")
    prompt = rig.service.status().prompt
    assert prompt is not None
    assert (prompt.step_id, prompt.text) == ("ask", "How many parts?")
    assert "1" in prompt.wants and "5" in prompt.wants
    for wrong in ("9", "three"):
        reason = await rig.refused(
            OPERATOR, request(Action.ANSWER, name="ask", value=wrong), RefusalKind.INPUT
        )
        assert "answer ask" in reason
    await rig.refused(OPERATOR, request(Action.ANSWER, name="put", value="3"), RefusalKind.INPUT)
    assert rig.service.status().prompt == prompt and rig.state() == "Execute"
    assert (
        await rig.ok(OPERATOR, request(Action.ANSWER, name="ask", value="3")) == "answered ask = 3"
    )
    await rig.settle("Complete")
    assert rig.on_device("line.count") == 3
    assert rig.service.status().prompt is None


# -- force and unforce ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_force_refusals(rig: Rig) -> None:
    force = request(Action.FORCE, name="line.speed", value="42")
    reason = await rig.refused(ENGINEER, force, RefusalKind.STATE)
    assert "Production" in reason
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    for tag, value, words in [
        ("line.sped", "1", ("unknown tag", "line.speed")),
        ("line.feed", "1", ("read-only",)),
        ("line.speed", "900", ("500",)),
        ("line.run", "maybe", ("line.run",)),
    ]:
        reason = await rig.refused(
            ENGINEER, request(Action.FORCE, name=tag, value=value), RefusalKind.INPUT
        )
        assert all(w in reason for w in words), reason
    await rig.loaded("waiting", who=ENGINEER)
    await rig.ok(OPERATOR, command(Command.START))
    await wait_until(lambda: "finish" in rig.service.status().step, DEADLINE, "the wait")
    reason = await rig.refused(ENGINEER, force, RefusalKind.STATE)
    assert "Execute" in reason
    assert rig.service.status().forced == {}
    assert rig.on_device("line.speed") == 50
    await rig.refused(ENGINEER, request(Action.UNFORCE, name="line.speed"), RefusalKind.INPUT)
    rig.device("line.done", True)
    await rig.settle("Complete")


@pytest.mark.asyncio
async def test_force_in_maintenance_idle(rig: Rig) -> None:
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    batch = await rig.loaded("simple")
    result = await rig.ok(ENGINEER, request(Action.FORCE, name="line.speed", value="42"))
    assert "42" in result
    assert rig.on_device("line.speed") == 42
    assert rig.service.status().forced == {"line.speed": "42"}
    # The write's own record (as `cellctl write`'s, outside the batch), with the user.
    writes = [r.data() for r in await rows_of(rig, Kind.WRITE)]
    assert [(w["tag"], w["value"], w["operator"], w["forced"]) for w in writes] == [
        ("line.speed", 42, "erin", True)
    ]
    forced = [
        r for r in await rows_of(rig, Kind.COMMAND) if r.data()["command"].startswith("force")
    ]
    assert [(r.batch, r.data()["operator"]) for r in forced] == [(batch, "erin")]
    await rig.ok(ENGINEER, request(Action.UNFORCE, name="line.speed"))
    assert rig.service.status().forced == {}
    assert rig.on_device("line.speed") == 42  # the device keeps it


# -- listeners -----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_listeners(rig: Rig) -> None:
    statuses: list[ServiceStatus] = []
    tags: list[Mapping[str, TagValue]] = []
    stop = rig.service.listen(statuses.append, tags.append)
    await rig.ok(ENGINEER, request(Action.MODE, value="Maintenance"))
    await wait_until(lambda: any(s.mode == "Maintenance" for s in statuses), DEADLINE, "a status")
    # Two changes in one turn of the loop: one status, which shows both.
    await rig.loaded("simple")
    served = rig.service.served
    assert served is not None
    await wait_until(lambda: statuses[-1].state == "Idle", DEADLINE, "Idle told")
    seen = len(statuses)
    seq = rig.service.status().seq
    served.controller.emit(Notice(text="one"))
    served.controller.emit(Notice(text="two"))
    await wait_until(lambda: len(statuses) > seen, DEADLINE, "the status after two changes")
    assert len(statuses) == seen + 1 and statuses[-1].seq == seq + 2
    assert [s.seq for s in statuses] == sorted({s.seq for s in statuses})
    # Tag values, coalesced per flush.
    rig.device("line.feed", 7)
    rig.device("line.feed", 8)
    await wait_until(
        lambda: any(t.get("line.feed") is not None and t["line.feed"].value == 8 for t in tags),
        DEADLINE,
        "line.feed told",
    )
    assert not any(t.get("line.feed") is not None and t["line.feed"].value == 7 for t in tags)
    assert rig.service.tag_values()["line.feed"].value == 8
    stop()
    told = (len(statuses), len(tags))
    # A listener of its own hears the next changes; the one stopped hears none of them.
    later_statuses: list[ServiceStatus] = []
    later_tags: list[Mapping[str, TagValue]] = []
    rig.service.listen(later_statuses.append, later_tags.append)
    await rig.ok(ENGINEER, request(Action.MODE, value="Manual"))
    rig.device("line.feed", 9)
    await wait_until(
        lambda: (
            any(s.mode == "Manual" for s in later_statuses)
            and any("line.feed" in t for t in later_tags)
        ),
        DEADLINE,
        "the later listener told",
    )
    assert (len(statuses), len(tags)) == told


# -- standby, close ------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_standby_trip_writes_the_safe_state(rig: Rig) -> None:
    rig.drivers["line"].set_device_value("line.run", True)
    rig.drivers["line"].set_device_value("line.speed", 300)
    rig.device("safety.ok", False)
    await wait_until(lambda: all(rig.on_device(t) == v for t, v in SAFE.items()), DEADLINE)
    trips = rig.service.status().trips
    assert len(trips) == 1 and trips[0].startswith("curtain:")
    rig.device("safety.ok", True)
    await wait_until(lambda: "cleared" in " ".join(rig.service.status().trips))
    await rig.ok(OPERATOR, request(Action.ACK))
    assert rig.service.status().trips == ()


@pytest.mark.asyncio
async def test_close_stops_the_running_batch(rig: Rig) -> None:
    batch = await rig.loaded("waiting")
    await rig.ok(OPERATOR, command(Command.START))
    await wait_until(lambda: "finish" in rig.service.status().step, DEADLINE, "the wait")
    assert rig.on_device("line.run") is True
    closing = asyncio.ensure_future(rig.service.close())
    # Stop lets the running step finish, as `run` on SIGTERM: the press finishes its part.
    await rig.settle("Stopping")
    assert not closing.done()
    rig.device("line.done", True)
    async with asyncio.timeout(DEADLINE * 2):
        assert await closing == {}
    assert rig.service.status().state == "Stopped"  # no batch in charge any more
    assert rig.on_device("press.go") is False  # the step after the wait never ran
    assert all(rig.on_device(t) == v for t, v in SAFE.items())
    ended = [r.data() for r in await rows_of(rig, Kind.BATCH_ENDED) if r.batch == batch]
    assert len(ended) == 1 and ended[0]["state"] == "Stopped"
    assert await rig.service.close() == {}  # once


# -- a crashed batch taken up -------------------------------------------------------------------


async def crashed(tmp_path: Path, *, start: bool = True) -> str:
    """A batch of `waiting` run into Execute (or only loaded and reset, `start=False`), then its
    service gone without ending its record (as a kill -9 leaves it); its batch id."""
    async with rigged(tmp_path) as rig:
        batch = await rig.loaded("waiting")
        if start:
            await rig.ok(OPERATOR, command(Command.START))
            await wait_until(lambda: "finish" in rig.service.status().step, DEADLINE, "the wait")
        served = rig.service.served
        assert served is not None
        # The controller dies (what it says on its way out reaches no record), then its
        # record is closed as it stands.
        served.controller.listeners.clear()
        await served.controller.close()
        served.recorder.writer.on_failure = None
        await asyncio.to_thread(served.recorder.writer.close)
        rig.service.served = None
    kinds = [r.kind for r in journal_rows(tmp_path / "journal.sqlite") if r.batch == batch]
    assert Kind.BATCH_ENDED not in kinds
    return batch


@pytest.mark.asyncio
async def test_resume_takes_the_batch_up_held(tmp_path: Path) -> None:
    batch = await crashed(tmp_path)
    async with rigged(tmp_path) as rig:
        said = await resume_unfinished(rig.service)
        assert said is not None and batch in said and "Held" in said
        await rig.settle("Held")
        status = rig.service.status()
        assert (status.batch, status.recipe) == (batch, "waiting")
        assert all(rig.on_device(t) == v for t, v in SAFE.items())
        await rig.ok(OPERATOR, command(Command.UNHOLD))
        await rig.settle("Execute")
        rig.device("line.done", True)
        await rig.settle("Complete")
        await rig.ended()
    ended = [r for r in await rows_of(rig, Kind.BATCH_ENDED) if r.batch == batch]
    assert len(ended) == 1 and ended[0].data()["state"] == "Complete"


@pytest.mark.asyncio
async def test_a_batch_loaded_but_never_started_is_closed_not_taken_up(tmp_path: Path) -> None:
    """Nothing of its recipe ran: Unhold must not start a batch nobody started."""
    batch = await crashed(tmp_path, start=False)
    async with rigged(tmp_path) as rig:
        said = await resume_unfinished(rig.service)
        assert said is not None and batch in said and "never started" in said
        assert rig.service.served is None
        assert rig.service.status().state == "Stopped"
        await rig.loaded("waiting")  # the next batch is not refused for it
    ended = [r for r in journal_rows(tmp_path / "journal.sqlite") if r.batch == batch]
    assert ended[-1].kind == Kind.BATCH_ENDED and ended[-1].data()["state"] == "abandoned"


@pytest.mark.asyncio
async def test_resume_refuses_a_changed_recipe(tmp_path: Path) -> None:
    batch = await crashed(tmp_path)
    recipe = tmp_path / "waiting.yaml"
    recipe.write_text(RECIPES["waiting"].replace("speed: 50", "speed: 60"))
    async with rigged(tmp_path) as rig:
        with pytest.raises(CannotTakeUp, match="has changed"):
            await resume_unfinished(rig.service)
        assert rig.service.served is None
        assert rig.service.status().batch == ""
    assert batch


@pytest.mark.asyncio
async def test_a_load_that_fails_leaves_the_standby_watching(tmp_path: Path) -> None:
    """A load refused once the recipe was found (here: a crashed batch of the cell comes
    first) leaves the interlocks watched: a trip still writes the safe state."""
    await crashed(tmp_path)
    async with rigged(tmp_path) as rig:
        reason = await rig.refused(OPERATOR, request(Action.LOAD, name="simple"), RefusalKind.STATE)
        assert "never ended" in reason
        assert rig.service.served is None
        rig.drivers["line"].set_device_value("line.run", True)
        rig.device("safety.ok", False)
        await wait_until(lambda: rig.on_device("line.run") is False, DEADLINE, "the safe state")
        assert any(t.startswith("curtain:") for t in rig.service.status().trips)


@pytest.mark.asyncio
async def test_no_unfinished_batch_nothing_to_resume(rig: Rig) -> None:
    assert await resume_unfinished(rig.service) is None
    assert rig.service.served is None
