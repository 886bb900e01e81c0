"""The delay step: wait a fixed time."""

from __future__ import annotations

from typing import ClassVar

from cellctl.durations import format_duration
from cellctl.recipe.fields import PositiveDuration
from cellctl.recipe.steps.base import StepBase, StepContext
from cellctl.recipe.steps.planning import PlanContext, PlanPart


class DelayStep(StepBase):
    """Wait a fixed time."""

    KIND: ClassVar[str] = "delay"

    delay: PositiveDuration

    def retry_refusal(self) -> str | None:
        """A delay may always run again."""
        return None

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """The delay's length is its worst case."""
        return PlanPart(f"delay {format_duration(self.delay)}", worst_case=self.delay)

    async def run(self, ctx: StepContext) -> None:
        """Sleep; a pause cuts it and the step starts over on resume."""
        ctx.started(f"delay {format_duration(self.delay)}")
        await ctx.sleep(self.delay)

    async def preview(self, ctx: StepContext) -> list[str]:
        """The delay's length."""
        return [f"delay {format_duration(self.delay)}"]
