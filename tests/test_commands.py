"""The command layer: an operator command is accepted (with the state it led to) or refused
(with the reason its CommandRefused event gives), and a Stop before the start ends the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from cellctl.control.commands import Accepted, Commands, OperatorCommand, Refused
from cellctl.control.events import CommandRefused, StateChanged
from cellctl.control.machine import Command, State
from cellctl.testing import wait_until
from tests.test_controller import DEADLINE, Bench, opened


@pytest_asyncio.fixture
async def bench() -> AsyncIterator[Bench]:
    """A connected bench whose controller is open."""
    async with opened(Bench()) as rig:
        yield rig


def order(command: Command, cause: str = "ann (key)") -> OperatorCommand:
    """A command as operator ann gave it."""
    return OperatorCommand("ann", command, cause)


@pytest.mark.asyncio
async def test_a_command_is_accepted_with_its_state_or_refused_with_its_reason(
    bench: Bench,
) -> None:
    commands = Commands(bench.ctl)
    accepted = await commands.submit(order(Command.RESET, "ann (key r)"))
    assert accepted == Accepted(State.RESETTING)
    assert bench.of(StateChanged)[-1].cause == "ann (key r)"
    await bench.settle(State.IDLE)
    refused = await commands.submit(order(Command.HOLD))
    assert isinstance(refused, Refused) and "Hold" in refused.reason and "Idle" in refused.reason
    assert bench.of(CommandRefused)[-1].reason == refused.reason
    assert bench.ctl.state is State.IDLE


@pytest.mark.asyncio
async def test_a_standing_trip_refuses_start_naming_the_interlock(bench: Bench) -> None:
    commands = Commands(bench.ctl)
    await commands.submit(order(Command.RESET))
    await bench.settle(State.IDLE)
    bench.device("safety.ok", False)
    await wait_until(lambda: "curtain" in bench.ctl.interlocks.active)
    refused = await commands.submit(order(Command.START))
    assert refused == Refused(
        "Start is blocked by interlock curtain (safety.ok = false) until it clears"
    )
    assert bench.ctl.state is State.IDLE and bench.ctl.executor.steps_done == 0


@pytest.mark.asyncio
async def test_a_key_command_is_carried_out_in_a_task_of_the_controllers(bench: Bench) -> None:
    await bench.to_execute()
    Commands(bench.ctl).submit_soon(order(Command.HOLD, "ann (key h)"))
    assert await bench.settle(State.HELD) is State.HELD
    held = [e for e in bench.of(StateChanged) if e.command is Command.HOLD]
    assert [e.cause for e in held] == ["ann (key h)"]


@pytest.mark.asyncio
async def test_a_stop_before_the_start_ends_the_run_with_nothing_written(bench: Bench) -> None:
    cause = "SIGTERM before the batch started"
    Commands(bench.ctl).submit_soon(order(Command.STOP, cause))
    assert bench.ctl.start_refused == cause
    ended = await asyncio.wait_for(bench.ctl.run_batch(stop_when_held=lambda: True), DEADLINE)
    assert ended.state is State.STOPPED and ended.cause == cause
    assert bench.states() == [] and bench.writes() == []
