"""A call's answer is checked: a bool method's false fails its step unless the step's `expect`
accepts it; a failed expectation follows on_error like any step failure."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cellctl.control.events import MethodCalled, StepEnded, StepOutcome
from cellctl.control.executor import Executor
from cellctl.control.operator import FailureChoice
from cellctl.testing import wait_until
from drivers.base import Value
from tests.support import watched
from tests.test_executor import CELL, DEADLINE, Rig, finish

#: The executor tests' cell with a method that answers a number.
MEASURING = CELL + (
    '  arm.measure: {device: arm, node: "ns=2;s=Arm", method: "2:Measure", result: float64}\n'
)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    """The executor tests' memory cell, with arm.measure too."""
    async with watched(Rig(MEASURING)) as bench:
        yield bench


def answering(rig: Rig, method: str, *answers: Value | None) -> list[tuple[Value, ...]]:
    """The arm answers `method` with `answers` in turn (the last one again after; None: no
    output argument, as an OPC UA server may answer); its calls."""
    calls: list[tuple[Value, ...]] = []
    left = list(answers)

    async def handler(*args: Value) -> Value | None:
        calls.append(args)
        return left.pop(0) if len(left) > 1 else left[0]

    rig.arm.register_method(method, handler)
    return calls


def recipe(call: str) -> str:
    """A call step, then a write that shows whether the batch went on."""
    return (
        "recipe: r\nversion: 1\nsteps:\n"
        f"  - {{id: pick, {call}, timeout: 1s}}\n"
        "  - {id: after, set: {dev.b: true}}\n"
    )


async def failed(rig: Rig, executor: Executor) -> str:
    """Run until the executor holds on a failed step; its message."""
    rig.start(executor)
    await wait_until(lambda: executor.failure is not None, DEADLINE, "the step to fail")
    assert executor.failure is not None
    return executor.failure.message


@pytest.mark.asyncio
async def test_a_refused_pick_holds_the_batch(rig: Rig) -> None:
    answering(rig, "Pick", False)
    executor = rig.executor(recipe("call: arm.pick, args: {slot: 1}"))
    message = await failed(rig, executor)
    assert message == (
        "step 'pick': arm.pick(slot=1) answered false, expected true: the device refused "
        "(a step that accepts false says so with expect)"
    )
    assert executor.failure is not None and executor.failure.action == "hold"
    assert not executor.failure.outcome_unknown  # the device answered: nothing is unknown
    assert rig.writes() == []  # the batch did not go on
    assert [e.result for e in rig.host.of(MethodCalled)] == [False]  # the answer is on record


@pytest.mark.asyncio
async def test_a_refused_pick_retried_by_the_operator_goes_on_once_accepted(rig: Rig) -> None:
    calls = answering(rig, "Pick", False, True)
    executor = rig.executor(recipe("call: arm.pick, args: {slot: 1}"))
    await failed(rig, executor)
    executor.resume(FailureChoice.RETRY)
    await rig.done()
    assert calls == [(1,), (1,)]
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.DONE]
    assert rig.writes() == [("dev.b", True)]


