"""The executor on memory drivers: runs, freshness, pauses, failures, prompts and stepping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from typing import Any, TypeVar

import pytest
import pytest_asyncio

from cellctl.cell import Cell, cell_from_document
from cellctl.control.events import (
    Event,
    MethodCalled,
    Notice,
    PromptAnswered,
    StepEnded,
    StepOutcome,
    StepPaused,
    StepStarted,
    TagWritten,
    WaitProgress,
)
from cellctl.control.executor import ChoiceNeeded, Executor, PauseReason, StepFailure
from cellctl.control.operator import (
    FailureChoice,
    Operator,
    PromptRequest,
    ScriptedOperator,
    StepChoice,
)
from cellctl.io.session import TagIO
from cellctl.recipe import Recipe, recipe_from_document
from cellctl.testing import wait_until
from cellctl.values import TagValue
from cellctl.yamlload import parse_yaml
from drivers.base import Quality, Value
from drivers.config import MemoryConfig
from drivers.memory import MemoryDriver
from drivers.points import Access, MemoryPoint
from tests.support import watched

E = TypeVar("E", bound=Event)

CELL = """\
cell: bench
devices:
  dev: {driver: memory}
  arm: {driver: opcua, endpoint: "opc.tcp://127.0.0.1:4840"}
tags:
  dev.a:     {device: dev, type: bool, access: rw}
  dev.b:     {device: dev, type: bool, access: rw}
  dev.c:     {device: dev, type: bool, access: rw}
  dev.start: {device: dev, type: bool, access: rw}
  dev.done:  {device: dev, type: bool}
  dev.part:  {device: dev, type: bool}
  dev.count: {device: dev, type: uint16, access: rw, max: 100}
  dev.speed: {device: dev, type: uint16, access: rw}
methods:
  arm.pick: {device: arm, node: "ns=2;s=Arm", method: "2:Pick", args: {slot: int32},
             result: bool}
"""
DEV_TAGS = ["dev.a", "dev.b", "dev.c", "dev.start", "dev.done", "dev.part", "dev.count"]
DEV_TAGS.append("dev.speed")
DEADLINE = 3.0


def parse_cell(text: str = CELL) -> Cell:
    """The test cell (the arm is an OPC UA device in the file, a memory driver in the test)."""
    return cell_from_document(parse_yaml(text.encode(), "cell.yaml"))


def recipe(text: str, cell: Cell) -> Recipe:
    """A recipe validated against the cell."""
    return recipe_from_document(parse_yaml(text.encode(), "r.yaml"), cell)


def unchecked_recipe(text: str) -> Recipe:
    """A recipe of the right shape that skipped the checks against the cell (for refusals the
    validation makes first and the executor makes again)."""
    return Recipe.model_validate(parse_yaml(text.encode(), "r.yaml").data)


class Host:
    """Records what the executor reports; hooks react to events inside emit()."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.failures: list[StepFailure] = []
        self.aborts: list[str] = []
        self.hooks: list[Callable[[Event], None]] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)
        for hook in list(self.hooks):
            hook(event)

    def step_failed(self, failure: StepFailure) -> None:
        self.failures.append(failure)

    def operator_abort(self, reason: str) -> None:
        self.aborts.append(reason)

    def of(self, kind: type[E]) -> list[E]:
        """The events of one kind, in order."""
        return [e for e in self.events if isinstance(e, kind)]

    def ended(self, path: str) -> list[StepOutcome]:
        """The outcomes of one step, in order."""
        return [e.outcome for e in self.of(StepEnded) if e.path == path]

    def started(self, path: str) -> list[StepStarted]:
        """The starts of one step, in order."""
        return [e for e in self.of(StepStarted) if e.path == path]

    def on(self, kind: type[E], action: Callable[[E], None], times: int = 1) -> None:
        """Run `action` on the next `times` events of a kind."""
        left = [times]

        def hook(event: Event) -> None:
            if isinstance(event, kind) and left[0] > 0:
                left[0] -= 1
                action(event)

        self.hooks.append(hook)


