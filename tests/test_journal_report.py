"""Reading the batch record: the read model (`BatchRecord`, `history`), `cellctl history` and
`cellctl report` (text, JSON against the shipped schemas, HTML structure), on journals made by
running real batches on the memory driver and recording their events through `rows_for`.

Two batches: B-0001 runs to Complete through an interlock trip (a hold, a refused Unhold, the
safe state, the operator's Unhold, a prompt); B-0002 is the same recipe cut short between a
write's intent and its confirmation, as a SIGKILL leaves it (unfinished, unknown outcome).
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from rich.cells import cell_len
from rich.console import Console

from cellctl import cli
from cellctl.cell import cell_from_document
from cellctl.cli import consoles
from cellctl.control import events as ev
from cellctl.control.controller import CommandBlocked, Controller
from cellctl.control.journal.events import (
    batch_started_body,
    command_body,
    confirmation_body,
    intent_body,
    rows_for,
)
from cellctl.control.journal.record import (
    CONFIRMED,
    UNFINISHED,
    UNKNOWN,
    UnknownBatch,
    batch_record,
    history,
    load_schema,
)
from cellctl.control.journal.rows import Kind, canonical_json, format_at
from cellctl.control.journal.store import NewRow, SqliteStore
from cellctl.control.journal.verify import verify
from cellctl.control.machine import Command, State
from cellctl.control.operator import ScriptedOperator
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe, RecipeIdentity, parse_parameters, recipe_from_document
from cellctl.testing import wait_until
from cellctl.yamlload import parse_yaml
from drivers.config import MemoryConfig
from drivers.memory import MemoryDriver

DEADLINE = 5.0
SCRIPT = "<script>alert('x')</script>"

CELL = b"""\
cell: bench
devices:
  line:  {driver: memory}
tags:
  safety.ok:  {device: line, type: bool}
  line.done:  {device: line, type: bool}
  line.run:   {device: line, type: bool, access: rw}
  line.speed: {device: line, type: uint16, access: rw}
  line.count: {device: line, type: uint16, access: rw}
  line.label: {device: line, type: string, access: rw}
interlocks:
  - {name: curtain, when: "not safety.ok", action: hold}
safe_state:
  line.run: false
  line.speed: 0
"""

RECIPE = """\
recipe: press-run
version: 3
parameters:
  speed: {type: int, default: 100, min: 1, max: 500}
  note:  {type: str, default: "<script>alert('x')</script>"}
steps:
  - {id: go, set: {line.run: true, line.speed: speed}}
  - {id: label, set: {line.label: note}}
  - id: ask
    prompt: "How many <parts>?"
    answer: {name: qty, type: int, min: 1, max: 9}
  - {id: count, set: {line.count: qty}}
  - {id: finish, wait: line.done, timeout: 5s}
