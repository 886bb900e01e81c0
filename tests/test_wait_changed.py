"""A wait with `changed`: met only once its tags moved since the step started, never by a state
left over from before the step's writes (a press's latched cycle_done)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import pytest_asyncio

from cellctl.control.events import StepEnded, StepOutcome, WaitProgress
from cellctl.control.executor import PauseReason
from cellctl.testing import cli, wait_until
from cellctl.values import TagValue
from drivers.base import Quality, Reading, Value
from drivers.config import MemoryConfig
from drivers.memory import MemoryDriver
from drivers.points import Access, MemoryPoint, Point
from tests.support import watched
from tests.test_executor import DEADLINE, Rig, finish

ROOT = Path(__file__).resolve().parent.parent
DEMO_CELL = ROOT / "recipes" / "demo" / "cell.yaml"


class CountingDriver(MemoryDriver):
    """A memory device that counts the reads asked of it."""

    def __init__(self, config: MemoryConfig) -> None:
        super().__init__(config)
        self.reads = 0

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        self.reads += 1
        return await super().read(points)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """The executor tests' memory cell, its dev device counting reads."""
    async with watched(Rig(dev=CountingDriver(MemoryConfig("dev")))) as bench:
        yield bench


def recipe(step: str) -> str:
    return f"recipe: r\nversion: 1\nsteps:\n  - {step}\n"


PRESS = recipe(
    "{id: go, set: {dev.start: true}, wait: {until: dev.done, changed: [dev.count]}, timeout: 2s}"
)


def react_on_write(rig: Rig, tag: str, react: Mapping[str, Value]) -> None:
    """The device answers a write of `tag` within the write itself (before it is confirmed)."""
    spec = rig.cell.tags[tag]
    point = MemoryPoint(tag, tag, spec.datatype, Access.RW)

    def heard(readings: Mapping[str, Any]) -> None:
        if readings[tag].value:
            for name, value in react.items():
                rig.device(name, value)

    rig.dev.subscribe([point], heard)


# --- the executor -----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_latched_done_does_not_meet_the_wait_until_the_count_moves(rig: Rig) -> None:
    rig.device("dev.done", True)  # latched from an earlier cycle
    rig.device("dev.count", 5)
    rig.host.on(WaitProgress, lambda _: rig.device("dev.count", 6))
    await finish(rig, rig.executor(PRESS))
    progress = rig.host.of(WaitProgress)
    assert [e.met for e in progress] == [False, True]
    assert progress[0].condition == "dev.done; changed: dev.count (from 5)"
    assert progress[0].values == {"dev.count": 5, "dev.done": True}
    assert rig.host.started("1")[0].detail == (
        "dev.start := true, then until dev.done; changed: dev.count"
    )


@pytest.mark.asyncio
async def test_the_values_are_read_before_the_first_write(rig: Rig) -> None:
    # The device counts within the write: a value read after the write would already be 6.
    rig.device("dev.count", 5)
    react_on_write(rig, "dev.start", {"dev.count": 6, "dev.done": True})
    await finish(rig, rig.executor(PRESS))
    assert [e.met for e in rig.host.of(WaitProgress)] == [True]
    assert rig.host.ended("1") == [StepOutcome.DONE]


@pytest.mark.asyncio
async def test_a_change_during_a_hold_counts_after_unhold(rig: Rig) -> None:
    rig.device("dev.count", 5)
    executor = rig.executor(PRESS)
    rig.start(executor)
    await wait_until(lambda: bool(rig.host.of(WaitProgress)), DEADLINE, "the wait")
    executor.pause(PauseReason.HOLD)
    await wait_until(lambda: StepOutcome.INTERRUPTED in rig.host.ended("1"), DEADLINE)
    rig.device("dev.count", 6)
    rig.device("dev.done", True)
    executor.resume()
    await rig.done()
    # Re-entered, not re-run: the write stands, and its cycle (during the hold) is the one.
    assert rig.writes() == [("dev.start", True)]
    last = rig.host.of(WaitProgress)[-1]
    assert last.met and last.condition == "dev.done; changed: dev.count (from 5)"