@pytest.mark.parametrize(
    ("policy", "outcomes"),
    [
        ("skip", [StepOutcome.FAILED, StepOutcome.SKIPPED]),
        ("abort", [StepOutcome.FAILED]),
    ],
)
@pytest.mark.asyncio
async def test_a_failed_expectation_follows_on_error(
    rig: Rig, policy: str, outcomes: list[StepOutcome]
) -> None:
    answering(rig, "Pick", False)
    executor = rig.executor(recipe(f"call: arm.pick, args: {{slot: 1}}, on_error: {policy}"))
    task = rig.start(executor)
    await wait_until(lambda: StepOutcome.FAILED in rig.host.ended("1"), DEADLINE)
    if policy == "skip":
        await rig.done()
        assert rig.writes() == [("dev.b", True)]
    else:
        await wait_until(lambda: bool(rig.host.failures), DEADLINE)
        assert [f.action for f in rig.host.failures] == ["abort"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert rig.writes() == []
    assert rig.host.ended("1") == outcomes


@pytest.mark.asyncio
async def test_expect_accepts_what_it_states(rig: Rig) -> None:
    answering(rig, "Pick", False)
    executor = rig.executor(
        recipe('call: arm.pick, args: {slot: 1}, result: held, expect: "result == false"')
    )
    await finish(rig, executor)
    assert rig.host.ended("1") == [StepOutcome.DONE]
    assert rig.writes() == [("dev.b", True)]


@pytest.mark.asyncio
async def test_expect_refuses_a_true_it_does_not_state(rig: Rig) -> None:
    answering(rig, "Pick", True)
    executor = rig.executor(recipe('call: arm.pick, args: {slot: 2}, expect: "result == false"'))
    message = await failed(rig, executor)
    assert message == "step 'pick': arm.pick(slot=2) answered true, expected result == false"


@pytest.mark.asyncio
async def test_expect_on_a_number_with_a_parameter(rig: Rig) -> None:
    answering(rig, "Measure", 0.3, 0.7)
    text = (
        "recipe: r\nversion: 1\n"
        "parameters:\n  least: {type: float, default: 0.5}\n"
        "steps:\n"
        '  - {id: gauge, call: arm.measure, result: mm, expect: "result > least", timeout: 1s}\n'
        "  - {id: after, set: {dev.b: true}}\n"
    )
    executor = rig.executor(text)
    message = await failed(rig, executor)
    assert message == "step 'gauge': arm.measure() answered 0.3, expected result > least"
    executor.resume(FailureChoice.RETRY)
    await rig.done()
    assert rig.host.ended("1") == [StepOutcome.FAILED, StepOutcome.DONE]
    assert rig.writes() == [("dev.b", True)]


@pytest.mark.asyncio
async def test_a_true_pick_and_a_method_without_bool_pass_unchecked(rig: Rig) -> None:
    answering(rig, "Pick", True)
    answering(rig, "Measure", -1.0)  # no expect: a number is never judged on its own
    text = (
        "recipe: r\nversion: 1\nsteps:\n"
        "  - {id: pick, call: arm.pick, args: {slot: 1}, timeout: 1s}\n"
        "  - {id: gauge, call: arm.measure, timeout: 1s}\n"
    )
    await finish(rig, rig.executor(text))
    assert [e.outcome for e in rig.host.of(StepEnded)] == [StepOutcome.DONE, StepOutcome.DONE]


async def failures(rig: Rig, count: int) -> list[str]:
    """Wait until `count` step failures were reported to the host; their messages."""
    await wait_until(lambda: len(rig.host.failures) >= count, DEADLINE, f"failure {count}")
    return [f.message for f in rig.host.failures]


@pytest.mark.parametrize(
    ("call", "wanted"),
    [
        ("call: arm.pick, args: {slot: 1}", "arm.pick(slot=1) answered nothing, expected true"),
        ("call: arm.measure", "arm.measure() answered nothing, expected a float64 answer"),
        # A parameter named `result` never stands in for the answer that did not come.
        (
            'call: arm.measure, expect: "result > 0"',
            "arm.measure() answered nothing, expected result > 0",
        ),
    ],
)
@pytest.mark.asyncio
async def test_an_answer_without_a_result_fails_the_step(rig: Rig, call: str, wanted: str) -> None:
    answering(rig, "Pick", None)
    answering(rig, "Measure", None)
    text = recipe(call).replace(
        "steps:", "parameters:\n  result: {type: float, default: 1}\nsteps:"
    )
    executor = rig.executor(text)
    assert await failed(rig, executor) == f"step 'pick': {wanted}"
    assert rig.writes() == []


#: A gauge whose answer is checked and bound, then a step that uses the bound name.
GAUGE = (
    "recipe: r\nversion: 1\nsteps:\n"
    '  - {id: gauge, call: arm.measure, result: mm, expect: "result > 0.5", timeout: 1s}\n'
    '  - {id: after, if: "mm < 1", set: {dev.b: true}}\n'
)


@pytest.mark.asyncio
async def test_a_refused_answer_skipped_by_the_operator_is_not_bound(rig: Rig) -> None:
    answering(rig, "Measure", 0.0)
    executor = rig.executor(GAUGE)
    rig.start(executor)
    await failures(rig, 1)
    executor.resume(FailureChoice.SKIP)
    messages = await failures(rig, 2)
    # The step after it fails naming the name, instead of going on with the refused 0.
    assert messages[1] == "step 'after': if: no value for 'mm' in 'mm < 1'"
    assert rig.writes() == []


@pytest.mark.asyncio
async def test_a_retry_that_answers_nothing_leaves_no_stale_value(rig: Rig) -> None:
    answering(rig, "Measure", 0.3, None)
    executor = rig.executor(GAUGE)
    rig.start(executor)
    assert (await failures(rig, 1))[0] == (
        "step 'gauge': arm.measure() answered 0.3, expected result > 0.5"
    )
    executor.resume(FailureChoice.RETRY)
    assert (await failures(rig, 2))[1] == (
        "step 'gauge': arm.measure() answered nothing, expected result > 0.5"
    )
    executor.resume(FailureChoice.SKIP)
    assert (await failures(rig, 3))[2] == "step 'after': if: no value for 'mm' in 'mm < 1'"
    assert rig.writes() == []
