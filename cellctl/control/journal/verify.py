"""Checking a journal's chain: every row's hash against its content, every row's place after the
one before it, and, given them, a head hash kept outside the journal and the HMAC key.

An unkeyed chain proves nothing against someone who edits a row and recomputes every hash after
it; the head hash printed at the end of a batch (`--head`) or the key (kept outside the
database) catches that.
"""

from __future__ import annotations

from dataclasses import dataclass

from cellctl import exitcodes
from cellctl.control.journal.rows import (
    GENESIS,
    HEX64,
    JournalRow,
    field_problem,
    row_hash,
    row_mac,
)
from cellctl.control.journal.store import JournalStore
from cellctl.errors import CellctlError

#: How far `verify` looks for the seq a renumbered row's hash was made for.
RENUMBER_REACH = 16


class ChainBroken(CellctlError):
    """The journal's chain does not verify: the message names the first broken row."""

    exit_code = exitcodes.JOURNAL


@dataclass(frozen=True)
class Verdict:
    """What `verify` found: `head` is the last row's hash (of the batch, when one was named),
    `broken_seq` and `problem` the first broken row and what is wrong with it."""

    ok: bool
    where: str
    checked: int
    head: str | None
    broken_seq: int | None = None
    problem: str | None = None
    batch: str | None = None
    batch_rows: int = 0

    def line(self) -> str:
        """The verdict in one line."""
        if not self.ok:
            return (
                f"journal {self.where}: the chain does not verify: {self.problem} "
                f"({self.checked} rows checked)"
            )
        if self.batch is not None:
            rows = "1 row" if self.batch_rows == 1 else f"{self.batch_rows} rows"
            return (
                f"journal {self.where}: batch {self.batch}: {rows}, head "
                f"{self.head}; the chain holds ({self.checked} rows checked)"
            )
        return f"journal {self.where}: the chain holds: {self.checked} rows, head {self.head}"


def _row_problem(row: JournalRow, prev_seq: int, prev_hash: str, key: bytes | None) -> str | None:
    """What is wrong with `row`, coming after row `prev_seq` whose hash is `prev_hash`."""
    n = row.seq
    malformed = field_problem(row.batch, row.at, row.kind, row.body)
    if malformed is None and not (HEX64.match(row.hash) and HEX64.match(row.prev)):
        malformed = "its hash or prev is not 64 hex digits"
    if malformed is not None:
        return f"row {n} is malformed: {malformed}"
    if row_hash(row.prev, n, row.batch, row.at, row.kind, row.body) != row.hash:
        for seq in range(max(1, n - RENUMBER_REACH), n + RENUMBER_REACH + 1):
            if seq != n and row_hash(row.prev, seq, row.batch, row.at, row.kind, row.body) == (
                row.hash
            ):
                return (
                    f"row {n} was renumbered (its hash was made for seq {seq}): rows were "
                    "inserted, removed or reordered"
                )
        return f"row {n} was edited (its hash does not match its content)"
    if n != prev_seq + 1:
        if prev_seq == 0:
            first = "row 1 is" if n == 2 else f"rows 1 to {n - 1} are"
            return f"{first} missing (the journal starts at seq {n})"
        gap = (
            f"row {prev_seq + 1} is" if n == prev_seq + 2 else f"rows {prev_seq + 1} to {n - 1} are"
        )
        return f"{gap} missing (seq jumps {prev_seq} -> {n})"
    if row.prev != prev_hash:
        if prev_seq == 0:
            return f"row {n} does not start the chain (its prev is not the genesis hash)"
        return f"row {n} does not follow row {prev_seq} (prev hash differs): inserted or reordered"
    if key is not None:
        if row.mac is None:
            return f"row {n} has no mac (it was written without a key)"
        if row.mac != row_mac(key, row.hash):
            return f"mac of row {n} does not match the key"
    return None


def verify(
    store: JournalStore,
    batch: str | None = None,
    head: str | None = None,
    key: bytes | None = None,
) -> Verdict:
    """Check the whole chain (it is global, even for one batch) up to the first broken row;
    with `batch`, the verdict counts its rows and names its head (its last row's hash)."""
    head = head.lower() if head is not None else None
    prev_seq, prev_hash = 0, GENESIS
    checked = batch_rows = 0
    batch_head: str | None = None
    head_row: JournalRow | None = None
    where = store.where

    def broken(problem: str, seq: int | None = None) -> Verdict:
        return Verdict(False, where, checked, None, seq, problem, batch, batch_rows)

    for row in store.rows():
        checked += 1
        problem = _row_problem(row, prev_seq, prev_hash, key)
        if problem is not None:
            return broken(problem, row.seq)
        if row.hash == head:
            head_row = row
        if batch is not None and row.batch == batch:
            batch_rows += 1
            batch_head = row.hash
        prev_seq, prev_hash = row.seq, row.hash
    if batch is not None and batch_rows == 0:
        return broken(f"batch {batch} has no row in the journal")
    if head is not None:
        if head_row is None:
            return broken(
                f"head {head} not found: rows after it were removed or the chain was recomputed"
            )
        if batch is not None and head_row.batch != batch:
            return broken(f"head {head} is row {head_row.seq}, not a row of batch {batch}")
    last = batch_head if batch is not None else (None if checked == 0 else prev_hash)
    return Verdict(True, where, checked, last, batch=batch, batch_rows=batch_rows)
