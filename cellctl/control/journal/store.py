"""Where journal rows are kept: the storage interface, and its SQLite implementation.

SQLite is the embedded default: one file, WAL mode, `synchronous=FULL` (a commit is on disk when
it returns), append-only. The table `rows` has triggers that refuse UPDATE and DELETE; they guard
against accidents only (anyone with sqlite3 can drop them): the hash chain is the real check.
One chain runs over the whole journal, whatever the batch: each row's `prev` is the hash of the
row with the greatest seq, read inside `BEGIN IMMEDIATE`, so several processes appending to one
journal (a `run` and a `write`) interleave into one valid chain.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cellctl import exitcodes
from cellctl.control.journal.rows import GENESIS, JournalRow, field_problem, row_hash, row_mac
from cellctl.errors import CellctlError

#: PRAGMA application_id of a cellctl journal ('celj'): tells a journal from another database.
APPLICATION_ID = 0x63656C6A
#: PRAGMA user_version: the schema's version.
SCHEMA_VERSION = 1
#: Seconds a writer waits for another process's transaction before the journal counts as locked.
BUSY_TIMEOUT = 5.0

_SCHEMA = f"""
CREATE TABLE rows (
    seq   INTEGER PRIMARY KEY,
    batch TEXT,
    at    TEXT NOT NULL,
    kind  TEXT NOT NULL,
    body  TEXT NOT NULL,
    prev  TEXT NOT NULL,
    hash  TEXT NOT NULL,
    mac   TEXT
);
CREATE INDEX rows_batch ON rows (batch, seq);
CREATE TRIGGER rows_no_update BEFORE UPDATE ON rows
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: rows cannot be changed'); END;
CREATE TRIGGER rows_no_delete BEFORE DELETE ON rows
BEGIN SELECT RAISE(ABORT, 'the journal is append-only: rows cannot be deleted'); END;
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""

_COLUMNS = "seq, batch, at, kind, body, prev, hash, mac"


class JournalUnavailable(CellctlError):
    """The journal cannot be opened or written: read-only, disk full, locked past the busy
    timeout, missing, or not a journal. The message names the path and the reason."""

    exit_code = exitcodes.JOURNAL

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"journal {path}: {reason}")
        self.path = path
        self.reason = reason


class BadKeyFile(CellctlError):
    """The HMAC key file cannot be read or is empty (bad input: nothing was touched)."""


@dataclass(frozen=True)
class NewRow:
    """A row to append: its seq, prev, hash and mac are given by the store."""

    batch: str | None
    at: str
    kind: str
    body: str  # canonical JSON text


class JournalStore(Protocol):
    """Append-only storage of journal rows, one hash chain over all of them."""

    @property
    def where(self) -> str:
        """Where the rows are (a path), for messages."""
        ...

    def append(self, rows: Sequence[NewRow]) -> list[JournalRow]:
        """Append `rows` in one transaction, chained after the last row; the rows as stored.
        JournalUnavailable when they could not be written (then none was)."""
        ...

    def rows(self, batch: str | None = None) -> Iterator[JournalRow]:
        """Every row in seq order, or the rows of one batch."""
        ...

    def batches(self) -> list[str]:
        """The batch ids, in the order of their first row."""
        ...

    def select(
        self,
        kinds: Sequence[str] = (),
        batch: str | None = None,
        *,
        newest_first: bool = False,
        limit: int | None = None,
        unended: bool = False,
    ) -> list[JournalRow]:
        """The rows of these kinds (any kind when empty), of `batch` when given, of batches
        with no batch_ended row when `unended`, in seq order (newest first when asked), at
        most `limit`; read by index, so its cost follows the rows it returns (and the number
        of batches, for `unended`), not the journal's size."""
        ...

    def close(self) -> None:
        """Release the storage."""
        ...


