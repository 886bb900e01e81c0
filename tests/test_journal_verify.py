"""`audit verify`: a journal edited behind its back through sqlite3 (its guard triggers dropped
first) is caught, the first broken row named, exit 6; an intact one is exit 0."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from cellctl.control.journal.events import batch_started_body, intent_body
from cellctl.control.journal.rows import Kind, canonical_json, format_at, row_hash, row_mac
from cellctl.control.journal.store import NewRow, SqliteStore
from cellctl.control.journal.verify import verify
from cellctl.testing import cli

KEY = b"kept outside the database"


def build(path: Path, key: bytes | None = None) -> dict[str, str]:
    """A journal of two batches and a `write` between them (20 rows); the head hashes."""
    store = SqliteStore(path, key=key)
    at = format_at(1_800_000_000.0)
    started = batch_started_body(
        cell="press-cell",
        cell_sha256="c" * 64,
        recipe="press-fit",
        version=3,
        recipe_sha256="a" * 64,
        parameters={"force": 12.5},
        operator="ana",
        mode="Production",
    )
    rows = [NewRow("B-1", at, Kind.BATCH_STARTED, canonical_json(started))]
    rows += [
        NewRow("B-1", at, Kind.INTENT, canonical_json(intent_body(f"i{n}", "p.x", n, "1", None)))
        for n in range(9)
    ]
    rows.append(NewRow(None, at, Kind.WRITE, canonical_json({"tag": "p.x", "value": 0})))
    rows += [NewRow("B-2", at, Kind.NOTICE, canonical_json({"text": f"t{n}"})) for n in range(9)]
    stored = store.append(rows)
    store.close()
    return {"all": stored[-1].hash, "B-1": stored[9].hash}


def tamper(path: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    """Edit the journal as anyone with sqlite3 can: drop the guard, then change it."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("DROP TRIGGER IF EXISTS rows_no_update")
    conn.execute("DROP TRIGGER IF EXISTS rows_no_delete")
    for statement in statements:
        conn.execute(statement, params if "?" in statement else ())
    conn.close()


def audit(capsys: pytest.CaptureFixture[str], path: Path, *args: str) -> tuple[int, str]:
    """`cellctl audit verify --journal PATH ARGS`: exit code and what it printed."""
    code, out, err = cli(capsys, "audit", "verify", "--journal", str(path), *args)
    return code, out + err


def test_an_intact_journal_verifies(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    heads = build(path)
    code, out = audit(capsys, path)
    assert code == 0, out
    assert "the chain holds" in out and "20 rows" in out and heads["all"] in out
    assert len(out.strip().splitlines()) == 1
    code, out = audit(capsys, path, "B-1", "--head", heads["B-1"])
    assert code == 0, out
    assert "batch B-1: 10 rows" in out and heads["B-1"] in out


@pytest.mark.parametrize(
    ("statements", "named"),
    [
        # An edited value in an intent row.
        (
            ["UPDATE rows SET body = replace(body, '\"value\":4', '\"value\":40') WHERE seq = 6"],
            "row 6 was edited (its hash does not match its content)",
        ),
        # The recipe's identity in the batch's first row.
        (
            [
                f"UPDATE rows SET body = json_set(body, '$.recipe_sha256', '{'f' * 64}') "
                "WHERE kind = 'batch_started'"
            ],
            "row 1 was edited",
        ),
        # A deleted row.
        (["DELETE FROM rows WHERE seq = 8"], "row 8 is missing (seq jumps 7 -> 9)"),
        (
            ["DELETE FROM rows WHERE seq IN (8, 9, 10)"],
            "rows 8 to 10 are missing (seq jumps 7 -> 11)",
        ),
        (["DELETE FROM rows WHERE seq = 1"], "row 1 is missing (the journal starts at seq 2)"),
        # Two rows swapped (every column but seq).
        (
            [
                "CREATE TEMP TABLE t AS SELECT * FROM rows WHERE seq IN (9, 10)",
                "UPDATE rows SET (batch, at, kind, body, prev, hash, mac) = "
                "(SELECT batch, at, kind, body, prev, hash, mac FROM t "
                "WHERE t.seq = 19 - rows.seq) WHERE seq IN (9, 10)",
            ],
            "row 9 was renumbered (its hash was made for seq 10)",
        ),
        # A row copied to the end, as if it had been appended.
        (
            [
                "INSERT INTO rows SELECT 21, batch, at, kind, body, prev, hash, mac FROM rows "
                "WHERE seq = 5"
            ],
            "row 21 was renumbered (its hash was made for seq 5)",
        ),
    ],
    ids=["edited", "recipe-hash", "deleted", "deleted-3", "deleted-first", "swapped", "copied"],
)
def test_tampering_is_caught_and_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, statements: list[str], named: str
) -> None:
    path = tmp_path / "j.sqlite"
    build(path)
    tamper(path, *statements)
    code, out = audit(capsys, path)
    assert code == 6, out
    assert named in out
    assert "Traceback" not in out


