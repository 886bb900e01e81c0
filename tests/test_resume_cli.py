"""`cellctl resume` and `cellctl run` before any device: the unfinished batch found in a real
journal (the latest, or the one named), a recipe file edited since the batch ran refused
naming both hashes, a batch whose process still runs refused, nothing to resume said, and a
new `run` on a cell with an unfinished batch refused naming it and the resume command."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from cellctl.control.journal.events import call_intent_body, intent_body
from cellctl.control.journal.recorder import file_sha256
from cellctl.control.journal.rows import Kind, canonical_json
from cellctl.control.journal.store import NewRow, SqliteStore
from cellctl.control.journal.verify import verify
from cellctl.control.resume import UnfinishedBatchFirst, refuse_unfinished, unfinished_batches
from cellctl.testing import cli

DEMO = Path(__file__).resolve().parent.parent / "recipes" / "demo"


def add(journal: Path, batch: str, kind: str, body: dict[str, Any]) -> None:
    store = SqliteStore(journal)
    try:
        store.append([NewRow(batch, "2026-12-06T10:00:00.000000Z", kind, canonical_json(body))])
    finally:
        store.close()


def started(recipe: Path, **more: Any) -> dict[str, Any]:
    body = {
        "cell": "demo",
        "cell_file": str(DEMO / "cell.yaml"),
        "recipe": "press-fit",
        "version": 4,
        "recipe_file": str(recipe),
        "recipe_sha256": file_sha256(recipe),
        "parameters": {"force_kN": 12.0, "parts": 3, "speed_rpm": 1200},
        "operator": "ann",
        "pid": 999_999_999,  # no such process: it crashed
        "host": socket.gethostname(),
    }
    body.update(more)
    return body


@pytest.fixture
def recipe(tmp_path: Path) -> Path:
    copy = tmp_path / "press-fit.yaml"
    copy.write_bytes((DEMO / "press-fit.yaml").read_bytes())
    return copy


def test_unfinished_batches_are_those_without_an_end(tmp_path: Path, recipe: Path) -> None:
    journal = tmp_path / "j.sqlite"
    for batch in ("B-1", "B-2", "B-3"):
        add(journal, batch, Kind.BATCH_STARTED, started(recipe))
    add(journal, "B-2", Kind.BATCH_ENDED, {"state": "Complete"})
    store = SqliteStore(journal, readonly=True)
    try:
        assert [b.batch for b in unfinished_batches(store)] == ["B-1", "B-3"]
    finally:
        store.close()


def test_run_is_refused_naming_the_unfinished_batch(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.sqlite"
    add(journal, "B-crashed", Kind.BATCH_STARTED, started(recipe))
    # It wrote (or may have written) to a device: an intent is on record.
    add(journal, "B-crashed", Kind.INTENT, intent_body("w1", "conveyor.run", True, "1", "feed"))
    result = cli(capsys, "run", recipe, "--cell", DEMO / "cell.yaml", "--journal", journal)
    assert result.exit_code == 7, result
    assert "batch B-crashed of cell demo (press-fit by ann) never ended" in result.err
    assert f"cellctl resume B-crashed --journal {journal}" in result.err


def test_a_batch_that_never_wrote_is_closed_as_abandoned_and_does_not_refuse(
    tmp_path: Path, recipe: Path
) -> None:
    # Killed while connecting (no intent on record): nothing to take up, nothing unknown.
    journal = tmp_path / "j.sqlite"
    add(journal, "B-gone", Kind.BATCH_STARTED, started(recipe))
    add(journal, "B-other", Kind.BATCH_STARTED, started(recipe, cell="other"))
    refuse_unfinished(journal, "demo")  # does not raise
    store = SqliteStore(journal, readonly=True)
    try:
        rows = list(store.rows("B-gone"))
        assert [b.batch for b in unfinished_batches(store)] == ["B-other"]  # another cell's
        assert verify(store).ok
    finally:
        store.close()
    assert [r.kind for r in rows] == [Kind.BATCH_STARTED, Kind.NOTICE, Kind.BATCH_ENDED]
    assert rows[-1].data()["state"] == "abandoned"
    assert "before it wrote to any device" in rows[1].data()["text"]


def test_a_recipe_edited_since_is_refused_naming_both_hashes(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.sqlite"
    add(journal, "B-crashed", Kind.BATCH_STARTED, started(recipe))
    ran = file_sha256(recipe)
    recipe.write_text(recipe.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    result = cli(capsys, "resume", "--journal", journal)
    assert result.exit_code == 1, result
    assert f"its SHA-256 is now {file_sha256(recipe)}, the batch ran {ran}" in result.err
    assert "Traceback" not in result.out + result.err


def test_a_batch_still_running_is_not_resumed(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.sqlite"
    add(journal, "B-running", Kind.BATCH_STARTED, started(recipe, pid=os.getppid()))
    result = cli(capsys, "resume", "B-run", "--journal", journal)
    assert result.exit_code == 7, result
    assert "batch B-running is running" in result.err


def test_nothing_to_resume(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.sqlite"
    add(journal, "B-done", Kind.BATCH_STARTED, started(recipe))
    add(journal, "B-done", Kind.BATCH_ENDED, {"state": "Complete"})
    latest = cli(capsys, "resume", "--journal", journal)
    assert latest.exit_code == 1 and "no unfinished batch in journal" in latest.err
    named = cli(capsys, "resume", "B-done", "--journal", journal)
    assert named.exit_code == 1 and "batch B-done ended" in named.err


def test_the_summary_of_a_resume_gives_the_batch_start_not_the_resume(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "j.sqlite"
    add(journal, "B-crashed", Kind.BATCH_STARTED, started(recipe, sim=True))
    add(journal, "B-crashed", Kind.INTENT, intent_body("w1", "conveyor.run", True, "1", "feed"))
    result = cli(capsys, "resume", "--journal", journal, "--sim", "--choice", "abort")
    assert result.exit_code == 3, result  # Aborted
    assert "outcome: Aborted" in result.out
    assert "on fresh simulators: the state of the ones the batch ran on died" in result.out
    at = time.mktime(time.strptime("2026-12-06 10:00:00", "%Y-%m-%d %H:%M:%S")) - time.timezone
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(at))
    assert f"started: {when}" in result.out, result.out


def test_call_intent_ids_go_on_after_a_resume(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Killed inside step 2.2 pick (a call) of round 1: its intent c1 on disk, no answer.
    journal = tmp_path / "j.sqlite"
    add(journal, "B-c", Kind.BATCH_STARTED, started(recipe, sim=True))
    add(journal, "B-c", Kind.STEP_STARTED, {"path": "1", "step_id": "start-conveyor"})
    for n, (tag, value) in enumerate([("conveyor.speed_rpm", 1200), ("conveyor.run", True)]):
        # Confirmed: Unholding restores them (the conveyor runs again).
        add(journal, "B-c", Kind.INTENT, intent_body(f"w{n + 1}", tag, value, "1", "s"))
        add(journal, "B-c", Kind.CONFIRMED, {"intent": f"w{n + 1}", "ok": True})
    add(journal, "B-c", Kind.STEP_ENDED, {"path": "1", "outcome": "done"})
    add(journal, "B-c", Kind.STEP_STARTED, {"path": "2", "step_id": "cycle"})
    add(journal, "B-c", Kind.STEP_STARTED, {"path": "2.1", "step_id": "wait-part", "round": 1})
    add(journal, "B-c", Kind.STEP_ENDED, {"path": "2.1", "outcome": "done"})
    add(journal, "B-c", Kind.STEP_STARTED, {"path": "2.2", "step_id": "pick", "round": 1})
    body = call_intent_body("c1", "robot.pick", {"slot": 1}, "2.2", "pick")
    add(journal, "B-c", Kind.CALL_INTENT, body)
    result = cli(
        capsys, "resume", "--journal", journal, "--sim", "--speed", "20", "--choice", "skip"
    )
    assert "robot.pick was called or not: unknown" in result.out, result
    assert result.exit_code == 0, result
    store = SqliteStore(journal, readonly=True)
    try:
        ids = [r.data()["intent"] for r in store.rows("B-c") if r.kind == Kind.CALL_INTENT]
    finally:
        store.close()
    # Round 1 goes on with place, rounds 2 and 3 call pick and place: c2..c6, never c1 again.
    assert ids == ["c1", "c2", "c3", "c4", "c5", "c6"], ids


def test_a_resume_left_held_says_the_batch_stays_unfinished_not_ended(
    tmp_path: Path, recipe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Killed in step 2.1 wait-part of round 1, after step 1 ended done; no --choice: left Held.
    journal = tmp_path / "j.sqlite"
    add(journal, "B-h", Kind.BATCH_STARTED, started(recipe, sim=True))
    add(journal, "B-h", Kind.STEP_STARTED, {"path": "1", "step_id": "start-conveyor"})
    add(journal, "B-h", Kind.STEP_ENDED, {"path": "1", "outcome": "done"})
    add(journal, "B-h", Kind.STEP_STARTED, {"path": "2", "step_id": "cycle"})
    add(journal, "B-h", Kind.STEP_STARTED, {"path": "2.1", "step_id": "wait-part", "round": 1})
    held = cli(capsys, "resume", "--journal", journal, "--sim")
    assert held.exit_code == 3, held
    lines = held.out.splitlines()
    assert "batch ended" not in held.out and not any(x.startswith("ended:") for x in lines)
    assert any(" batch stays Held, unfinished, " in x for x in lines), held.out
    assert "outcome: Held, unfinished" in lines
    assert "steps: 1 done, 0 skipped, 0 failed" in lines, held.out  # step 1, before the crash
    assert "unfinished: the batch stays unfinished and Held (no end recorded)" in lines
    assert f"resume: cellctl resume B-h --journal {journal} --choice retry|skip|continue|abort" in (
        lines
    )
    store = SqliteStore(journal, readonly=True)
    try:
        assert not [r for r in store.rows("B-h") if r.kind == Kind.BATCH_ENDED]
    finally:
        store.close()


def test_the_resume_command_named_in_a_refusal_copies_whole_with_a_space_in_the_path(
    tmp_path: Path, recipe: Path
) -> None:
    folder = tmp_path / "night shift"
    folder.mkdir()
    journal = folder / "j.sqlite"
    add(journal, "B-crashed", Kind.BATCH_STARTED, started(recipe))
    add(journal, "B-crashed", Kind.INTENT, intent_body("w1", "conveyor.run", True, "1", "feed"))
    with pytest.raises(UnfinishedBatchFirst) as refused:
        refuse_unfinished(journal, "demo")
    assert f"cellctl resume B-crashed --journal '{journal}'" in str(refused.value)