class StepOperator:
    """A test operator: scripted stepping choices and prompt answers, with what it saw."""

    def __init__(
        self, choices: list[StepChoice] | None = None, answers: Mapping[str, Value] = {}
    ) -> None:
        self.name: str | None = "tester"
        self.choices = list(choices or [])
        self.answers = dict(answers)
        self.paused: list[StepPaused] = []
        self.asked: list[PromptRequest] = []
        self.release = asyncio.Event()  # a prompt waits for it when set to gate

    async def answer(self, request: PromptRequest) -> Value | None:
        self.asked.append(request)
        await self.release.wait()
        return self.answers.get(request.step_id)

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        self.paused.append(pause)
        return self.choices.pop(0)


class Rig:
    """A memory cell, its drivers and TagIO, and a host to run executors with."""

    def __init__(self, cell: str = CELL, dev: MemoryDriver | None = None) -> None:
        self.cell = parse_cell(cell)
        self.dev = dev or MemoryDriver(MemoryConfig("dev"))
        self.arm = MemoryDriver(MemoryConfig("arm"))
        self.io = TagIO(self.cell, {"dev": self.dev, "arm": self.arm}, DEV_TAGS)
        self.host = Host()
        self.task: asyncio.Task[None] | None = None

    def executor(
        self,
        text: str | Recipe,
        parameters: Mapping[str, Value] | None = None,
        operator: Operator | None = None,
        *,
        step_mode: bool = False,
        breakpoints: Collection[str] = (),
    ) -> Executor:
        """An executor for a recipe (text validated against the cell, or a model)."""
        model = recipe(text, self.cell) if isinstance(text, str) else text
        values = dict(parameters or {})
        for name, parameter in model.parameters.items():
            if name not in values and parameter.default is not None:
                values[name] = parameter.default
        return Executor(
            model,
            values,
            self.io,
            self.host,
            operator or ScriptedOperator({}),
            step_mode=step_mode,
            breakpoints=breakpoints,
        )

    def start(self, executor: Executor) -> asyncio.Task[None]:
        """Run the executor as its own task."""
        self.task = asyncio.create_task(executor.run())
        return self.task

    async def done(self) -> None:
        """Wait for the running executor to end, within the deadline."""
        assert self.task is not None
        await asyncio.wait_for(self.task, DEADLINE)

    def writes(self) -> list[tuple[str, Value]]:
        """The dev device's confirmed writes."""
        return list(self.dev.writes)

    def device(self, tag: str, value: Value) -> None:
        """The device side changes a value."""
        self.dev.set_device_value(tag, value)

    def on_write(self, tag: str, action: Callable[[Value], None]) -> None:
        """The device side reacts to a confirmed write of `tag` (on the next loop turn)."""
        spec = self.cell.tags[tag]
        point = MemoryPoint(tag, tag, spec.datatype, Access.RW)
        loop = asyncio.get_running_loop()

        def heard(readings: Mapping[str, Any]) -> None:
            loop.call_soon(action, readings[tag].value)

        self.dev.subscribe([point], heard)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """A connected, watched memory cell."""
    async with watched(Rig()) as bench:
        yield bench


async def finish(rig: Rig, executor: Executor) -> None:
    """Run the executor to its end, within the deadline."""
    await asyncio.wait_for(rig.start(executor), DEADLINE)


# --- a full run ---------------------------------------------------------------------------


FULL = """\
recipe: full
version: 1
parameters:
  rpm: {type: int, default: 600, min: 0, max: 3000}
  rounds: {type: int, default: 2, min: 0, max: 5}
steps:
  - {id: go, set: {dev.start: true, dev.speed: rpm * 2}, wait: dev.done, timeout: 2s}
  - repeat: rounds
    index: i
    steps:
      - {id: pick, call: arm.pick, args: {slot: i}, result: ok, timeout: 1s}
      - {id: count, set: {dev.count: dev.count + i}}
  - {id: never, if: "dev.count > 50", set: {dev.a: true}}
  - {id: last, set: {dev.b: "dev.count == 3"}}
"""


