"""Crash recovery on memory drivers: a batch's rows (as the recorder writes them) cut where a
SIGKILL would cut them, read back into a resume point, and a fresh controller taking the batch
up there: Held from the first instant with the safe state, the steps before the point not run
again, a write of unknown outcome never sent again unless the operator chooses retry, names
bound earlier back in scope, repeat rounds taken up at their round."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio

from cellctl.control.controller import CommandBlocked
from cellctl.control.events import BatchEnded, Event, StepStarted, TagWritten
from cellctl.control.journal.events import (
    call_intent_body,
    confirmation_body,
    intent_body,
    rows_for,
)
from cellctl.control.journal.rows import JournalRow, Kind, canonical_json
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice, ScriptedOperator
from cellctl.control.resume import ResumePoint, ResumeRefused, resume_point
from cellctl.testing import wait_until
from drivers.base import Value
from tests.test_controller import DEADLINE, SAFE, Bench

BATCH = "B-test"

# Three rounds of count / press (a rising press.go finishes the part) / release.
CYCLES = """\
recipe: r
version: 1
steps:
  - {id: go, set: {line.run: true, line.speed: 100}}
  - id: cycle
    repeat: 3
    index: part
    steps:
      - {id: count, set: {line.count: part}}
      - {id: press, set: {press.heat: true, press.go: true}, wait: line.done, timeout: 5s}
      - {id: release, set: {press.go: false}, wait: not line.done, timeout: 5s}
  - {id: lamp, set: {aux.lamp: true}}
"""

ASKING = """\
recipe: r
version: 1
steps:
  - id: ask
    prompt: How many?
    answer: {name: n, type: int, min: 0, max: 10}
  - {id: put, set: {line.count: n}}
  - {id: lamp, set: {aux.lamp: true}}
"""

PARALLEL = """\
recipe: r
version: 1
steps:
  - parallel:
      - [{id: a, wait: line.done, timeout: 5s}]
      - [{id: b, wait: line.done, timeout: 5s}]
"""


class Rows:
    """The journal rows of one batch as the recorder writes them (events, intents and their
    confirmations), in memory; hashes are not needed to find a resume point."""

    def __init__(self) -> None:
        self.rows: list[JournalRow] = []
        self._intents = 0

    def add(self, kind: str, body: dict[str, Any]) -> None:
        seq = len(self.rows) + 1
        at = f"2026-12-06T10:00:00.{seq:06d}Z"
        self.rows.append(JournalRow(seq, BATCH, at, kind, canonical_json(body), "", "", None))

    def event(self, event: Event) -> None:
        if isinstance(event, TagWritten | BatchEnded):
            return  # as the recorder: intents and confirmations record the writes
        for kind, body in rows_for(event):
            self.add(kind, body)

    async def intent(self, tag: str, value: Value, path: str | None, step_id: str | None) -> object:
        self._intents += 1
        token = f"w{self._intents}"
        self.add(Kind.INTENT, intent_body(token, tag, value, path, step_id))
        return token

    async def call_intent(
        self, method: str, args: Mapping[str, Value], path: str | None, step_id: str | None
    ) -> object:
        self._intents += 1
        token = f"c{self._intents}"
        self.add(Kind.CALL_INTENT, call_intent_body(token, method, args, path, step_id))
        return token

    def confirmed(self, token: object, error: str | None, *, unknown: bool = False) -> None:
        body = confirmation_body(str(token), error is None, error)
        body["unknown"] = unknown
        self.add(Kind.CONFIRMED, body)

    def unavailable(self) -> str | None:
        return None

    def index(self, test: Callable[[str, dict[str, Any]], bool], nth: int = 1) -> int:
        """The position of the nth row that passes `test` (kind, body)."""
        found = [i for i, r in enumerate(self.rows) if test(r.kind, r.data())]
        return found[nth - 1]


def react(rig: Bench) -> None:
    """The press: line.done follows press.go."""
    rig.on_write("press.go", lambda v: rig.device("line.done", bool(v)))


async def recorded(recipe: str, operator: ScriptedOperator | None = None) -> Rows:
    """The rows of a whole batch of `recipe` run to Complete."""
    rows = Rows()
    rig = Bench(recipe)
    if operator is not None:
        rig.ctl.executor.operator = operator
    rig.ctl.listeners.append(rows.event)
    rig.ctl.executor.ledger = rows
    await rig.io.connect()
    await rig.ctl.open()
    react(rig)
    try:
        ended = await asyncio.wait_for(rig.ctl.run_batch(stop_when_held=lambda: True), DEADLINE)
    finally:
        await rig.ctl.close()
        await rig.io.close()
    assert ended.state is State.COMPLETE
    return rows


@pytest_asyncio.fixture
async def cycles() -> Rows:
    return await recorded(CYCLES)


@pytest_asyncio.fixture
async def fresh() -> AsyncIterator[Callable[[str], Bench]]:
    """Benches connected and open, closed after the test."""
    made: list[Bench] = []

    def make(recipe: str) -> Bench:
        rig = Bench(recipe)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.ctl.close()
        await rig.io.close()


async def resumed(rig: Bench, point: ResumePoint) -> asyncio.Task[BatchEnded]:
    """The bench's controller taking the batch up at `point`; returns once it is Held there."""
    await rig.io.connect()
    await rig.ctl.open()
    react(rig)
    task = asyncio.ensure_future(rig.ctl.resume_batch(point, stop_when_held=lambda: False))
    await wait_until(lambda: any("resumed B-test Held" in str(e) for e in rig.events))
    assert rig.ctl.state is State.HELD
    return task