def test_an_inserted_row_is_caught(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    build(path)
    # A row made to look right in itself: its own hash over its content, after row 5's.
    conn = sqlite3.connect(path)
    prev = conn.execute("SELECT hash FROM rows WHERE seq = 5").fetchone()[0]
    conn.close()
    at, body = format_at(1_800_000_000.0), canonical_json({"text": "all fine"})
    forged = row_hash(prev, 6, "B-1", at, "notice", body)
    tamper(
        path,
        # Make room at seq 6, as an INTEGER PRIMARY KEY allows no gap-free shift in one go.
        "UPDATE rows SET seq = -(seq + 1) WHERE seq > 5",
        "UPDATE rows SET seq = -seq WHERE seq < 0",
        "INSERT INTO rows VALUES (6, 'B-1', ?, 'notice', ?, ?, ?, NULL)",
        params=(at, body, prev, forged),
    )
    code, out = audit(capsys, path)
    assert code == 6
    assert "row 7 was renumbered (its hash was made for seq 6)" in out


def test_an_inserted_row_with_its_own_number(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    build(path)
    conn = sqlite3.connect(path)
    prev = conn.execute("SELECT hash FROM rows WHERE seq = 3").fetchone()[0]
    conn.close()
    at, body = format_at(1_800_000_000.0), canonical_json({"text": "extra"})
    forged = row_hash(prev, 21, "B-2", at, "notice", body)
    tamper(
        path,
        "INSERT INTO rows VALUES (21, 'B-2', ?, 'notice', ?, ?, ?, NULL)",
        params=(at, body, prev, forged),
    )
    code, out = audit(capsys, path)
    assert code == 6
    assert "row 21 does not follow row 20 (prev hash differs): inserted or reordered" in out


def recompute_from(path: Path, seq: int, key: bytes | None = None) -> None:
    """Edit row `seq` and recompute every hash after it: the chain holds again, unkeyed."""
    conn = sqlite3.connect(path)
    rows = conn.execute(
        "SELECT seq, batch, at, kind, body, prev FROM rows WHERE seq >= ? ORDER BY seq", (seq,)
    ).fetchall()
    conn.close()
    statements = ["DELETE FROM rows WHERE seq >= ?"]
    tamper(path, *statements, params=(seq,))
    conn = sqlite3.connect(path)
    prev = rows[0][5]
    for n, batch, at, kind, body, _ in rows:
        if n == seq:
            body = body.replace('"value":', '"value":1')
        hash_ = row_hash(prev, n, batch, at, kind, body)
        mac = row_mac(key, hash_) if key is not None else None
        conn.execute(
            "INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (n, batch, at, kind, body, prev, hash_, mac),
        )
        prev = hash_
    conn.commit()
    conn.close()


def test_a_recomputed_chain_is_caught_by_the_head(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    heads = build(path)
    recompute_from(path, 5)
    # Unanchored, a recomputed chain holds: that is why the head is printed and kept.
    assert audit(capsys, path)[0] == 0
    code, out = audit(capsys, path, "--head", heads["all"])
    assert code == 6
    assert f"head {heads['all']} not found" in out
    code, out = audit(capsys, path, "B-1", "--head", heads["B-1"])
    assert code == 6 and "not found" in out


def test_a_recomputed_chain_is_caught_by_the_key(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    key_file = tmp_path / "journal.key"
    key_file.write_bytes(KEY + b"\n")
    build(path, key=KEY)
    assert audit(capsys, path, "--key-file", str(key_file))[0] == 0
    recompute_from(path, 5, key=b"a guess")
    code, out = audit(capsys, path, "--key-file", str(key_file))
    assert code == 6
    assert "mac of row 5 does not match the key" in out


def test_the_key_is_needed_on_every_row(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    build(path)  # written without a key
    verdict = verify(SqliteStore(path, readonly=True), key=KEY)
    assert not verdict.ok and verdict.problem == "row 1 has no mac (it was written without a key)"


def test_a_batch_verdict_names_its_rows_and_head(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    heads = build(path)
    store = SqliteStore(path, readonly=True)
    verdict = verify(store, batch="B-1")
    assert (verdict.ok, verdict.batch_rows, verdict.checked) == (True, 10, 20)
    assert verdict.head == heads["B-1"]
    other = verify(store, batch="B-2", head=heads["B-1"])
    assert not other.ok and "not a row of batch B-2" in (other.problem or "")
    store.close()


def test_an_unknown_batch_does_not_verify(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    build(path)
    code, out = audit(capsys, path, "B-9")
    assert code == 6 and "batch B-9 has no row in the journal" in out


def test_a_missing_journal_is_exit_6_and_never_created(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "nowhere" / "j.sqlite"
    code, out = audit(capsys, path)
    assert code == 6
    assert f"journal {path}: no such file" in out
    assert not (tmp_path / "nowhere").exists()


def test_a_missing_key_file_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    build(path)
    code, out = audit(capsys, path, "--key-file", str(tmp_path / "no.key"))
    assert code == 1 and "no.key" in out


def test_verify_does_not_write(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    build(path)
    before = path.read_bytes()
    assert verify(SqliteStore(path, readonly=True)).ok
    assert path.read_bytes() == before
    assert json.loads(next(SqliteStore(path, readonly=True).rows()).body)["recipe"] == "press-fit"


def test_a_unique_prefix_names_the_batch_and_an_ambiguous_one_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    heads = build(path)
    code, out = audit(capsys, path, "B-", "--head", heads["B-1"])
    assert code == 1 and "batch 'B-' is ambiguous" in out and "B-1, B-2" in out, out
    SqliteStore(path).append([NewRow("B-1234", "2027-01-01T00:00:00.000000Z", "notice", "{}")])
    code, out = audit(capsys, path, "B-12")
    assert code == 0, out
    assert "batch B-1234: 1 row, head" in out


def test_a_head_that_is_not_a_hash_is_bad_input_not_a_broken_chain(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "j.sqlite"
    heads = build(path)
    code, out = audit(capsys, path, "--head", heads["all"][:12])  # cut short when copied
    assert code == 1
    assert "a head hash is 64 hexadecimal digits" in out and "Traceback" not in out