@pytest.mark.asyncio
async def test_full_run_writes_in_order_with_values_resolved(rig: Rig) -> None:
    rig.on_write("dev.start", lambda value: rig.device("dev.done", bool(value)))
    slots: list[Value] = []

    async def pick(slot: Value) -> bool:
        slots.append(slot)
        return True

    rig.arm.register_method("Pick", pick)
    executor = rig.executor(FULL)
    await finish(rig, executor)

    assert rig.writes() == [
        ("dev.start", True),
        ("dev.speed", 1200),
        ("dev.count", 1),
        ("dev.count", 3),
        ("dev.b", True),
    ]
    assert slots == [1, 2]
    host = rig.host
    assert (
        host.started("1")[0].detail == "dev.start := true, dev.speed := 1200, then until dev.done"
    )
    assert [e.detail for e in host.started("2.1")] == ["arm.pick(slot=1)", "arm.pick(slot=2)"]
    assert [e.round for e in host.started("2.2")] == [1, 2]
    assert host.ended("3") == [StepOutcome.SKIPPED]
    assert host.started("3") == []
    assert [e.result for e in host.of(MethodCalled)] == [True, True]
    assert [(e.tag, e.path) for e in host.of(TagWritten)][:2] == [
        ("dev.start", "1"),
        ("dev.speed", "1"),
    ]
    assert executor.steps_done == 6  # go, 2 × (pick, count), last
    assert executor.commanded() == {
        "dev.start": True,
        "dev.speed": 1200,
        "dev.count": 3,
        "dev.b": True,
    }
    assert host.failures == []


# --- no stale data ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_count_plus_one_twice_counts_exactly_two(rig: Rig) -> None:
    rig.device("dev.count", 7)
    executor = rig.executor(
        """\
recipe: twice
version: 1
steps:
  - {id: one, set: {dev.count: dev.count + 1}}
  - {id: two, set: {dev.count: dev.count + 1}}
"""
    )
    await finish(rig, executor)
    assert rig.writes() == [("dev.count", 8), ("dev.count", 9)]


@pytest.mark.asyncio
async def test_a_wait_after_a_write_ignores_older_samples(rig: Rig) -> None:
    before_write = time.time()
    executor = rig.executor(
        """\
recipe: fresh
version: 1
steps:
  - {id: go, set: {dev.start: true}, wait: dev.done, timeout: 2s}
"""
    )

    seen: list[WaitProgress] = []

    def react(event: WaitProgress) -> None:
        seen.append(event)
        if len(seen) == 1:
            # A poll taken before the write, delivered after it: it must not satisfy the wait.
            rig.io.board.update(TagValue("dev.done", "dev", True, Quality.GOOD, before_write))
        else:
            rig.device("dev.done", True)

    rig.host.on(WaitProgress, react, times=2)
    await finish(rig, executor)
    assert [e.met for e in rig.host.of(WaitProgress)] == [False, False, True]


@pytest.mark.asyncio
async def test_a_sample_published_late_is_ordered_by_the_device_clock(rig: Rig) -> None:
    """OPC UA publishes a change up to a publishing interval late: a notification that
    arrives after the wait's fresh read, stamped on our clock after the write, but sampled
    on the device before that read, must not satisfy the wait."""
    executor = rig.executor(
        """\
recipe: late
version: 1
steps:
  - {id: go, set: {dev.start: true}, wait: dev.done, timeout: 2s}
"""
    )
    seen: list[WaitProgress] = []

    def react(event: WaitProgress) -> None:
        seen.append(event)
        if len(seen) == 1:
            baseline = rig.dev.device_value("dev.done")
            assert baseline is False
            late = TagValue(
                "dev.done", "dev", True, Quality.GOOD, time.time(), device_time=time.time() - 5
            )
            rig.io.board.update(late)  # arrives now; sampled 5 s ago by the device's clock
        else:
            rig.device("dev.done", True)

    rig.host.on(WaitProgress, react, times=2)
    await finish(rig, executor)
    assert [e.met for e in rig.host.of(WaitProgress)] == [False, False, True]


