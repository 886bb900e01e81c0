"""The batch record on the simulators: `cellctl run --sim` on the demo cell writes its batch to
the journal (batch_started first, every write's intent before its confirmation, batch_ended
last), `audit verify` holds it with the head hash the summary printed, and `cellctl write` to
the served cell is recorded (who, what, confirmed)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.control.journal.rows import Kind
from cellctl.control.journal.store import SqliteStore
from cellctl.testing import cli, serve

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"


@pytest.fixture(scope="module")
def served_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The demo cell on its simulators; the file pointing at them."""
    with serve(DEMO / "cell.yaml", tmp_path_factory.mktemp("demo"), speed=8.0) as served:
        yield served.cell_file


def test_a_sim_run_is_recorded_and_verifies(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "journal.sqlite"
    code, out, err = cli(
        capsys,
        "run",
        DEMO / "press-fit.yaml",
        "--sim",
        "--speed",
        "8",
        "--param",
        "parts=1",
        "--operator",
        "night shift",
        "--journal",
        journal,
    )
    assert code == 0, err
    batch = re.search(r"^batch: (B-\d{8}-\d{6}-[0-9a-f]{4})$", out, re.MULTILINE)
    head = re.search(r"^head hash: ([0-9a-f]{64})$", out, re.MULTILINE)
    assert batch is not None and head is not None, out
    assert f"report: cellctl report {batch.group(1)} --journal {journal}" in out
    store = SqliteStore(journal, readonly=True)
    try:
        rows = list(store.rows(batch.group(1)))
    finally:
        store.close()
    kinds = [r.kind for r in rows]
    assert kinds[0] == Kind.BATCH_STARTED and kinds[-1] == Kind.BATCH_ENDED
    assert rows[-1].hash == head.group(1)
    started = rows[0].data()
    assert (started["recipe"], started["operator"], started["parameters"]["parts"]) == (
        "press-fit",
        "night shift",
        1,
    )
    assert rows[-1].data()["exit_code"] == 0 and rows[-1].data()["state"] == "Complete"
    # Parts made: the press simulator's own cycle count, read before Start and after the end,
    # moved by the one part the batch made.
    ended = rows[-1].data()
    assert (ended["parts"], ended["parts_counter"]) == (1, "press.cycles"), ended
    assert ended["parts_end"] - ended["parts_start"] == 1
    parts = f"parts: 1 (press.cycles {ended['parts_start']} -> {ended['parts_end']})"
    assert parts in out.splitlines(), out
    # Writes and calls (device actions both): each confirmed, in the order sent.
    intents = [r.data()["intent"] for r in rows if r.kind in (Kind.INTENT, Kind.CALL_INTENT)]
    confirmed = [r.data()["intent"] for r in rows if r.kind == Kind.CONFIRMED]
    assert intents and confirmed == intents
    assert Kind.CALL_INTENT in kinds and Kind.CALL in kinds and Kind.STEP_ENDED in kinds
    code, out, err = cli(
        capsys, "audit", "verify", batch.group(1), "--head", head.group(1), "--journal", journal
    )
    assert code == 0, out + err


def test_write_is_recorded(
    served_demo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    journal = tmp_path / "journal.sqlite"
    monkeypatch.chdir(served_demo.parent)  # the cell file named as most people type it
    code, _, err = cli(
        capsys,
        "write",
        "--cell",
        served_demo.name,
        "--operator",
        "ana",
        "--journal",
        journal,
        "conveyor.speed_rpm=1234",
    )
    assert code == 0, err
    store = SqliteStore(journal, readonly=True)
    try:
        rows = list(store.rows())
    finally:
        store.close()
    assert [r.kind for r in rows] == [Kind.WRITE, Kind.CONFIRMED]
    assert all(r.batch is None for r in rows)
    wrote, confirmed = rows[0].data(), rows[1].data()
    assert (wrote["tag"], wrote["value"], wrote["operator"], wrote["cell"]) == (
        "conveyor.speed_rpm",
        1234,
        "ana",
        "demo",
    )
    assert wrote["os_user"] and wrote["pid"] > 0 and rows[0].at
    assert wrote["cell_file"] == str(served_demo.resolve())
    assert (confirmed["intent"], confirmed["ok"], confirmed["error"]) == (
        wrote["intent"],
        True,
        None,
    )


def test_write_with_a_journal_that_cannot_be_opened_writes_nothing(
    served_demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "folder"
    journal.mkdir()
    before = cli(capsys, "read", "--cell", served_demo, "--json", "conveyor.speed_rpm")
    code, out, err = cli(
        capsys, "write", "--cell", served_demo, "--journal", journal, "conveyor.speed_rpm=777"
    )
    assert code == 6 and str(journal) in err and out == ""
    after = cli(capsys, "read", "--cell", served_demo, "--json", "conveyor.speed_rpm")
    assert json.loads(after.out)[0]["value"] == json.loads(before.out)[0]["value"] != 777
