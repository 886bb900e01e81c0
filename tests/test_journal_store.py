"""The journal's SQLite store: round trip, one chain across processes' connections, append-only
guard, and a journal that cannot be opened or written named with its path."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from pathlib import Path

import pytest

from cellctl import exitcodes
from cellctl.control.journal.location import default_journal_path
from cellctl.control.journal.rows import GENESIS, canonical_json, format_at, row_hash, row_mac
from cellctl.control.journal.store import JournalUnavailable, NewRow, SqliteStore
from cellctl.control.journal.verify import verify


def new_row(batch: str | None, kind: str = "notice", **body: object) -> NewRow:
    """A row to append, stamped now."""
    return NewRow(batch, format_at(1_800_000_000.25), kind, canonical_json(body))


def test_rows_come_back_as_appended_and_chained(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "j.sqlite")
    first = store.append([new_row("B-1", text="one"), new_row(None, "write", tag="a")])
    second = store.append([new_row("B-2", text="two"), new_row("B-1", text="three")])
    store.close()

    again = SqliteStore(tmp_path / "j.sqlite", readonly=True)
    rows = list(again.rows())
    assert rows == first + second
    assert [r.seq for r in rows] == [1, 2, 3, 4]
    assert rows[0].prev == GENESIS
    assert all(b.prev == a.hash for a, b in itertools.pairwise(rows))
    for r in rows:
        assert r.hash == row_hash(r.prev, r.seq, r.batch, r.at, r.kind, r.body)
    assert [r.data()["text"] for r in again.rows("B-1")] == ["one", "three"]
    assert again.batches() == ["B-1", "B-2"]
    assert verify(again).ok
    again.close()


def test_wal_and_full_sync(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "j.sqlite")
    store.append([new_row("B-1")])
    with sqlite3.connect(tmp_path / "j.sqlite") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    store.close()


def test_rows_cannot_be_updated_or_deleted_while_the_guard_is_there(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "j.sqlite")
    store.append([new_row("B-1")])
    with sqlite3.connect(tmp_path / "j.sqlite") as other:
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            other.execute("UPDATE rows SET body = '{}'")
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            other.execute("DELETE FROM rows")
    store.close()


def test_two_connections_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    # Two processes (a `run` and a `write`) each with its own connection to one journal.
    path = tmp_path / "j.sqlite"
    SqliteStore(path).close()
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def writer(batch: str) -> None:
        store = SqliteStore(path)
        try:
            start.wait()
            for n in range(40):
                store.append([new_row(batch, n=n)])
        except BaseException as error:
            errors.append(error)
        finally:
            store.close()

    threads = [threading.Thread(target=writer, args=(b,)) for b in ("B-1", "B-2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    store = SqliteStore(path, readonly=True)
    verdict = verify(store)
    assert (verdict.ok, verdict.checked) == (True, 80), verdict.line()
    for batch in ("B-1", "B-2"):
        assert [r.data()["n"] for r in store.rows(batch)] == list(range(40))
    store.close()


def test_a_key_macs_every_row(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "j.sqlite", key=b"secret")
    (row,) = store.append([new_row("B-1")])
    assert row.mac == row_mac(b"secret", row.hash)
    store.close()


def test_a_read_only_journal_is_unavailable_naming_its_path(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    SqliteStore(path).close()
    store = SqliteStore(path, readonly=True)
    with pytest.raises(JournalUnavailable) as caught:
        store.append([new_row("B-1")])
    store.close()
    assert str(path) in str(caught.value) and "read-only" in str(caught.value)
    assert caught.value.exit_code == exitcodes.JOURNAL == 6


def test_a_journal_whose_folder_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("a file, not a folder")
    path = tmp_path / "state" / "cellctl" / "j.sqlite"
    with pytest.raises(JournalUnavailable, match="cannot create its folder") as caught:
        SqliteStore(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"not a database at all, just some text to fill a page" * 100, "not an SQLite"),
        (None, "another SQLite database"),
    ],
)
def test_a_file_that_is_not_a_journal(tmp_path: Path, content: bytes | None, why: str) -> None:
    path = tmp_path / "other.sqlite"
    if content is None:
        with sqlite3.connect(path) as other:
            other.execute("CREATE TABLE parts (id INTEGER)")
        other.close()
    else:
        path.write_bytes(content)
    with pytest.raises(JournalUnavailable, match=why) as caught:
        SqliteStore(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize("readonly", [False, True])
def test_a_folder_named_as_the_journal_says_so(tmp_path: Path, readonly: bool) -> None:
    # SQLite's own words were "disk I/O error" (read) or "unable to open database file".
    with pytest.raises(JournalUnavailable, match="is a folder, not a journal file") as caught:
        SqliteStore(tmp_path, readonly=readonly)
    assert str(tmp_path) in str(caught.value)


def test_a_missing_journal_is_not_created_when_only_read(tmp_path: Path) -> None:
    with pytest.raises(JournalUnavailable, match="no such file"):
        SqliteStore(tmp_path / "j.sqlite", readonly=True)
    assert not (tmp_path / "j.sqlite").exists()


def test_default_location(tmp_path: Path) -> None:
    assert default_journal_path({"CELLCTL_JOURNAL": str(tmp_path / "x.sqlite")}) == (
        tmp_path / "x.sqlite"
    )
    assert default_journal_path({"XDG_STATE_HOME": str(tmp_path)}) == (
        tmp_path / "cellctl" / "journal.sqlite"
    )
    assert default_journal_path({}) == (
        Path.home() / ".local" / "state" / "cellctl" / "journal.sqlite"
    )