@pytest.mark.asyncio
async def test_out_of_range_value_fails_naming_the_tag_and_writes_nothing(rig: Rig) -> None:
    rig.device("dev.count", 100)  # the tag's max
    executor = rig.executor(
        """\
recipe: range
version: 1
steps:
  - {id: bump, set: {dev.a: true, dev.count: dev.count + 1}}
"""
    )
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    failure = executor.failure
    assert failure is not None
    assert "step 'bump'" in failure.message and "dev.count" in failure.message
    assert "101" in failure.message
    assert failure.action == "hold" and not failure.outcome_unknown
    assert rig.host.failures == [failure]
    assert rig.writes() == [("dev.a", True)]
    assert rig.host.ended("1") == [StepOutcome.FAILED]


# --- hold, suspend, stop, abort -----------------------------------------------------------

WAIT_DONE = """\
recipe: waits
version: 1
steps:
  - {id: go, set: {dev.start: true}}
  - {id: wait-done, wait: dev.done, timeout: 5s}
  - {id: after, set: {dev.b: true}}
"""


@pytest.mark.asyncio
async def test_hold_mid_wait_interrupts_and_unhold_reenters(rig: Rig) -> None:
    executor = rig.executor(WAIT_DONE)
    rig.start(executor)
    await wait_until(lambda: bool(rig.host.of(WaitProgress)))
    executor.pause(PauseReason.HOLD)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert executor.paused
    await wait_until(lambda: rig.host.ended("2") == [StepOutcome.INTERRUPTED])
    rig.device("dev.done", True)  # while held: nothing goes on
    assert rig.writes() == [("dev.start", True)]
    executor.resume()
    await rig.done()
    assert len(rig.host.started("2")) == 2
    assert rig.host.ended("2") == [StepOutcome.INTERRUPTED, StepOutcome.DONE]
    assert rig.writes() == [("dev.start", True), ("dev.b", True)]


@pytest.mark.asyncio
async def test_suspend_mid_prompt_asks_again_on_resume(rig: Rig) -> None:
    operator = StepOperator(answers={"ask": 4})
    executor = rig.executor(
        """\
recipe: ask
version: 1
steps:
  - id: ask
    prompt: How many?
    answer: {name: n, type: int, min: 0, max: 10}
  - {id: put, set: {dev.count: n * 2}}
""",
        operator=operator,
    )
    rig.start(executor)
    await wait_until(lambda: len(operator.asked) == 1)
    executor.pause(PauseReason.SUSPEND)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert rig.host.ended("1") == [StepOutcome.INTERRUPTED]
    operator.release.set()
    executor.resume()
    await rig.done()
    assert len(operator.asked) == 2
    assert rig.writes() == [("dev.count", 8)]
    answered = rig.host.of(PromptAnswered)
    assert [(a.value, a.operator) for a in answered] == [(4, "tester")]


@pytest.mark.asyncio
async def test_a_delay_cut_by_a_pause_starts_over_on_resume(rig: Rig) -> None:
    executor = rig.executor(
        """\
recipe: rest
version: 1
steps:
  - {delay: 50ms}
  - {id: after, set: {dev.b: true}}
"""
    )
    rig.host.on(StepStarted, lambda _: executor.pause(PauseReason.SUSPEND))
    rig.start(executor)
    await wait_until(lambda: executor.paused)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert rig.host.ended("1") == [StepOutcome.INTERRUPTED]
    resumed = time.monotonic()
    executor.resume()
    await rig.done()
    assert time.monotonic() - resumed >= 0.045  # the full delay again
    assert [e.detail for e in rig.host.started("1")] == ["delay 50ms", "delay 50ms"]
    assert rig.writes() == [("dev.b", True)]


THREE_WRITES = """\
recipe: three
version: 1
steps:
  - {id: abc, set: {dev.a: true, dev.b: true, dev.c: true}}
  - {id: d, set: {dev.start: true}}
"""


@pytest.mark.asyncio
async def test_hold_between_writes_takes_effect_at_the_step_boundary(rig: Rig) -> None:
    executor = rig.executor(THREE_WRITES)
    rig.host.on(TagWritten, lambda _: executor.pause(PauseReason.HOLD))
    rig.start(executor)
    await wait_until(lambda: executor.paused)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    # The running step wrote all it had to; the next step did not start.
    assert rig.writes() == [("dev.a", True), ("dev.b", True), ("dev.c", True)]
    assert rig.host.ended("1") == [StepOutcome.DONE] and not rig.host.started("2")
    executor.resume()
    await rig.done()
    assert rig.writes()[-1] == ("dev.start", True)


