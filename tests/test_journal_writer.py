"""The journal's writer thread: group commit off the loop, durable() resolved only once its row
is on disk, and a journal that cannot be written: on_failure, rows kept, retried."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import JournalUnavailable, NewRow, SqliteStore
from cellctl.control.journal.verify import verify
from cellctl.control.journal.writer import JournalWriter
from cellctl.testing import wait_until


def committed(path: Path) -> list[tuple[int, str | None, str, str]]:
    """The rows another connection sees: (seq, batch, kind, body)."""
    with sqlite3.connect(path) as other:
        found = other.execute("SELECT seq, batch, kind, body FROM rows ORDER BY seq").fetchall()
    other.close()
    return found


@pytest.fixture
def lock() -> Iterator[list[sqlite3.Connection]]:
    """Holds a write transaction on a journal from another connection, released at the end."""
    held: list[sqlite3.Connection] = []
    yield held
    for conn in held:
        if conn.in_transaction:
            conn.rollback()
        conn.close()


def take_lock(path: Path, held: list[sqlite3.Connection]) -> sqlite3.Connection:
    """Another connection's write transaction on `path` (as a second process would hold)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN IMMEDIATE")
    held.append(conn)
    return conn


@pytest.mark.asyncio
async def test_append_and_durable_share_commits_in_order(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    writer = JournalWriter(SqliteStore(path))
    for n in range(50):
        writer.append("B-1", Kind.NOTICE, {"n": n})
    row = await writer.durable("B-1", Kind.INTENT, {"intent": "i1"})
    assert row.seq == 51 and row.kind == "intent"
    writer.close()
    rows = committed(path)
    assert [r[0] for r in rows] == list(range(1, 52))
    assert rows[-1][3] == '{"intent":"i1"}'
    assert verify(SqliteStore(path, readonly=True)).ok


@pytest.mark.asyncio
async def test_durable_returns_only_once_its_row_is_committed(
    tmp_path: Path, lock: list[sqlite3.Connection]
) -> None:
    path = tmp_path / "j.sqlite"
    writer = JournalWriter(SqliteStore(path, busy_timeout=30))
    other = take_lock(path, lock)  # the writer's commit waits behind it
    intent = asyncio.ensure_future(writer.durable("B-1", Kind.INTENT, {"intent": "i1"}))
    await wait_until(lambda: writer.backlog == 0, what="the writer to take the row")
    for _ in range(20):
        await asyncio.sleep(0)  # loop turns: a premature answer would arrive meanwhile
    assert not intent.done()
    other.rollback()
    row = await intent
    # The moment durable() returned, another connection sees the row.
    assert committed(path) == [(1, "B-1", "intent", '{"intent":"i1"}')]
    assert row.seq == 1
    writer.close()


@pytest.mark.asyncio
async def test_a_failed_commit_reports_keeps_the_rows_and_retries(
    tmp_path: Path, lock: list[sqlite3.Connection]
) -> None:
    path = tmp_path / "j.sqlite"
    failures: list[tuple[str, bool]] = []
    writer = JournalWriter(
        SqliteStore(path, busy_timeout=0.05),
        on_failure=lambda reason: failures.append(
            (reason, threading.current_thread() is threading.main_thread())
        ),
    )
    writer.append("B-1", Kind.STATE, {"n": 0})
    await writer.flush()
    other = take_lock(path, lock)
    writer.append("B-1", Kind.SAFE_STATE, {"n": 1})  # never waits, never raises
    with pytest.raises(JournalUnavailable, match="locked") as caught:
        await writer.durable("B-1", Kind.INTENT, {"n": 2})
    assert str(path) in str(caught.value)
    await wait_until(lambda: bool(failures), what="on_failure")
    assert "locked" in failures[0][0]
    assert failures[0][1], "on_failure runs on the loop's thread"
    assert writer.failed is not None
    # Failed: a durable write is refused at once; an append is kept.
    with pytest.raises(JournalUnavailable):
        await writer.durable("B-1", Kind.INTENT, {"n": 3})
    writer.append("B-1", Kind.NOTICE, {"n": 4})
    assert writer.backlog == 3
    assert [r[0] for r in committed(path)] == [1]

    other.rollback()
    writer.retry()
    async with asyncio.timeout(10):
        await writer.flush()
    assert writer.failed is None
    assert [json_n(r[3]) for r in committed(path)] == [0, 1, 2, 4]
    assert len(failures) == 1
    writer.close()
    assert verify(SqliteStore(path, readonly=True)).ok


def json_n(body: str) -> int:
    """The `n` of a test row's body."""
    n: int = json.loads(body)["n"]
    return n


@pytest.mark.asyncio
async def test_close_names_the_rows_it_could_not_write(
    tmp_path: Path, lock: list[sqlite3.Connection]
) -> None:
    path = tmp_path / "j.sqlite"
    reasons: list[str] = []
    writer = JournalWriter(SqliteStore(path, busy_timeout=0.05), on_failure=reasons.append)
    take_lock(path, lock)
    writer.append("B-1", Kind.NOTICE, {"n": 1})
    writer.append("B-1", Kind.NOTICE, {"n": 2})
    with pytest.raises(JournalUnavailable, match="2 rows could not be written"):
        writer.close()


@pytest.mark.asyncio
async def test_a_read_only_journal_fails_durable_writes(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SqliteStore(path).close()
    reasons: list[str] = []
    writer = JournalWriter(SqliteStore(path, readonly=True), on_failure=reasons.append)
    with pytest.raises(JournalUnavailable, match="read-only") as caught:
        await writer.durable("B-1", Kind.BATCH_STARTED, {"recipe": "r"})
    assert str(path) in str(caught.value)
    await wait_until(lambda: bool(reasons), what="on_failure")
    assert writer.backlog == 1  # kept, not dropped
    with pytest.raises(JournalUnavailable):
        writer.close()


@pytest.mark.asyncio
async def test_a_full_backlog_is_counted_and_noted_in_the_journal(
    tmp_path: Path, lock: list[sqlite3.Connection]
) -> None:
    path = tmp_path / "j.sqlite"
    reasons: list[str] = []
    writer = JournalWriter(
        SqliteStore(path, busy_timeout=0.05), on_failure=reasons.append, backlog=3
    )
    other = take_lock(path, lock)
    writer.append("B-1", Kind.NOTICE, {"n": 1})
    await wait_until(lambda: writer.failed is not None, what="the failed commit")
    for n in range(2, 7):
        writer.append("B-1", Kind.NOTICE, {"n": n})
    assert writer.dropped == 3
    await wait_until(lambda: any("backlog is full" in r for r in reasons), what="the report")
    other.rollback()
    writer.retry()
    await writer.flush()
    writer.append("B-1", Kind.NOTICE, {"n": 7})
    await writer.flush()
    writer.close()
    bodies = [r[3] for r in committed(path)]
    assert len(bodies) == 5 and '"n":7' in bodies[-1]
    assert "3 journal rows were lost" in bodies[3]


def test_rows_that_cannot_be_journaled_are_refused_at_the_caller(tmp_path: Path) -> None:
    writer = JournalWriter(SqliteStore(tmp_path / "j.sqlite"))
    with pytest.raises(TypeError):
        writer.append("B-1", Kind.NOTICE, {"x": object()})
    with pytest.raises(ValueError, match="line break"):
        writer.append("B\n1", Kind.NOTICE, {})
    assert writer.failed is None
    writer.close()


class LosesRows(SqliteStore):
    """A store with a bug: it writes the rows and answers with none of them."""

    def append(self, rows: Sequence[NewRow]) -> list[JournalRow]:
        """Write `rows`; return nothing."""
        super().append(rows)
        return []


@pytest.mark.asyncio
async def test_the_writer_thread_never_dies_unseen(tmp_path: Path) -> None:
    reasons: list[str] = []
    writer = JournalWriter(LosesRows(tmp_path / "j.sqlite"), on_failure=reasons.append)
    with pytest.raises(JournalUnavailable, match="writer died"):
        async with asyncio.timeout(10):
            await writer.durable("B-1", Kind.INTENT, {"n": 1})
    await wait_until(lambda: bool(reasons), what="on_failure")
    assert "the journal writer thread died: StopIteration" in reasons[0]
    assert writer.backlog == 0  # the row was written: not queued again
    writer.close()


@pytest.mark.asyncio
async def test_a_lone_row_nobody_waits_for_reaches_the_disk_after_its_linger(
    tmp_path: Path,
) -> None:
    # append does not wake the thread: its idle look every LINGER seconds must find the row.
    path = tmp_path / "j.sqlite"
    writer = JournalWriter(SqliteStore(path))
    writer.append("B-1", Kind.NOTICE, {"n": 1})
    await wait_until(lambda: len(committed(path)) == 1, what="the row on disk", within=2.0)
    writer.append("B-1", Kind.NOTICE, {"n": 2})
    await wait_until(lambda: len(committed(path)) == 2, what="the second row", within=2.0)
    writer.close()
