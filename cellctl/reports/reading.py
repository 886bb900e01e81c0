"""The journal read for a report: one batch's record, the history. Each call opens the journal
read-only and closes it again, so reading never makes a journal nor writes to one, and a call
holds no connection another thread could share. Blocking (SQLite): a caller on an event loop
runs it in a worker thread (`asyncio.to_thread`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cellctl.control.journal.record import (
    DEFAULT_LAST,
    BatchRecord,
    BatchSummary,
    batch_record,
    build_record,
    history,
)
from cellctl.control.journal.store import SqliteStore
from cellctl.reports.html import report_html


def read_record(journal: Path, batch: str) -> BatchRecord:
    """The record of the batch `batch` names (its id or a unique prefix of it): UnknownBatch
    (AmbiguousBatch) naming the journal when none or several match, JournalUnavailable when
    the journal cannot be read."""
    store = SqliteStore(journal, readonly=True)
    try:
        return batch_record(store, batch)
    finally:
        store.close()


def read_history(journal: Path, last: int = DEFAULT_LAST) -> list[BatchSummary]:
    """The summaries of the last `last` batches, newest first (none when `last` < 1);
    JournalUnavailable when the journal cannot be read."""
    store = SqliteStore(journal, readonly=True)
    try:
        return history(store, last=last)
    finally:
        store.close()


def report_html_of(journal: Path, batch: str) -> str | None:
    """The HTML report of the batch whose whole id is `batch`, as `cellctl report --format html
    --journal JOURNAL` writes it; None when the journal holds no such batch (JournalUnavailable
    when it cannot be read)."""
    # A whole id only, never a prefix as `cellctl report` takes: a link to one batch's report
    # must not come to name another, nor fail as ambiguous, when later batches are recorded.
    store = SqliteStore(journal, readonly=True)
    try:
        if not batch or not store.select((), batch, limit=1):
            return None
        record = build_record(batch, store.rows(batch))
    finally:
        store.close()
    return report_html(record, journal)


def history_json(journal: Path, last: int) -> list[dict[str, Any]]:
    """The last `last` batches, newest first, as `cellctl history --json --last LAST` prints
    them (the "history" schema of cellctl.control.journal); JournalUnavailable when the journal
    cannot be read."""
    return [summary.to_json() for summary in read_history(journal, last)]