@pytest.mark.asyncio
async def test_freeze_between_writes_does_the_rest_after_resume(rig: Rig) -> None:
    """A trip freezes the executor at once: the safe state must be the last word."""
    executor = rig.executor(THREE_WRITES)
    rig.host.on(TagWritten, lambda _: executor.freeze())
    rig.start(executor)
    await wait_until(lambda: executor.frozen)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert rig.writes() == [("dev.a", True)]
    executor.resume()
    await rig.done()
    assert rig.writes() == [
        ("dev.a", True),
        ("dev.b", True),
        ("dev.c", True),
        ("dev.start", True),
    ]
    assert rig.host.ended("1") == [StepOutcome.INTERRUPTED, StepOutcome.DONE]


@pytest.mark.asyncio
async def test_stop_lets_the_running_wait_finish_then_cancel_writes_nothing_more(
    rig: Rig,
) -> None:
    executor = rig.executor(WAIT_DONE)
    task = rig.start(executor)
    await wait_until(lambda: bool(rig.host.of(WaitProgress)))
    executor.pause(PauseReason.STOP)
    paused = asyncio.ensure_future(executor.wait_paused())
    # Stop lets the running step finish: the wait goes on until its condition holds.
    await wait_until(lambda: len(rig.host.of(WaitProgress)) >= 1)
    assert not paused.done() and rig.host.ended("2") == []
    rig.device("dev.done", True)
    await asyncio.wait_for(paused, DEADLINE)
    assert rig.host.ended("2") == [StepOutcome.DONE] and not rig.host.started("3")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.writes() == [("dev.start", True)]


@pytest.mark.asyncio
async def test_abort_cancels_mid_wait_and_propagates(rig: Rig) -> None:
    executor = rig.executor(WAIT_DONE)
    task = rig.start(executor)
    await wait_until(lambda: bool(rig.host.of(WaitProgress)))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    rig.device("dev.done", True)
    assert rig.writes() == [("dev.start", True)]
    assert rig.host.ended("2") == []  # cut at once: no outcome recorded by the executor


# --- on_error -----------------------------------------------------------------------------

TIMES_OUT = """\
recipe: fails
version: 1
steps:
  - {{id: wait-done, wait: dev.done, timeout: 50ms{on_error}}}
  - {{id: after, set: {{dev.b: true}}}}
"""


@pytest.mark.asyncio
async def test_hold_then_resume_none_is_refused_and_retry_runs_again(rig: Rig) -> None:
    executor = rig.executor(TIMES_OUT.format(on_error=""))
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    failure = executor.failure
    assert failure is not None
    assert failure.message == (
        "step 'wait-done' timed out after 0.05 s waiting for dev.done (dev.done = false)"
    )
    assert (failure.path, failure.step_id, failure.action) == ("1", "wait-done", "hold")
    assert executor.paused
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    with pytest.raises(ChoiceNeeded, match="step 'wait-done' failed: choose retry or skip"):
        executor.resume()
    assert executor.failure is failure and executor.paused
    rig.device("dev.done", True)
    executor.resume(FailureChoice.RETRY)
    await rig.done()
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.DONE]
    assert rig.writes() == [("dev.b", True)]
    assert executor.failure is None


@pytest.mark.asyncio
async def test_hold_then_resume_skip_goes_on_after_the_step(rig: Rig) -> None:
    executor = rig.executor(TIMES_OUT.format(on_error=""))
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    executor.resume(FailureChoice.SKIP)
    await rig.done()
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.SKIPPED]
    assert rig.writes() == [("dev.b", True)]
    assert executor.steps_done == 1


@pytest.mark.asyncio
async def test_retry_succeeds_on_the_second_try(rig: Rig) -> None:
    executor = rig.executor(TIMES_OUT.format(on_error=", on_error: {action: retry, count: 2}"))
    rig.host.on(StepEnded, lambda _: rig.device("dev.done", True))
    await finish(rig, executor)
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.DONE]
    assert rig.host.failures == []
    assert any("retry 1 of 2" in n.text for n in rig.host.of(Notice))


