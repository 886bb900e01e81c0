"""The service core's stop and failure paths (cellctl.service.core), on memory drivers: SIGTERM
during Resetting, a close that meets a load under way, a request after the close began, and a
task of the service that fails."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cellctl.control.journal.rows import Kind
from cellctl.control.journal.store import SqliteStore
from cellctl.control.machine import Command
from cellctl.control.resume import unfinished_batches
from cellctl.service.api import Action, RefusalKind
from cellctl.testing import wait_until
from tests.support import journal_rows
from tests.test_service_core import (
    CELL,
    DEADLINE,
    OPERATOR,
    command,
    request,
    rigged,
    write_files,
)


def unended(journal: Path) -> list[str]:
    """The batches of the journal that have no batch_ended row."""
    store = SqliteStore(journal, readonly=True)
    try:
        return [found.batch for found in unfinished_batches(store)]
    finally:
        store.close()


@pytest.mark.asyncio
async def test_close_during_resetting_stops_at_once(tmp_path: Path) -> None:
    """SIGTERM while Resetting waits for `ready`: as `run`, Resetting writes nothing more and
    the service stops now, not when the controller's close gives up on it (30 s)."""
    write_files(tmp_path)
    (tmp_path / "cell.yaml").write_text(CELL + 'ready: {when: "line.done", timeout: 30s}\n')
    async with rigged(tmp_path) as rig:
        await rig.ok(OPERATOR, request(Action.LOAD, name="simple"))
        batch = rig.service.status().batch
        await rig.ok(OPERATOR, command(Command.RESET))
        await rig.settle("Resetting")
        async with asyncio.timeout(DEADLINE):
            assert await rig.service.close() == {}
        assert rig.on_device("line.run") is False and rig.on_device("press.go") is False
    rows = [r for r in journal_rows(tmp_path / "journal.sqlite") if r.batch == batch]
    stops = [r.data() for r in rows if r.kind == Kind.COMMAND and r.data()["command"] == "Stop"]
    assert [(s["operator"], s["source"]) for s in stops] == [
        ("service", "SIGTERM before the batch started")
    ]
    assert batch not in unended(tmp_path / "journal.sqlite")


@pytest.mark.asyncio
async def test_close_waits_for_a_load_under_way(tmp_path: Path) -> None:
    """A load under way when the service stops ends first, and its batch is closed with the
    service: none is left in charge of the cell, or open on record, after the close."""
    async with rigged(tmp_path) as rig:
        # Tasks start in order: the load holds the command layer when the close begins.
        loading = asyncio.ensure_future(rig.submit(OPERATOR, request(Action.LOAD, name="simple")))
        closing = asyncio.ensure_future(rig.service.close())
        async with asyncio.timeout(DEADLINE * 2):
            await loading
            assert await closing == {}
        assert rig.service.served is None
        assert rig.service.status().batch == ""
        late = await rig.refused(OPERATOR, request(Action.LOAD, name="simple"), RefusalKind.STATE)
        assert "stopping" in late
        assert rig.service.served is None
    assert unended(tmp_path / "journal.sqlite") == []


@pytest.mark.asyncio
async def test_a_failed_task_of_the_service_ends_it_on_record(tmp_path: Path) -> None:
    """A task of the service that fails (a batch's end, a resumed batch) is on record and tells
    the runner, which ends the service: it never dies seen only in the log."""
    told: list[str] = []
    async with rigged(tmp_path) as rig:
        rig.service.on_failure = told.append

        async def broken() -> None:
            raise RuntimeError("the record's end could not be written")

        rig.service._spawn(broken(), "the batch's end")  # the service's one way to run tasks
        await wait_until(lambda: bool(told), DEADLINE, "the failure told")
        assert "the batch's end failed" in told[0] and "could not be written" in told[0]
    notices = [r.data() for r in journal_rows(tmp_path / "journal.sqlite") if r.kind == Kind.NOTICE]
    assert any("the batch's end failed" in str(n.get("text")) for n in notices)


@pytest.mark.asyncio
async def test_the_runner_ends_a_service_whose_task_failed(tmp_path: Path) -> None:
    """`serve`'s runner hears of a failed task of the service and ends the service with why."""
    from cellctl.cell.load import load_cell
    from cellctl.service.core import ServiceOptions
    from cellctl.service.runner import serving

    cell = load_cell(write_files(tmp_path))
    options = ServiceOptions(tmp_path / "journal.sqlite", tmp_path, "none", safe_wait=DEADLINE)
    async with serving(cell, options) as served:

        async def broken() -> None:
            raise RuntimeError("lost")

        served.service._spawn(broken(), "the resumed batch")
        async with asyncio.timeout(DEADLINE):
            await served.stop.wait()
        assert served.why == ["the resumed batch failed: RuntimeError: lost"]
        # Not a signal's end: `serve` exits 4 then, so that a supervisor restarts it.
        assert served.failure() == "the resumed batch failed: RuntimeError: lost"
        served.why[:] = ["SIGTERM"]
        assert served.failure() is None