"""

B1, B2 = "B-0001", "B-0002"


class Recorder:
    """Turns a controller's events into journal rows, as the recorder of `run` will: each
    recipe write (a TagWritten with a path) as an intent row and its confirmation row."""

    def __init__(self, batch: str) -> None:
        self.batch = batch
        self.rows: list[NewRow] = []
        self.step_of: dict[str, str | None] = {}
        self.intents = 0

    def add(self, kind: str, body: dict[str, Any], at: float | None = None) -> None:
        stamp = format_at(time.time() if at is None else at)
        self.rows.append(NewRow(self.batch, stamp, kind, canonical_json(body)))

    def heard(self, event: ev.Event) -> None:
        if isinstance(event, ev.StepStarted):
            self.step_of[event.path] = event.step_id
        if isinstance(event, ev.TagWritten) and event.path is not None:
            self.intents += 1
            intent = f"{self.batch}/w{self.intents}"
            step = self.step_of.get(event.path)
            self.add(Kind.INTENT, intent_body(intent, event.tag, event.value, event.path, step))
            self.add(Kind.CONFIRMED, confirmation_body(intent, True, None), event.at)
            return
        for kind, body in rows_for(event):
            if kind == Kind.BATCH_ENDED:
                body["parts_made"] = 1
            self.add(kind, body, event.at)


async def _run_batch(recorder: Recorder) -> None:
    """A batch to Complete on a memory cell: a trip holds it, Unhold is refused while the
    trip stands, the operator Unholds once it clears."""
    cell = cell_from_document(parse_yaml(CELL, "cell.yaml"))
    line = MemoryDriver(MemoryConfig("line"))
    line.set_device_value("safety.ok", True)
    tag_io = TagIO(cell, {"line": line}, list(cell.tags))
    recipe = recipe_from_document(parse_yaml(RECIPE.encode(), "r.yaml"), cell)
    loaded = LoadedRecipe(Path("r.yaml"), recipe, cell, RecipeIdentity("press-run", 3, "a" * 64))
    parameters = parse_parameters(recipe, ["speed=120"])
    recorder.add(
        Kind.BATCH_STARTED,
        batch_started_body(
            cell="bench",
            cell_sha256="c" * 64,
            recipe="press-run",
            version=3,
            recipe_sha256="a" * 64,
            parameters=parameters,
            operator="alice",
            mode="Production",
        ),
    )
    events: list[ev.Event] = []

    def heard(event: ev.Event) -> None:
        events.append(event)
        recorder.heard(event)

    ctl = Controller(
        loaded,
        parameters,
        tag_io,
        ScriptedOperator({"ask": 7}, name="alice"),
        listener=heard,
        comm_devices=["line"],
    )
    await tag_io.connect()
    await ctl.open()
    try:
        batch = asyncio.create_task(ctl.run_batch(stop_when_held=lambda: False))
        await wait_until(
            lambda: any(isinstance(e, ev.WaitProgress) and e.step_id == "finish" for e in events)
        )
        line.set_device_value("safety.ok", False)
        await asyncio.wait_for(ctl.wait_for({State.HELD}), DEADLINE)
        recorder.add(Kind.COMMAND, command_body("Unhold", "alice", "test"))
        with pytest.raises(CommandBlocked):
            await ctl.command(Command.UNHOLD)
        line.set_device_value("safety.ok", True)
        await wait_until(lambda: any(isinstance(e, ev.TripCleared) for e in events))
        recorder.add(Kind.COMMAND, command_body("Unhold", "alice", "test"))
        await ctl.command(Command.UNHOLD)
        await wait_until(lambda: any(isinstance(e, ev.WaitProgress) for e in events[-3:]))
        line.set_device_value("line.done", True)
        ended = await asyncio.wait_for(batch, DEADLINE)
        assert ended.state is State.COMPLETE
    finally:
        await ctl.close()
        await tag_io.close()


def _cut_after_intent(rows: list[NewRow], tag: str) -> list[NewRow]:
    """The rows up to and with the intent of the write of `tag`: a SIGKILL after the intent
    was on disk and before the device's answer was."""
    for n, row in enumerate(rows):
        if row.kind == Kind.INTENT and json.loads(row.body)["tag"] == tag:
            return rows[: n + 1]
    raise AssertionError(f"no intent to write {tag}")


def make_journal(path: Path) -> Path:
    """A journal holding B-0001 (Complete through a hold) and B-0002 (unfinished, a write of
    unknown outcome), with a `cellctl write` row of no batch between them."""
    first, second = Recorder(B1), Recorder(B2)
    asyncio.run(_run_batch(first))
    asyncio.run(_run_batch(second))
    store = SqliteStore(path)
    try:
        store.append(first.rows)
        outside = {"tag": "line.run", "value": False, "operator": "bob", "ok": True}
        store.append([NewRow(None, format_at(time.time()), Kind.WRITE, canonical_json(outside))])
        store.append(_cut_after_intent(second.rows, "line.count"))
    finally:
        store.close()
    return path


