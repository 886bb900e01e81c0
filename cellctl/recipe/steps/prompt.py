"""The prompt step: show a message to the operator, wait for an acknowledgement or an answer."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Annotated, ClassVar

from pydantic import BaseModel, Field

from cellctl.errors import BadValue
from cellctl.recipe.fields import MaybeTimeout, StepId, given
from cellctl.recipe.ranges import Block, Loc, Scope, Span
from cellctl.recipe.steps.base import CheckContext, StepBase, StepContext, StepError
from cellctl.recipe.steps.parts import seconds_text
from cellctl.recipe.steps.planning import PlanContext, PlanPart
from cellctl.recipe.typed import Answer


class PromptStep(StepBase):
    """Show a message to the operator and wait for an acknowledgement or a typed answer."""

    KIND: ClassVar[str] = "prompt"
    BINDS: ClassVar[tuple[tuple[str, ...], ...]] = (("answer", "name"),)
    PARTS: ClassVar[Mapping[str, type[BaseModel]]] = {"answer": Answer}

    id: StepId
    prompt: Annotated[str, Field(min_length=1)]
    answer: Annotated[Answer | None, given("answer", "empty")] = None
    timeout: MaybeTimeout = None

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """The answer's name is bound after the step, with its range and choices."""
        answer = self.answer
        if answer is None:
            return
        span = Span.of(answer.min, answer.max, answer.type == "int")
        if c.bind(answer.name, (*loc, "answer", "name"), label):
            done.exports[answer.name] = (answer.kind, span)
            c.note_range(answer.name, f"answer {answer.name}", answer.min, answer.max)
            if answer.choices is not None:
                c.note_choices(answer.name, answer.choices)

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """A prompt without its own timeout waits for the operator as long as it takes."""
        one_line = " ".join(self.prompt.split())
        action = f'ask the operator: "{one_line}"'
        if self.answer is not None:
            action += f" → {self.answer.name} ({self.answer.describe_range()})"
        if self.timeout is None:
            p.note_prompt(self.id)
        return PlanPart(action, self.timeout, self.timeout or 0.0)

    async def run(self, ctx: StepContext) -> None:
        """Ask; check a typed answer and bind it."""
        ctx.started(f"prompt: {self.prompt}")
        try:
            async with asyncio.timeout(ctx.timeout):
                value = await ctx.ask(self.prompt, self.answer)
        except TimeoutError:
            assert ctx.timeout is not None
            raise StepError(
                f"{ctx.label}: no answer to the prompt within {seconds_text(ctx.timeout)}"
            ) from None
        if self.answer is not None:
            try:
                value = self.answer.check_value(value)
            except BadValue as err:
                raise StepError(f"{ctx.label}: answer {self.answer.name}: {err}") from None
            ctx.bind(self.answer.name, value)
        ctx.answered(value)

    async def preview(self, ctx: StepContext) -> list[str]:
        """The prompt's text."""
        return [f"prompt: {self.prompt}"]
