"""Complete means the work was done, on the demo cell's simulators over the real protocols:
a press left latched (cycle_done on, as the README's `write` example leaves it) never counts
as a pressed part, and a refused robot pick holds the batch. The witness is the plant model's
own count of press cycles, not our events."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from cellctl.control.events import StepPaused
from cellctl.control.machine import Command, State
from cellctl.control.operator import PromptRequest, ScriptedOperator, StepChoice
from cellctl.io.session import TagIO
from cellctl.testing import Harness, Served, controller_for, entered, wait_until
from drivers.base import Value
from hil_tests.run_support import DEMO, PRESS_FIT, serve_demo

#: Seconds a batch here may take before the test fails (each takes 1–5 s at the demo's speed).
BATCH = 30.0

#: Each demo recipe: its parameters and answers, the press force its first press step sets
#: (the latch is made at that force, so only the count tells a stale cycle from its own), the
#: press cycles a run makes, and the prompt whose answer waits for the latch (None: latched
#: before Start). The changeover releases the press itself in clear-cell, so its latch comes
#: after that, while the operator swaps the tool: only its press-idle step is left to see it.
RECIPES: dict[str, tuple[list[str], list[str], float, int, str | None]] = {
    "press-fit": (["parts=2"], [], 12.0, 2, None),
    "changeover": (
        [],
        ["swap-tool=A12", "wrong-tool=ok", "trial-rejected=ok"],
        10.0,
        1,
        "swap-tool",
    ),
    "press-calibration": ([], ["prepare=ok", "gauge-drift=ok"], 5.0, 2, None),
}


class LatchFirst:
    """The scripted operator, except that its answer to one prompt waits until `go` is set."""

    def __init__(self, scripted: ScriptedOperator, prompt: str | None) -> None:
        self.scripted = scripted
        self.name = scripted.name
        self.prompt = prompt
        self.asked = asyncio.Event()
        self.go = asyncio.Event()

    async def answer(self, request: PromptRequest) -> Value | None:
        """The scripted answer; for `prompt`, once `go` is set."""
        if request.step_id == self.prompt:
            self.asked.set()
            await self.go.wait()
        return await self.scripted.answer(request)

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        """As the scripted operator decides (it never steps)."""
        return await self.scripted.confirm_step(pause)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on simulators shared by this module's tests."""
    with serve_demo(tmp_path_factory.mktemp("demo")) as served:
        yield served


def latched_seen(io: TagIO) -> bool:
    """True once the controller's poll of the press delivered cycle_done true."""
    sample = io.board.latest("press.cycle_done")
    return sample is not None and sample.value is True


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_latched_press_never_counts_as_a_pressed_part(demo: Served, name: str) -> None:
    params, answers, force, pressed, latch_at = RECIPES[name]
    press = demo.simulator.models["press"]
    gates: list[LatchFirst] = []

    def gated(scripted: ScriptedOperator) -> LatchFirst:
        gates.append(LatchFirst(scripted, latch_at))
        return gates[-1]

    async def latch(run: Harness) -> int:
        """The press cycled and still says done, at the force the recipe wants; its count."""
        await run.io.write("press.setpoint_kN", force)
        await run.io.write("press.cycle_start", True)
        await wait_until(lambda: press.get("cycle_done") is True, 5.0, "the press to latch")
        # Latched long enough for the controller's own poll to have seen it, as a latch
        # left by a manual write is.
        await wait_until(lambda: latched_seen(run.io), 5.0, "the poll to see the latch")
        assert press.get("cycle_start") is True
        return int(press.get("cycles"))

    async def scenario() -> None:
        recipe = DEMO / f"{name}.yaml"
        async with controller_for(demo.cell_file, recipe, params, answers, gated) as run:
            controller = run.controller
            await controller.command(Command.RESET, cause="test")
            assert await controller.wait_for({State.IDLE, State.STOPPED}) is State.IDLE
            if latch_at is None:
                # Latched after Resetting, just before Start: whatever Resetting writes, the
                # batch starts on a latched press.
                latched = await latch(run)
                await controller.command(Command.START, cause="test")
            else:
                await controller.command(Command.START, cause="test")
                async with asyncio.timeout(BATCH):
                    await gates[0].asked.wait()
                latched = await latch(run)  # after the recipe's own release, before its cycle
                gates[0].go.set()
            ended = {State.COMPLETE, State.HELD, State.STOPPED, State.ABORTED}
            state = await controller.wait_for(ended)
            assert state is State.COMPLETE, [e for e in run.events if "Step" in type(e).__name__]
            assert int(press.get("cycles")) - latched == pressed

    demo.loop.run(scenario(), timeout=BATCH)


def test_a_refused_pick_holds_press_fit(demo: Served) -> None:
    press = demo.simulator.models["press"]

    async def scenario() -> None:
        async with controller_for(demo.cell_file, PRESS_FIT, params=["parts=1"]) as run:
            cycles = int(press.get("cycles"))
            demo.simulator.fault("robot", "gripper", True)  # Pick answers false
            try:
                await run.controller.command(Command.RESET, cause="test")
                await run.controller.wait_for({State.IDLE})
                await run.controller.command(Command.START, cause="test")
                state = await run.controller.wait_for(
                    {State.HELD, State.COMPLETE, State.STOPPED, State.ABORTED}
                )
                assert state is State.HELD, run.events
                cause = entered(run.events, State.HOLDING).cause
                assert "robot.pick(slot=1) answered false" in cause, cause
                assert int(press.get("cycles")) == cycles  # nothing was pressed
                await run.controller.command(Command.ABORT, cause="test: gripper")
                assert await run.controller.wait_for({State.ABORTED}) is State.ABORTED
            finally:
                demo.simulator.fault("robot", "gripper", False)

    demo.loop.run(scenario(), timeout=BATCH)