def cut(rows: Rows, end: int) -> list[JournalRow]:
    """The rows a SIGKILL left: those before `end`."""
    return rows.rows[:end]


def is_intent(tag: str, value: Value) -> Callable[[str, dict[str, Any]], bool]:
    return lambda k, b: k == Kind.INTENT and b["tag"] == tag and b["value"] == value


# --- where the batch was ------------------------------------------------------------------


@pytest.mark.asyncio
async def test_point_of_a_write_sent_and_not_confirmed(cycles: Rows, fresh: Any) -> None:
    rig = fresh(CYCLES)
    # Killed after round 2's press.go intent was on disk, before its confirmation.
    end = cycles.index(is_intent("press.go", True), nth=2) + 1
    point = resume_point(rig.ctl.loaded.recipe, BATCH, cut(cycles, end))
    assert (point.path, point.step_id, point.after, point.rounds) == (
        "2.2",
        "press",
        False,
        {"2": 2},
    )
    assert [u.text() for u in point.unknown] == ["press.go := true was sent or not: unknown"]
    assert point.confirmed == {"press.heat": True}
    assert point.commanded["line.count"] == 2 and point.commanded["line.run"] is True
    assert point.steps_done == 5  # go, round 1's three, round 2's count
    assert point.describe(rig.ctl.loaded.recipe) == "at step 2.2 press (round 2 of step 2 cycle)"


@pytest.mark.asyncio
async def test_point_between_steps_and_before_any(cycles: Rows, fresh: Any) -> None:
    recipe = fresh(CYCLES).ctl.loaded.recipe
    ended = cycles.index(lambda k, b: k == Kind.STEP_ENDED and b["step_id"] == "count", nth=3)
    point = resume_point(recipe, BATCH, cut(cycles, ended + 1))
    assert (point.path, point.after, point.rounds, point.unknown) == ("2.1", True, {"2": 3}, ())
    first = cycles.index(lambda k, b: k == Kind.STEP_STARTED)
    assert resume_point(recipe, BATCH, cut(cycles, first)).path is None


@pytest.mark.asyncio
async def test_parallel_steps_in_progress_are_refused(fresh: Any) -> None:
    rows = Rows()
    for path, step_id in (("1", None), ("1.1.1", "a"), ("1.2.1", "b")):
        rows.add(Kind.STEP_STARTED, {"path": path, "step_id": step_id, "round": None})
    with pytest.raises(ResumeRefused, match=r"parallel branches \(1\.1\.1, 1\.2\.1\).*abort"):
        resume_point(fresh(PARALLEL).ctl.loaded.recipe, BATCH, rows.rows)