@pytest.mark.asyncio
async def test_retry_exhausted_holds(rig: Rig) -> None:
    policy = ", on_error: {action: retry, count: 1, delay: 10ms}"
    executor = rig.executor(TIMES_OUT.format(on_error=policy))
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.FAILED]
    assert [f.action for f in rig.host.failures] == ["hold"]
    assert rig.writes() == []


@pytest.mark.asyncio
async def test_retry_is_refused_for_a_non_idempotent_write(rig: Rig) -> None:
    model = unchecked_recipe(
        """\
recipe: bump
version: 1
steps:
  - {id: bump, set: {dev.count: dev.count + 1}, wait: dev.done, timeout: 50ms,
     on_error: {action: retry, count: 3}}
"""
    )
    executor = rig.executor(model)
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    assert rig.writes() == [("dev.count", 1)]  # never repeated on its own
    assert rig.host.ended("1") == [StepOutcome.FAILED]
    assert any("not idempotent" in n.text for n in rig.host.of(Notice))
    rig.device("dev.done", True)
    executor.resume(FailureChoice.RETRY)  # the operator's explicit choice
    await rig.done()
    assert rig.writes() == [("dev.count", 1), ("dev.count", 2)]


@pytest.mark.asyncio
async def test_skip_policy_goes_on(rig: Rig) -> None:
    executor = rig.executor(TIMES_OUT.format(on_error=", on_error: skip"))
    await finish(rig, executor)
    skipped = [e for e in rig.host.of(StepEnded) if e.path == "1"]
    assert [e.outcome for e in skipped] == [StepOutcome.FAILED, StepOutcome.SKIPPED]
    assert skipped[0].error is not None and "timed out" in skipped[0].error
    assert skipped[1].error == "on_error: skip"
    assert rig.writes() == [("dev.b", True)]
    assert rig.host.failures == []


@pytest.mark.asyncio
async def test_abort_policy_asks_the_controller_to_abort(rig: Rig) -> None:
    executor = rig.executor(TIMES_OUT.format(on_error=", on_error: abort"))
    task = rig.start(executor)
    await wait_until(lambda: bool(rig.host.failures))
    assert [f.action for f in rig.host.failures] == ["abort"]
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert not task.done()  # it waits to be cancelled
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.writes() == []


@pytest.mark.asyncio
async def test_a_call_that_times_out_has_an_unknown_outcome(rig: Rig) -> None:
    never = asyncio.Event()

    async def pick(slot: Value) -> bool:
        await never.wait()
        return True

    rig.arm.register_method("Pick", pick)
    executor = rig.executor(
        """\
recipe: call
version: 1
steps:
  - {id: pick, call: arm.pick, args: {slot: 3}, timeout: 50ms}
"""
    )
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    failure = executor.failure
    assert failure is not None and failure.outcome_unknown
    assert failure.message == (
        "step 'pick' timed out after 0.05 s calling arm.pick(slot=3); its outcome is unknown"
    )


# --- parallel branches --------------------------------------------------------------------


@pytest.mark.asyncio
async def test_parallel_branches_both_run_and_a_hold_pauses_both(rig: Rig) -> None:
    executor = rig.executor(
        """\
recipe: both
version: 1
steps:
  - parallel:
      - - {id: left, set: {dev.a: true}}
        - {id: left-wait, wait: dev.done, timeout: 5s}
      - - {id: right, set: {dev.b: true}}
        - {id: right-wait, wait: dev.part, timeout: 5s}
  - {id: after, set: {dev.c: true}}
"""
    )
    rig.start(executor)
    await wait_until(lambda: {e.path for e in rig.host.of(WaitProgress)} == {"1.1.2", "1.2.2"})
    assert sorted(rig.writes()) == [("dev.a", True), ("dev.b", True)]
    executor.pause(PauseReason.HOLD)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert rig.host.ended("1.1.2") == [StepOutcome.INTERRUPTED]
    assert rig.host.ended("1.2.2") == [StepOutcome.INTERRUPTED]
    rig.device("dev.done", True)
    rig.device("dev.part", True)
    executor.resume()
    await rig.done()
    assert rig.host.ended("1") == [StepOutcome.DONE]
    assert rig.writes()[-1] == ("dev.c", True)
    assert executor.steps_done == 5