@pytest.mark.asyncio
async def test_a_retry_writes_again_and_waits_for_a_new_change(rig: Rig) -> None:
    rig.device("dev.done", True)
    rig.device("dev.count", 5)
    step = (
        "{id: go, set: {dev.start: true}, wait: {until: dev.done, changed: [dev.count]}, "
        "timeout: 1s, on_error: {action: retry, count: 1}}"
    )
    # The first attempt times out (a second, also the retry's bound: room on a loaded
    # machine). The count moves after it gave up: that change is not the retry's.
    rig.host.on(StepEnded, lambda _: rig.device("dev.count", 6))
    seen: list[WaitProgress] = []

    def second_attempt(event: WaitProgress) -> None:
        if rig.host.ended("1") and not seen:
            seen.append(event)
            rig.device("dev.count", 7)

    rig.host.hooks.append(lambda e: second_attempt(e) if isinstance(e, WaitProgress) else None)
    await finish(rig, rig.executor(recipe(step)))
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.DONE]
    assert rig.writes() == [("dev.start", True), ("dev.start", True)]
    assert not seen[0].met and seen[0].condition.endswith("(from 6)")
    assert rig.host.of(WaitProgress)[-1].met


@pytest.mark.asyncio
async def test_a_wait_step_compares_with_its_start(rig: Rig) -> None:
    rig.device("dev.count", 5)
    rig.host.on(WaitProgress, lambda _: rig.device("dev.count", 6))
    step = "{id: w, wait: {until: dev.count > 0, changed: [dev.count]}, timeout: 2s}"
    await finish(rig, rig.executor(recipe(step)))
    assert [e.met for e in rig.host.of(WaitProgress)] == [False, True]
    assert rig.host.started("1")[0].detail == "until dev.count > 0; changed: dev.count"


@pytest.mark.asyncio
async def test_a_timeout_names_the_tag_that_did_not_change(rig: Rig) -> None:
    rig.device("dev.done", True)
    rig.device("dev.count", 5)
    step = "{id: go, set: {dev.start: true}, wait: {until: dev.done, changed: [dev.count]}, "
    executor = rig.executor(recipe(step + "timeout: 50ms}"))
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None, DEADLINE, "the failure")
    assert executor.failure is not None
    assert executor.failure.message == (
        "step 'go' timed out after 0.05 s waiting for dev.done; changed: dev.count (from 5) "
        "(dev.count = 5, dev.done = true)"
    )


@pytest.mark.asyncio
async def test_only_a_wait_with_changed_reads_more(rig: Rig) -> None:
    assert isinstance(rig.dev, CountingDriver)
    rig.device("dev.done", True)
    before = rig.dev.reads
    plain = "{id: go, set: {dev.start: true}, wait: dev.done, timeout: 2s}"
    await finish(rig, rig.executor(recipe(plain)))
    assert rig.dev.reads - before == 1  # the wait's own fresh read, nothing more
    rig.host.on(WaitProgress, lambda _: rig.device("dev.count", 1))
    before = rig.dev.reads
    await finish(rig, rig.executor(PRESS))
    assert rig.dev.reads - before == 2  # the values before the write, then the wait's read


# --- validation, plan, schema -----------------------------------------------------------------


def test_a_heartbeat_tag_is_refused_in_changed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(DEMO_CELL, tmp_path / "cell.yaml")
    path = tmp_path / "beat.yaml"
    text = recipe("{id: w, wait: {until: true, changed: [press.heartbeat]}, timeout: 1s}")
    path.write_text(text, encoding="utf-8")
    code, _, err = cli(capsys, "validate", path)
    column = text.splitlines()[3].index("press.heartbeat") + 1
    assert code == 1
    assert err.startswith(f"{path}:4:{column}: step 'w': wait: changed press.heartbeat: ")
    assert "heartbeat" in err.split(": ", 3)[3] and len(err.splitlines()) == 1