@pytest.fixture(scope="module")
def journal(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The two-batch journal, made once for the module (read-only from here on)."""
    return make_journal(tmp_path_factory.mktemp("journal") / "journal.sqlite")


@pytest.fixture
def store(journal: Path) -> Iterator[SqliteStore]:
    opened = SqliteStore(journal, readonly=True)
    yield opened
    opened.close()


@pytest.fixture
def screen(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    """The CLI's stdout as an 80-column terminal."""
    stream = io.StringIO()
    console = Console(
        file=stream, width=80, force_terminal=True, color_system=None, highlight=False,
        soft_wrap=True, emoji=False,
    )  # fmt: skip
    monkeypatch.setattr(consoles, "out", console)
    return stream


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.run(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- the read model -----------------------------------------------------------------------


def test_a_finished_batch_reads_back_whole(store: SqliteStore) -> None:
    rec = batch_record(store, B1)
    assert (rec.batch, rec.cell, rec.recipe, rec.version, rec.operator, rec.mode) == (
        B1, "bench", "press-run", 3, "alice", "Production",
    )  # fmt: skip
    assert rec.parameters == {"speed": 120, "note": SCRIPT}
    ended = (rec.outcome, rec.unfinished, rec.parts_made, rec.steps_done)
    assert ended == ("Complete", False, 1, 5)
    assert rec.start is not None and rec.end is not None and rec.start < rec.end
    assert rec.duration is not None and rec.duration > 0
    # Steps in order; the wait cut by the hold is a run of its own, re-entered after Unhold.
    assert [(s.step_id, s.outcome) for s in rec.steps] == [
        ("go", "done"), ("label", "done"), ("ask", "done"), ("count", "done"),
        ("finish", "interrupted"), ("finish", "done"),
    ]  # fmt: skip
    assert all(s.end is not None and s.start <= s.end for s in rec.steps)
    # One hold, from the trip to Unholding, caused by the curtain; the trip cleared within it.
    [hold] = rec.holds
    [trip] = rec.trips
    assert hold.interlock == "curtain" and hold.end is not None and hold.start < hold.end
    assert (trip.interlock, trip.action) == ("curtain", "hold")
    assert trip.cleared is not None and hold.start <= trip.cleared <= hold.end
    assert [(c.command, c.operator) for c in rec.commands] == [("Unhold", "alice")] * 2
    assert [(r.command, r.blocked) for r in rec.refusals] == [("Unhold", True)]
    assert [s.reason for s in rec.safe_states] == ["Holding"] and rec.safe_states[0].ok
    assert [(p.step_id, p.answer, p.answered_at is not None) for p in rec.prompts] == [
        ("ask", 7, True)
    ]
    # Every recipe write paired with its confirmation; Resetting's confirmed with no intent.
    recipe_writes = [(w.tag, w.value, w.step_id, w.outcome) for w in rec.writes if w.intent]
    assert recipe_writes == [
        ("line.run", True, "go", CONFIRMED), ("line.speed", 120, "go", CONFIRMED),
        ("line.label", SCRIPT, "label", CONFIRMED), ("line.count", 7, "count", CONFIRMED),
    ]  # fmt: skip
    assert all(
        w.intent_at is not None and w.confirmed_at is not None for w in rec.writes if w.intent
    )
    assert {w.tag for w in rec.writes if not w.intent} == {"line.run", "line.speed"}
    assert rec.unknown_writes == []
    # Faults and operator actions are flagged in the timeline, in time order.
    flagged = {(e.kind, e.flag) for e in rec.timeline if e.flag}
    assert {("trip", "fault"), ("command", "operator"), ("refused", "operator")} <= flagged
    offsets = [e.offset for e in rec.timeline]
    assert offsets[0] == 0 and all(o >= 0 for o in offsets)
    # The head is the batch's last row, as audit verify names it.
    assert rec.head == verify(store, batch=B1).head and rec.rows == verify(store, B1).batch_rows


def test_a_batch_cut_between_intent_and_confirmation_is_unfinished_with_an_unknown_write(
    store: SqliteStore,
) -> None:
    rec = batch_record(store, B2)
    assert (rec.outcome, rec.unfinished, rec.end, rec.duration) == (UNFINISHED, True, None, None)
    [unknown] = rec.unknown_writes
    assert (unknown.tag, unknown.value, unknown.step_id, unknown.outcome) == (
        "line.count", 7, "count", UNKNOWN,
    )  # fmt: skip
    assert unknown.intent_at is not None and unknown.confirmed_at is None
    # The step it was in has not ended; the last line says the batch never did.
    assert rec.steps[-1].step_id == "count" and rec.steps[-1].end is None
    assert rec.timeline[-1].kind == "unfinished" and "never ended" in rec.timeline[-1].text
    assert rec.head == rec.head and rec.last_row_at is not None


def test_history_is_newest_first_and_skips_rows_of_no_batch(store: SqliteStore) -> None:
    summaries = history(store)
    assert [(s.batch, s.outcome, s.parts_made) for s in summaries] == [
        (B2, UNFINISHED, None),
        (B1, "Complete", 1),
    ]
    assert [s.batch for s in history(store, last=1)] == [B2]
    assert summaries[1].recipe == "press-run" and summaries[1].version == 3


def test_a_batch_is_found_by_a_unique_prefix_and_an_unknown_one_named(store: SqliteStore) -> None:
    assert batch_record(store, "B-0001").batch == B1
    with pytest.raises(UnknownBatch, match=r"ambiguous .*B-0001, B-0002"):
        batch_record(store, "B-000")
    with pytest.raises(UnknownBatch, match=rf"no batch 'B-9' in journal {store.where}"):
        batch_record(store, "B-9")


# --- the commands -------------------------------------------------------------------------


def test_history_table_fits_80_columns(journal: Path, screen: io.StringIO) -> None:
    assert cli.run(["history", "--journal", str(journal)]) == 0
    lines = screen.getvalue().rstrip("\n").split("\n")
    assert all(cell_len(line) <= 80 for line in lines), lines
    text = screen.getvalue()
    for word in ("batch", "recipe", "outcome", "start", "took", "operator", "parts"):
        assert word in lines[0]
    assert B1 in text and B2 in text and "press-run v3" in text
    assert text.index(B2) < text.index(B1)  # newest first
    assert "unfinished" in text and "Complete" in text and "alice" in text


def test_history_of_an_empty_journal_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "journal.sqlite"
    SqliteStore(empty).close()
    code, out, _ = _cli(["history", "--journal", str(empty)], capsys)
    assert (code, out.strip()) == (0, f"no batch in journal {empty}")
    code, out, _ = _cli(["history", "--json", "--journal", str(empty)], capsys)
    assert (code, json.loads(out)) == (0, [])


def test_history_json_matches_its_schema(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["history", "--json", "--last", "5", "--journal", str(journal)], capsys)
    assert code == 0
    data = json.loads(out)
    jsonschema.validate(data, load_schema("history"))
    assert [d["batch"] for d in data] == [B2, B1]
    assert data[0]["end"] is None and data[1]["parts_made"] == 1


def test_report_json_matches_its_schema_and_the_read_model(
    journal: Path, store: SqliteStore, capsys: pytest.CaptureFixture[str]
) -> None:
    for batch in (B1, B2):
        code, out, _ = _cli(
            ["report", batch, "--format", "json", "--journal", str(journal)], capsys
        )
        assert code == 0
        data = json.loads(out)
        jsonschema.validate(data, load_schema("report"))
        assert data == json.loads(json.dumps(batch_record(store, batch).to_json()))


def test_the_schemas_are_valid_and_reject_a_wrong_shape(store: SqliteStore) -> None:
    for name in ("history", "report"):
        jsonschema.Draft202012Validator.check_schema(load_schema(name))
    data = batch_record(store, B1).to_json()
    data["writes"][0]["outcome"] = "maybe"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(data, load_schema("report"))


def test_report_text_identity_on_top_then_the_timeline(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _cli(["report", B1, "--journal", str(journal)], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"batch      {B1}"
    assert lines[1].startswith("recipe     press-run v3")
    head = next(line for line in lines if line.startswith("head"))
    assert "rows)" in head
    assert "  note   " + SCRIPT in out and "  speed  120" in out
    timeline = lines[lines.index("timeline (offset from start; ! fault, > operator action)") + 1 :]
    assert any(" ! trip curtain (hold)" in line for line in timeline)
    assert any(" > command Unhold by alice" in line for line in timeline)
    assert "UNKNOWN OUTCOME" not in out
    code, out, _ = _cli(["report", B2, "--journal", str(journal)], capsys)
    assert "end        UNFINISHED" in out
    assert "writes of UNKNOWN OUTCOME" in out and "line.count := 7  step count" in out


def test_report_of_an_unknown_batch_is_exit_1_naming_it_and_the_journal(
    journal: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _cli(["report", "B-9999", "--journal", str(journal)], capsys)
    assert code == 1
    assert "B-9999" in err and str(journal) in err


@pytest.mark.parametrize("argv", [["history"], ["report", B1], ["report", B1, "--format", "html"]])
def test_a_missing_journal_is_exit_6_naming_it_and_never_made(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    missing = tmp_path / "none" / "journal.sqlite"
    code, out, err = _cli([*argv, "--journal", str(missing)], capsys)
    assert code == 6
    assert str(missing) in err and out == ""
    assert not missing.parent.exists()


def test_report_to_a_file(
    journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "b1.html"
    argv = ["report", B1, "--format", "html", "-o", str(target), "--journal", str(journal)]
    code, out, err = _cli(argv, capsys)
    assert code == 0 and out == "" and str(target) in err
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    code, _, err = _cli([*argv[:-3], "-o", str(tmp_path), "--journal", str(journal)], capsys)
    assert code == 1 and str(tmp_path) in err


def test_the_web_view_reads_the_report_and_history_the_cli_prints(
    journal: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """cellctl.reports' report_html_of and history_json (what /history/{batch}/report and
    /api/history serve): the CLI's own output, the journal only read."""
    from cellctl.control.journal.store import JournalUnavailable
    from cellctl.reports import history_json, report_html_of

    before = journal.read_bytes()
    for batch in (B1, B2):
        page = tmp_path / f"{batch}.html"
        argv = ["report", batch, "--format", "html", "-o", str(page), "--journal", str(journal)]
        assert _cli(argv, capsys)[0] == 0
        assert report_html_of(journal, batch) == page.read_text(encoding="utf-8")
    # None for what names no batch: an unknown id, an empty one, and a prefix (here of both
    # batches) that `cellctl report` would take: a link names one whole batch id.
    assert report_html_of(journal, "B-9999") is None
    assert report_html_of(journal, "") is None
    assert report_html_of(journal, "B-000") is None
    code, out, _ = _cli(["history", "--json", "--last", "1", "--journal", str(journal)], capsys)
    assert code == 0 and history_json(journal, 1) == json.loads(out)
    data = history_json(journal, 5)
    jsonschema.validate(data, load_schema("history"))
    assert [d["batch"] for d in data] == [B2, B1] and history_json(journal, 0) == []
    assert journal.read_bytes() == before
    # A missing journal is an error naming it, and is never made.
    missing = tmp_path / "none" / "journal.sqlite"
    with pytest.raises(JournalUnavailable, match="no such file"):
        report_html_of(missing, B1)
    with pytest.raises(JournalUnavailable, match="no such file"):
        history_json(missing, 5)
    assert not missing.parent.exists()


# --- the HTML -------------------------------------------------------------------------------


class Page(HTMLParser):
    """What a report page holds: its elements (tag, attributes, the text inside), tables."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.stack: list[str] = []
        self.texts: list[tuple[tuple[str, ...], str]] = []
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))
        self.urls += [v for k, v in attrs if k in ("href", "src") and v]
        if tag not in ("meta", "br", "img", "input", "link"):
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag: str) -> None:
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data: str) -> None:
        self.texts.append((tuple(self.stack), data))

    def of(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        return [
            a for t, a in self.elements
            if t == tag and (cls is None or cls in (a.get("class") or "").split())
        ]  # fmt: skip

    def text_in(self, tag: str) -> str:
        return "".join(data for stack, data in self.texts if tag in stack)


def _page(store: SqliteStore, batch: str) -> tuple[str, Page]:
    from cellctl.reports import report_html

    text = report_html(batch_record(store, batch))
    page = Page()
    page.feed(text)
    page.close()
    return text, page


def test_html_is_one_self_contained_page_with_a_gantt_and_the_writes(store: SqliteStore) -> None:
    rec = batch_record(store, B1)
    text, page = _page(store, B1)
    # Self-contained: no script, no link, no URL to fetch (the SVG namespace is a name only).
    assert page.of("script") == [] and page.of("link") == [] and page.urls == []
    assert "url(http" not in text and "@import" not in text
    assert len(page.of("style")) == 1 and len(page.of("svg")) == 1
    # A rect per step run, each of positive width, in the steps' order; the hold shaded.
    steps = page.of("rect", "step")
    assert [a["data-path"] for a in steps] == [s.path for s in rec.steps]
    assert all(float(a["width"] or 0) > 0 and float(a["height"] or 0) > 0 for a in steps)
    assert len(page.of("rect", "hold")) == 1
    assert len(page.of("line", "trip")) == 1 and "TRIP curtain" in page.text_in("svg")
    for step in rec.steps:
        assert step.step_id is not None and step.step_id in page.text_in("svg")
    # Identity and parameters on top, before the timeline.
    assert text.index("press-run") < text.index("<svg")
    assert text.index("Parameters") < text.index("<svg")
    # The writes table: one row per write, a header with the asked columns.
    [writes] = page.of("table", "writes")
    assert writes is not None
    body = page.text_in("table")
    for column in ("Tag", "Value", "Step", "Intent (UTC)", "Confirmation (UTC)", "Outcome"):
        assert column in body
    assert text.count("<tr><td><code>line.") + text.count("<tr class='fault'><td><code>line.") + (
        text.count("<tr class='unknown'><td><code>line.")
    ) == len(rec.writes)
    # Faults and operator actions carry a word, not only a colour.
    assert "⚠ FAULT" in text and "▶ OPERATOR" in text


def test_html_escapes_every_text_from_the_journal(store: SqliteStore) -> None:
    text, page = _page(store, B1)
    assert SCRIPT not in text and "<parts>" not in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert page.of("script") == [] and page.of("parts") == []
    # Read back, the text is the value itself.
    assert SCRIPT in page.text_in("table") and "How many <parts>?" in page.text_in("table")


def test_html_of_an_unfinished_batch_says_so_and_flags_the_unknown_write(
    store: SqliteStore,
) -> None:
    rec = batch_record(store, B2)
    text, page = _page(store, B2)
    assert "UNFINISHED" in text and "UNKNOWN OUTCOME" in text
    assert text.count("<tr class='unknown'>") == 1
    steps = page.of("rect", "step")
    assert len(steps) == len(rec.steps) and all(float(a["width"] or 0) > 0 for a in steps)
    assert "open" in (steps[-1]["class"] or "")


# --- rows as `run` and `resume` write them ------------------------------------------------

RUN_CELL = """\
cell: mcell
devices:
  m: {driver: memory}
tags:
  m.x:   {device: m, type: int32, access: rw}
  m.run: {device: m, type: bool, access: rw}
safe_state:
  m.run: false
"""
RUN_RECIPE = """\
recipe: quick
version: 2
parameters:
  n: {type: int, default: 5, min: 0, max: 100}
steps:
  - {id: a, set: {m.x: n, m.run: true}}
  - {id: c, wait: "m.x == n", timeout: 2s}
"""


def test_a_batch_recorded_by_cellctl_run_reads_back(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "cell.yaml").write_text(RUN_CELL)
    (tmp_path / "r.yaml").write_text(RUN_RECIPE)
    journal = tmp_path / "journal.sqlite"
    run = ["run", str(tmp_path / "r.yaml"), "--cell", str(tmp_path / "cell.yaml")]
    code, _, _ = _cli([*run, "-p", "n=9", "--operator", "ana", "--journal", str(journal)], capsys)
    assert code == 0
    code, out, _ = _cli(["history", "--json", "--journal", str(journal)], capsys)
    [summary] = json.loads(out)
    jsonschema.validate([summary], load_schema("history"))
    assert (summary["recipe"], summary["version"], summary["outcome"]) == ("quick", 2, "Complete")
    assert summary["operator"] == "ana"
    code, out, _ = _cli(
        ["report", summary["batch"], "--format", "json", "--journal", str(journal)], capsys
    )
    data = json.loads(out)
    jsonschema.validate(data, load_schema("report"))
    assert (data["cell"], data["parameters"], data["unfinished"]) == ("mcell", {"n": 9}, False)
    assert [(s["step_id"], s["outcome"]) for s in data["steps"]] == [("a", "done"), ("c", "done")]
    recipe_writes = [(w["tag"], w["value"], w["outcome"]) for w in data["writes"] if w["step_id"]]
    assert recipe_writes == [("m.x", 9, CONFIRMED), ("m.run", True, CONFIRMED)]
    store = SqliteStore(journal, readonly=True)
    try:
        assert data["head"] == verify(store, batch=summary["batch"]).head
    finally:
        store.close()


def test_an_unanswered_write_and_a_resume_read_as_unknown_and_crashed(tmp_path: Path) -> None:
    # As the recorder writes them: a confirmation row that says the device never answered
    # (unknown), then the rows of `cellctl resume` taking the batch up again.
    batch = "B-0003"
    rows: list[tuple[str, dict[str, Any]]] = [
        (Kind.BATCH_STARTED, {"recipe": "r", "version": 1, "parameters": {}, "operator": None}),
        (Kind.STEP_STARTED, {"path": "1", "step_id": "a", "label": "a", "step_kind": "set"}),
        (Kind.INTENT, intent_body("w1", "m.x", 1, "1", "a")),
        (Kind.CONFIRMED, {**confirmation_body("w1", False, "no answer in 1 s"), "unknown": True}),
        (Kind.INTENT, intent_body("w2", "m.y", 2, "1", "a")),
        # As `cellctl resume` writes it: a notice marked resumed, its point inside.
        (
            Kind.NOTICE,
            {
                "text": "resumed by ann",
                "level": "warning",
                "resumed": True,
                "operator": "ann",
                "point": {"path": "1", "step_id": "a", "unknown": [{"intent": "w2"}]},
            },
        ),
        (Kind.STEP_STARTED, {"path": "1", "step_id": "a", "label": "a", "step_kind": "set"}),
    ]
    store = SqliteStore(tmp_path / "journal.sqlite")
    try:
        store.append([NewRow(batch, format_at(time.time()), k, canonical_json(b)) for k, b in rows])
        rec = batch_record(store, batch)
    finally:
        store.close()
    assert [(w.tag, w.outcome, w.error) for w in rec.writes] == [
        ("m.x", UNKNOWN, "no answer in 1 s"),
        ("m.y", UNKNOWN, None),
    ]
    assert [(s.step_id, s.outcome) for s in rec.steps] == [("a", "crashed"), ("a", None)]
    assert rec.resumed and rec.resumed[0]["point"]["step_id"] == "a"
    assert rec.unfinished and any("resumed at step a by ann" in e.text for e in rec.timeline)
    jsonschema.validate(rec.to_json(), load_schema("report"))


@pytest.mark.parametrize("fmt", ["text", "html"])
def test_the_verify_command_a_report_prints_verifies_its_journal(
    journal: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    # The journal is not the default one: the command names it, so it can be run as printed.
    code, out, _ = _cli(["report", B1, "--format", fmt, "--journal", str(journal)], capsys)
    assert code == 0
    command = out.split("cellctl audit verify ", 1)[1].split("\n", 1)[0].split("<", 1)[0]
    code, said, err = _cli(["audit", "verify", *command.split()], capsys)
    assert code == 0, err
    assert f"journal {journal}: batch {B1}" in said


def test_history_table_holds_a_real_batch_id_and_the_recipe_unfolded_on_80_columns(
    tmp_path: Path, screen: io.StringIO
) -> None:
    journal = tmp_path / "real.sqlite"
    batch = "B-20261206-142644-be24"  # as `run` names them
    now = time.time()
    store = SqliteStore(journal)
    try:
        started = {"recipe": "press-fit", "version": 4, "operator": "nights", "cell": "demo"}
        ended = {"state": "Complete", "duration": 22.3, "parts": 3}
        store.append(
            [
                NewRow(batch, format_at(now - 23), Kind.BATCH_STARTED, canonical_json(started)),
                NewRow(batch, format_at(now), Kind.BATCH_ENDED, canonical_json(ended)),
            ]
        )
    finally:
        store.close()
    assert cli.run(["history", "--journal", str(journal)]) == 0
    lines = screen.getvalue().rstrip("\n").split("\n")
    assert len(lines) == 2, lines  # the header and one line: nothing folded
    assert all(cell_len(line) <= 80 for line in lines), lines
    assert batch in lines[1] and "press-fit v4" in lines[1] and "nights" in lines[1]
    assert time.strftime("%m-%d ", time.gmtime(now - 23)) in lines[1]


@pytest.mark.parametrize(
    ("seconds", "long", "short"),
    [
        (None, "-", "-"),
        (4.24, "4.2 s", "4.2s"),
        (723, "12 min 03 s", "12m03s"),
        (7500, "2 h 05 min", "2h05m"),
        (31 * 3600 + 59, "31 h 00 min", "31h"),
    ],
)
def test_a_duration_reads_the_same_long_or_short(
    seconds: float | None, long: str, short: str
) -> None:
    """`report` spells a duration out; `history` fits it in 6 characters."""
    from cellctl.reports import span

    assert span(seconds) == long
    assert span(seconds, short=True) == short
    assert len(span(seconds, short=True)) <= 6