@pytest.mark.asyncio
async def test_a_failed_branch_holds_the_other_at_its_next_boundary(rig: Rig) -> None:
    executor = rig.executor(
        """\
recipe: one-fails
version: 1
steps:
  - parallel:
      - - {id: fails, wait: dev.done, timeout: 50ms}
      - - {id: slow, wait: dev.part, timeout: 5s}
        - {id: then, set: {dev.b: true}}
"""
    )
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    await asyncio.wait_for(executor.wait_paused(), DEADLINE)
    assert rig.host.ended("1.2.1") == [StepOutcome.INTERRUPTED]
    rig.device("dev.part", True)
    executor.resume(FailureChoice.SKIP)
    await rig.done()
    assert rig.writes() == [("dev.b", True)]


# --- prompts ------------------------------------------------------------------------------

PROMPT = """\
recipe: prompt
version: 1
steps:
  - id: ask
    prompt: How many parts?
    answer: {name: qty, type: int, min: 1, max: 9}
  - {id: put, set: {dev.count: qty}}
"""


@pytest.mark.asyncio
async def test_a_scripted_answer_is_bound_for_later_steps(rig: Rig) -> None:
    await finish(rig, rig.executor(PROMPT, operator=ScriptedOperator({"ask": 5})))
    assert rig.writes() == [("dev.count", 5)]


@pytest.mark.asyncio
async def test_no_answer_is_a_step_failure_with_its_message(rig: Rig) -> None:
    executor = rig.executor(PROMPT, operator=ScriptedOperator({}))
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None)
    failure = executor.failure
    assert failure is not None
    assert failure.message.startswith("prompt 'ask' ('How many parts?') needs an operator")
    assert "--answer ask=VALUE" in failure.message
    assert rig.writes() == []


# --- stepping and breakpoints -------------------------------------------------------------

STEPS = """\
recipe: stepped
version: 1
steps:
  - {id: one, set: {dev.a: true}}
  - {id: two, set: {dev.b: true}}
  - {id: three, set: {dev.count: dev.count + 5}}
  - {id: four, set: {dev.c: true}}
"""


@pytest.mark.asyncio
async def test_step_mode_run_skip_continue(rig: Rig) -> None:
    rig.device("dev.count", 2)
    operator = StepOperator([StepChoice.RUN, StepChoice.SKIP, StepChoice.CONTINUE])
    executor = rig.executor(STEPS, operator=operator, step_mode=True)
    await finish(rig, executor)
    assert [p.step_id for p in operator.paused] == ["one", "two", "three"]
    assert operator.paused[2].preview == ("dev.count := 7",)
    assert not operator.paused[0].breakpoint
    assert rig.writes() == [("dev.a", True), ("dev.count", 7), ("dev.c", True)]
    assert rig.host.ended("2") == [StepOutcome.SKIPPED]


@pytest.mark.asyncio
async def test_a_breakpoint_pauses_before_its_step_only(rig: Rig) -> None:
    operator = StepOperator([StepChoice.RUN])
    executor = rig.executor(STEPS, operator=operator, breakpoints={"three"})
    rig.host.on(StepPaused, lambda _: written.extend(rig.writes()))
    written: list[tuple[str, Value]] = []
    await finish(rig, executor)
    assert [(p.step_id, p.breakpoint) for p in operator.paused] == [("three", True)]
    assert written == [("dev.a", True), ("dev.b", True)]
    assert len(rig.writes()) == 4


@pytest.mark.asyncio
async def test_step_mode_abort_asks_the_controller_and_writes_nothing(rig: Rig) -> None:
    operator = StepOperator([StepChoice.RUN, StepChoice.ABORT])
    executor = rig.executor(STEPS, operator=operator, step_mode=True)
    task = rig.start(executor)
    await wait_until(lambda: bool(rig.host.aborts))
    assert rig.host.aborts == ["the operator aborted before step 'two'"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert rig.writes() == [("dev.a", True)]