def test_a_single_changed_tag_needs_no_brackets(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(DEMO_CELL, tmp_path / "cell.yaml")
    path = tmp_path / "one.yaml"
    go = "{id: go, set: {press.cycle_start: true}, wait: {until: press.cycle_done, changed: %s}, "
    path.write_text(recipe(go % "press.cycles" + "timeout: 2s}"), encoding="utf-8")
    code, out, err = cli(capsys, "plan", "--json", path)
    assert code == 0, err
    [step] = json.loads(out)["steps"]
    assert step["action"].endswith("then wait until press.cycle_done; changed: press.cycles")
    # A misspelt single tag is located at the tag, as in a list.
    text = recipe(go % "press.cylces" + "timeout: 2s}")
    path.write_text(text, encoding="utf-8")
    code, _, err = cli(capsys, "validate", path)
    column = text.splitlines()[3].index("press.cylces") + 1
    assert code == 1
    assert err == (
        f"{path}:4:{column}: step 'go': wait: changed press.cylces: unknown tag "
        "'press.cylces' (did you mean 'press.cycles'?)\n"
    )


def test_plan_shows_the_changed_tags_and_reads_them(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shutil.copy(DEMO_CELL, tmp_path / "cell.yaml")
    path = tmp_path / "count.yaml"
    path.write_text(
        recipe(
            "{id: go, set: {press.cycle_start: true}, "
            "wait: {until: press.cycle_done, changed: [press.cycles]}, timeout: 2s}"
        ),
        encoding="utf-8",
    )
    code, out, _ = cli(capsys, "plan", "--json", path)
    assert code == 0
    [step] = json.loads(out)["steps"]
    assert step["action"] == (
        "set press.cycle_start = true, then wait until press.cycle_done; changed: press.cycles"
    )
    assert step["reads"] == ["press.cycle_done", "press.cycles"]


@pytest.mark.parametrize(
    ("wait", "valid"),
    [
        ("press.cycle_done", True),
        ({"until": "press.cycle_done", "changed": ["press.cycles"]}, True),
        ({"until": "press.cycle_done", "changed": "press.cycles"}, True),
        ({"until": "press.cycle_done"}, True),
        ({"changed": ["press.cycles"]}, False),
        ({"until": "x", "changed": []}, False),
        ({"until": "x", "chaged": ["press.cycles"]}, False),
    ],
)
def test_the_schema_knows_both_forms_of_a_wait(
    capsys: pytest.CaptureFixture[str], wait: object, valid: bool
) -> None:
    code, out, _ = cli(capsys, "schema", "recipe")
    assert code == 0
    validator = jsonschema.Draft202012Validator(json.loads(out))
    document = {"recipe": "r", "version": 1, "steps": [{"id": "w", "wait": wait}]}
    assert validator.is_valid(document) is valid


@pytest.mark.asyncio
async def test_a_write_in_another_branch_does_not_make_a_wait_miss_its_news(rig: Rig) -> None:
    # Branch 1 waits for dev.done; branch 2 waits for dev.part, then writes. Both come true
    # at once, dev.part first: branch 2's write is confirmed before branch 1 looks again, and
    # dev.done's news (sampled before that write, after branch 1's own) is still its news.
    text = (
        "recipe: r\nversion: 1\nsteps:\n"
        "  - parallel:\n"
        "      - - {id: a, set: {dev.a: true}, wait: dev.done, timeout: 1s}\n"
        "      - - {id: bw, wait: dev.part, timeout: 1s}\n"
        "        - {id: b, set: {dev.b: true}}\n"
    )

    def both(event: object) -> None:
        # When branch 2 looks while branch 1 already waits (parked, so it looks again later).
        waiting = {e.step_id for e in rig.host.of(WaitProgress)}
        if isinstance(event, WaitProgress) and event.step_id == "bw" and "a" in waiting:
            if done:
                return
            done.append(event)
            rig.device("dev.part", True)
            # As a Modbus poll delivers it: stamped by our clock, no device time.
            rig.io.board.update(TagValue("dev.done", "dev", True, Quality.GOOD, time.time()))

    done: list[object] = []
    rig.host.hooks.append(both)
    await finish(rig, rig.executor(text))
    assert rig.host.ended("1.1.1") == [StepOutcome.DONE]