def read_key(path: Path) -> bytes:
    """The HMAC key in a file kept outside the journal: its bytes, trailing CR/LF ignored."""
    try:
        key = path.read_bytes().rstrip(b"\r\n")
    except OSError as error:
        raise BadKeyFile(f"key file {path}: {error.strerror or error}") from None
    if not key:
        raise BadKeyFile(f"key file {path} is empty")
    return key


def _reason(error: sqlite3.Error, busy_timeout: float) -> str:
    """What an SQLite error means to the person reading the message."""
    text = str(error)
    if "locked" in text or "busy" in text:
        return f"locked by another process for more than {busy_timeout:g} s ({text})"
    if "readonly" in text or "read-only" in text:
        return f"read-only: cannot write ({text})"
    if "full" in text:
        return f"the disk is full ({text})"
    if "not a database" in text:
        return "not a journal (the file is not an SQLite database)"
    if "unable to open" in text:
        return f"cannot be opened ({text})"
    return text


class SqliteStore:
    """The journal in one SQLite file (see the module docstring). Not shared between threads
    at once: the writer thread is its only user once given to a JournalWriter."""

    def __init__(
        self,
        path: Path,
        *,
        key: bytes | None = None,
        create: bool = True,
        readonly: bool = False,
        busy_timeout: float = BUSY_TIMEOUT,
    ) -> None:
        """Open the journal at `path`; create it and its folder when `create` (never when
        `readonly`); JournalUnavailable naming the path and why when it cannot be opened."""
        self.path = path
        self.key = key
        self.busy_timeout = busy_timeout
        if not path.exists() and (readonly or not create):
            raise JournalUnavailable(str(path), "no such file")
        if path.is_dir():  # SQLite would only say "disk I/O error" or "unable to open"
            raise JournalUnavailable(
                str(path), f"is a folder, not a journal file (e.g. {path / 'journal.sqlite'})"
            )
        try:
            if not readonly:
                path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise JournalUnavailable(
                str(path), f"cannot create its folder: {error.strerror or error}"
            ) from None
        self._conn: sqlite3.Connection | None = None
        try:
            if readonly:
                uri = "file:" + urllib.parse.quote(str(path.absolute())) + "?mode=ro"
                conn = sqlite3.connect(
                    uri,
                    uri=True,
                    timeout=busy_timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
            else:
                conn = sqlite3.connect(
                    path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
                )
            self._conn = conn
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            self._prepare(conn, readonly)
        except sqlite3.Error as error:
            self.close()
            raise JournalUnavailable(str(path), _reason(error, busy_timeout)) from None
        except JournalUnavailable:
            self.close()
            raise

    def _prepare(self, conn: sqlite3.Connection, readonly: bool) -> None:
        """Check that the file is a journal (or make an empty one one), WAL and FULL sync."""
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == APPLICATION_ID:
            pass
        elif app_id != 0 or conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
            raise JournalUnavailable(str(self.path), "not a journal (another SQLite database)")
        elif readonly:
            raise JournalUnavailable(str(self.path), "not a journal (an empty database)")
        else:
            conn.execute("BEGIN IMMEDIATE")
            try:  # another process may have made it meanwhile
                if not conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                    for statement in _SCHEMA.split(";\n"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if not readonly:
            # Journals made before this index get it at their first writable open (`select`).
            conn.execute("CREATE INDEX IF NOT EXISTS rows_kind ON rows (kind, batch, seq)")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalUnavailable(str(self.path), f"cannot use WAL mode (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")

    @property
    def where(self) -> str:
        """The journal's path, for messages."""
        return str(self.path)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise JournalUnavailable(str(self.path), "closed")
        return self._conn

    def append(self, rows: Sequence[NewRow]) -> list[JournalRow]:
        """Append `rows` in one `BEGIN IMMEDIATE` transaction, chained after the last row."""
        for row in rows:  # a row that cannot be hashed unambiguously is the caller's bug
            problem = field_problem(row.batch, row.at, row.kind, row.body)
            if problem is not None:
                raise ValueError(f"cannot journal a row: {problem}")
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                last = conn.execute(
                    "SELECT seq, hash FROM rows ORDER BY seq DESC LIMIT 1"
                ).fetchone()
                seq, prev = (0, GENESIS) if last is None else (int(last[0]), str(last[1]))
                stored: list[JournalRow] = []
                for row in rows:
                    seq += 1
                    hash_ = row_hash(prev, seq, row.batch, row.at, row.kind, row.body)
                    mac = None if self.key is None else row_mac(self.key, hash_)
                    stored.append(
                        JournalRow(seq, row.batch, row.at, row.kind, row.body, prev, hash_, mac)
                    )
                    prev = hash_
                conn.executemany(
                    f"INSERT INTO rows ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [(r.seq, r.batch, r.at, r.kind, r.body, r.prev, r.hash, r.mac) for r in stored],
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as error:
            raise JournalUnavailable(str(self.path), _reason(error, self.busy_timeout)) from None
        return stored

    def rows(self, batch: str | None = None) -> Iterator[JournalRow]:
        """Every row in seq order, or the rows of `batch`."""
        conn = self._connection()
        try:
            if batch is None:
                cursor = conn.execute(f"SELECT {_COLUMNS} FROM rows ORDER BY seq")
            else:
                cursor = conn.execute(
                    f"SELECT {_COLUMNS} FROM rows WHERE batch = ? ORDER BY seq", (batch,)
                )
            for seq, batch_, at, kind, body, prev, hash_, mac in cursor:
                yield JournalRow(seq, batch_, at, kind, body, prev, hash_, mac)
        except sqlite3.Error as error:
            raise JournalUnavailable(str(self.path), _reason(error, self.busy_timeout)) from None

    def batches(self) -> list[str]:
        """The batch ids, in the order of their first row."""
        try:
            found = self._connection().execute(
                "SELECT batch FROM rows WHERE batch IS NOT NULL GROUP BY batch ORDER BY min(seq)"
            )
            return [str(batch) for (batch,) in found]
        except sqlite3.Error as error:
            raise JournalUnavailable(str(self.path), _reason(error, self.busy_timeout)) from None

    def select(
        self,
        kinds: Sequence[str] = (),
        batch: str | None = None,
        *,
        newest_first: bool = False,
        limit: int | None = None,
        unended: bool = False,
    ) -> list[JournalRow]:
        """The rows of these kinds (any kind when empty), of `batch` when given, of batches
        with no batch_ended row when `unended`, in seq order (newest first when asked), at
        most `limit`. The seqs are found in the index on (kind, batch, seq) alone, then only
        the rows returned are read: with a kind or a batch, never a scan of the journal."""
        where: list[str] = []
        params: list[object] = []
        if kinds:
            where.append(f"kind IN ({', '.join('?' * len(kinds))})")
            params.extend(kinds)
        if batch is not None:
            where.append("batch = ?")
            params.append(batch)
        if unended:
            where.append(
                "batch IS NOT NULL AND NOT EXISTS (SELECT 1 FROM rows AS e "
                "WHERE e.kind = 'batch_ended' AND e.batch = rows.batch)"
            )
        order = " ORDER BY seq DESC" if newest_first else " ORDER BY seq"
        seqs = "SELECT seq FROM rows" + (" WHERE " + " AND ".join(where) if where else "") + order
        if limit is not None:
            seqs += " LIMIT ?"
            params.append(limit)
        sql = f"SELECT {_COLUMNS} FROM rows WHERE seq IN ({seqs}){order}"
        try:
            found = self._connection().execute(sql, params).fetchall()
        except sqlite3.Error as error:
            raise JournalUnavailable(str(self.path), _reason(error, self.busy_timeout)) from None
        return [JournalRow(*row) for row in found]

    def close(self) -> None:
        """Close the connection (the last one to close folds the WAL into the file)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
