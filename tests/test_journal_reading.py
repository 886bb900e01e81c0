"""Reading a big journal: `run`'s check for an unfinished batch, `history` and `report BATCH`
read by index (kind, batch) and never every row of the journal, which a busy line's journal
holds by the million; the answers are the same as a full read's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.control.journal.record import (
    UNFINISHED,
    UnknownBatch,
    batch_record,
    find_batch,
    history,
)
from cellctl.control.journal.rows import JournalRow, Kind, canonical_json, format_at
from cellctl.control.journal.store import NewRow, SqliteStore
from cellctl.control.resume import RESUMED, UnfinishedBatchFirst, refuse_unfinished
from cellctl.control.resume import unfinished_batches as find_unfinished

AT = format_at(1_765_000_000.0)


class NoScan(SqliteStore):
    """A real store that fails a read of the whole journal (a read of one batch is fine)."""

    def rows(self, batch: str | None = None) -> Iterator[JournalRow]:
        """One batch's rows only."""
        if batch is None:
            raise AssertionError("read every row of the journal")
        return super().rows(batch)

    def batches(self) -> list[str]:
        """Refused: it scans every row (only a batch id prefix needs it)."""
        raise AssertionError("listed the batches by a scan of every row")


def _batch(
    batch: str, *, ended: bool, wrote: bool = True, resumed_pid: int | None = None
) -> list[NewRow]:
    started = {"cell": "press-cell", "recipe": "press-fit", "version": 4, "operator": "ana"}
    rows = [NewRow(batch, AT, Kind.BATCH_STARTED, canonical_json({**started, "pid": 1}))]
    rows.append(NewRow(batch, AT, Kind.STEP_STARTED, canonical_json({"path": "1"})))
    if wrote:
        body = {"intent": f"{batch}-1", "tag": "press.go", "value": True, "path": "1"}
        rows.append(NewRow(batch, AT, Kind.INTENT, canonical_json(body)))
    if resumed_pid is not None:
        body = {RESUMED: True, "pid": resumed_pid, "text": "resumed"}
        rows.append(NewRow(batch, AT, Kind.NOTICE, canonical_json(body)))
    rows.append(NewRow(batch, AT, Kind.NOTICE, canonical_json({"text": "x", "level": "info"})))
    if ended:
        body = {"state": "Complete", "duration": 1.5, "parts_made": 3}
        rows.append(NewRow(batch, AT, Kind.BATCH_ENDED, canonical_json(body)))
    return rows


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    """B-0001..B-0040 ended; B-0041 unfinished and resumed once; B-0042 unfinished, no write."""
    path = tmp_path / "journal.sqlite"
    store = SqliteStore(path)
    try:
        for n in range(1, 41):
            store.append(_batch(f"B-{n:04d}", ended=True))
        store.append(_batch("B-0041", ended=False, resumed_pid=77))
        store.append(_batch("B-0042", ended=False, wrote=False))
    finally:
        store.close()
    return path


def test_unfinished_batches_are_found_without_reading_every_row(journal: Path) -> None:
    store = NoScan(journal, readonly=True)
    try:
        found = find_unfinished(store)
    finally:
        store.close()
    assert [b.batch for b in found] == ["B-0041", "B-0042"]
    resumed, untouched = found
    assert resumed.process.get("pid") == 77  # the latest resume ran it last
    assert resumed.wrote and not untouched.wrote
    assert resumed.started["operator"] == "ana"
    last = SqliteStore(journal, readonly=True)
    try:
        assert resumed.last_seq == max(r.seq for r in last.rows("B-0041"))
    finally:
        last.close()


def test_run_is_refused_by_the_unfinished_batch(journal: Path) -> None:
    with pytest.raises(UnfinishedBatchFirst, match="batch B-0041 of cell press-cell"):
        refuse_unfinished(journal, "press-cell")


def test_history_and_report_read_by_index(journal: Path) -> None:
    store = NoScan(journal, readonly=True)
    try:
        last = history(store, last=3)
        assert [s.batch for s in last] == ["B-0042", "B-0041", "B-0040"]
        assert last[0].outcome == UNFINISHED
        assert (last[2].outcome, last[2].parts_made, last[2].operator) == ("Complete", 3, "ana")
        assert find_batch(store, "B-0040") == "B-0040"
        assert batch_record(store, "B-0041").unknown_writes[0].tag == "press.go"
    finally:
        store.close()
    store = SqliteStore(journal, readonly=True)  # a prefix lists the batch ids: a scan
    try:
        with pytest.raises(UnknownBatch, match=r"ambiguous .*: B-0040, B-0041, B-0042$"):
            find_batch(store, "B-004")
    finally:
        store.close()


def test_the_kind_index_is_made_for_an_older_journal_and_used(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    SqliteStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP INDEX rows_kind")  # as a journal made before the index
    conn.commit()
    conn.close()
    SqliteStore(path).close()  # a writable open (run, write) makes it again
    conn = sqlite3.connect(path)
    try:
        plan = conn.execute(
            "EXPLAIN QUERY PLAN SELECT seq FROM rows WHERE kind IN (?) AND batch = ? ORDER BY seq",
            ("intent", "B-1"),
        ).fetchall()
    finally:
        conn.close()
    assert any("rows_kind" in str(step) for step in plan), plan
