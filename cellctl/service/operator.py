"""The operator of a served batch: whoever answers through the command layer. A prompt or a
paused step waits here until a client answers (ANSWER, STEP requests); a Hold or Abort that
cancels the wait leaves nothing pending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from cellctl.control.events import StepPaused
from cellctl.control.operator import PromptRequest, StepChoice
from cellctl.errors import BadValue
from drivers.base import Value


class NothingToAnswer(BadValue):
    """An answer, or a step, with no prompt or paused step waiting for it."""


class RemoteOperator:
    """Answers prompts and decides before paused steps, as the service's clients say."""

    def __init__(self, name: str | None, changed: Callable[[], None]) -> None:
        self.name = name
        self._changed = changed
        #: The prompt waiting now, and the future its answer resolves.
        self.prompt: PromptRequest | None = None
        self._answer: asyncio.Future[Value | None] | None = None
        #: The step paused before now (stepping or a breakpoint), and its decision's future.
        self.paused: StepPaused | None = None
        self._decision: asyncio.Future[StepChoice] | None = None

    async def answer(self, request: PromptRequest) -> Value | None:
        """Wait for a client's answer to `request` (already checked against its type)."""
        future: asyncio.Future[Value | None] = asyncio.get_running_loop().create_future()
        self.prompt, self._answer = request, future
        self._changed()
        try:
            return await future
        finally:
            self.prompt, self._answer = None, None
            self._changed()

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        """Wait for a client's decision before the paused step."""
        future: asyncio.Future[StepChoice] = asyncio.get_running_loop().create_future()
        self.paused, self._decision = pause, future
        self._changed()
        try:
            return await future
        finally:
            self.paused, self._decision = None, None
            self._changed()

    def give_answer(self, step_id: str, text: str) -> str:
        """Answer the waiting prompt `step_id` with `text`; BadValue naming what is wrong."""
        request, future = self.prompt, self._answer
        if request is None or future is None or future.done():
            raise NothingToAnswer(f"answer {step_id}: no prompt is waiting for an answer")
        if step_id != request.step_id:
            raise NothingToAnswer(
                f"answer {step_id}: the prompt waiting is {request.step_id!r}, not {step_id!r}"
            )
        value: Value | None = None
        if request.answer is not None:
            try:
                value = request.answer.parse_text(text)
            except BadValue as err:
                raise BadValue(f"answer {step_id}: {err}") from None
        future.set_result(value)
        return f"answered {step_id}" + ("" if value is None else f" = {value}")

    def decide(self, choice: StepChoice) -> str:
        """Decide before the paused step; NothingToAnswer when no step is paused."""
        pause, future = self.paused, self._decision
        if pause is None or future is None or future.done():
            raise NothingToAnswer(
                "step: no step is paused (in Maintenance mode, `step` while "
                "Execute pauses before the next step)"
            )
        future.set_result(choice)
        return f"{choice} {pause.path} {pause.label}"