# --- taking it up ---------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("choice", [FailureChoice.SKIP, FailureChoice.RETRY])
async def test_unknown_write_is_sent_again_only_on_retry(
    cycles: Rows, fresh: Any, choice: FailureChoice
) -> None:
    rig = fresh(CYCLES)
    end = cycles.index(is_intent("press.go", True), nth=2) + 1
    point = resume_point(rig.ctl.loaded.recipe, BATCH, cut(cycles, end))
    task = await resumed(rig, point)
    # Held at once, the safe state and nothing else written; the question names the write.
    assert rig.writes() == [(tag, value) for tag, value in rig.writes() if SAFE.get(tag) == value]
    assert set(dict(rig.writes())) == set(SAFE)
    question = rig.ctl.executor.failure
    assert question is not None and question.outcome_unknown and question.path == "2.2"
    assert "press.go := true was sent or not: unknown" in question.message
    with pytest.raises(CommandBlocked, match="choose retry or skip"):
        await rig.ctl.command(Command.UNHOLD)
    rig.forget_writes()
    await rig.ctl.command(Command.UNHOLD, choice=choice)
    ended = await asyncio.wait_for(task, DEADLINE)
    assert ended.state is State.COMPLETE
    press = [w for w in rig.writes("press") if w == ("press.go", True)]
    assert len(press) == (2 if choice is FailureChoice.RETRY else 1)  # round 3's, and a retry
    # Round 1 and round 2's count were not run again; Unholding restored the recipe's values.
    assert [v for t, v in rig.writes("line") if t == "line.count"] == [3]
    assert ("line.run", True) in rig.writes("line")
    started = [(e.path, e.round) for e in rig.of(StepStarted) if e.step_id == "count"]
    assert started == [("2.1", 3)]


@pytest.mark.asyncio
async def test_between_steps_goes_on_with_the_next_on_unhold(cycles: Rows, fresh: Any) -> None:
    rig = fresh(CYCLES)
    ended_at = cycles.index(lambda k, b: k == Kind.STEP_ENDED and b["step_id"] == "count", nth=3)
    point = resume_point(rig.ctl.loaded.recipe, BATCH, cut(cycles, ended_at + 1))
    task = await resumed(rig, point)
    assert rig.ctl.executor.failure is None  # nothing to ask
    # Held before the next step: only the repeat around it was entered again (at round 3).
    assert [(e.step_id, e.kind) for e in rig.of(StepStarted)] == [("cycle", "repeat")]
    rig.forget_writes()
    await rig.ctl.command(Command.UNHOLD)
    ended = await asyncio.wait_for(task, DEADLINE)
    assert ended.state is State.COMPLETE
    assert [e.step_id for e in rig.of(StepStarted)] == ["cycle", "press", "release", "lamp"]
    assert ended.steps_done == 11


@pytest.mark.asyncio
async def test_names_bound_before_come_back(fresh: Any) -> None:
    rows = await recorded(ASKING, ScriptedOperator({"ask": 7}))
    rig = fresh(ASKING)  # its operator has no answer: the prompt is not asked again
    end = rows.index(is_intent("line.count", 7)) + 1
    task = await resumed(rig, resume_point(rig.ctl.loaded.recipe, BATCH, cut(rows, end)))
    assert rig.ctl.executor.failure is not None  # line.count := 7 was sent or not
    await rig.ctl.command(Command.UNHOLD, choice=FailureChoice.RETRY)
    assert (await asyncio.wait_for(task, DEADLINE)).state is State.COMPLETE
    assert ("line.count", 7) in rig.writes("line")


@pytest.mark.asyncio
async def test_abort_from_the_resumed_hold(cycles: Rows, fresh: Any) -> None:
    rig = fresh(CYCLES)
    end = cycles.index(is_intent("press.go", True), nth=1) + 1
    task = await resumed(rig, resume_point(rig.ctl.loaded.recipe, BATCH, cut(cycles, end)))
    await rig.ctl.command(Command.ABORT)
    ended = await asyncio.wait_for(task, DEADLINE)
    assert ended.state is State.ABORTED
    assert ("press.go", True) not in rig.writes()
