"""The repeat step: run nested steps N times, the round number bound to `index`."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from pydantic import Field

from cellctl import expr
from cellctl.durations import human_duration
from cellctl.recipe.fields import Expr, MaybeName
from cellctl.recipe.ranges import COUNT, Block, Loc, Scope, Span
from cellctl.recipe.steps.base import CheckContext, StepBase, StepContext, StepError
from cellctl.recipe.steps.planning import PlanContext, PlanPart, total_worst

if TYPE_CHECKING:  # the registry's union of every kind; set on the model by the registry
    from cellctl.recipe.steps import Step


class RepeatStep(StepBase):
    """Run the nested steps `repeat` times; the round (1..N) is bound to `index` when given."""

    KIND: ClassVar[str] = "repeat"
    NESTS: ClassVar[tuple[tuple[str, bool], ...]] = (("steps", False),)
    BINDS: ClassVar[tuple[tuple[str, ...], ...]] = (("index",),)

    repeat: Expr
    index: MaybeName = None
    steps: list[Step] = Field(min_length=1)

    def blocks(self) -> list[tuple[Sequence[StepBase], str]]:
        """The body; its steps' paths follow the repeat's own ('3.1')."""
        return [(self.steps, "")]

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """The count; the index is in scope in the body, which is checked once."""
        count = c.value(self.repeat, (*loc, "repeat"), f"{label}: repeat", scope, COUNT)
        body = scope.copy()
        if self.index is not None and c.bind(self.index, (*loc, "index"), label):
            high = count.high if count is not None else math.inf
            body.add(self.index, expr.Kind.NUMBER, Span(1, max(high, 1), True, count is not None))
            most = max(high, 1) if math.isfinite(high) else None
            c.note_range(self.index, f"index {self.index}", 1, most)
        inner = c.block(c.raw((*loc, "steps")), (*loc, "steps"), f"{path}.", body)
        done.writes.update(inner.writes)  # a repeat body's names end with the loop

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """The body once per round; the count as parameters decide it, or read at run time."""
        text, value = p.resolve(self.repeat)
        body = p.block(self.steps, f"{path}.")
        per_round = total_worst(s.worst_case for s in body)
        part = PlanPart("", branches=(body,))
        part.reads += p.tags(self.repeat)
        if isinstance(value, int | float) and not isinstance(value, bool) and value == int(value):
            part.count = int(value)
            part.action = f"repeat {part.count} times"
            part.worst_case = None if per_round is None else per_round * part.count
        else:
            part.action = f"repeat {text} times (the count is read at run time)"
            part.worst_case = None
            each = f" (each round {human_duration(per_round)})" if per_round is not None else ""
            p.note_unbounded(f"{self.label(path)} repeats a count read at run time{each}")
        if self.index is not None:
            part.action += f", round number in {self.index}"
        return part

    async def run(self, ctx: StepContext) -> None:
        """Each round runs the body with names of its own (the index among them)."""
        count = await ctx.evaluate(self.repeat, "repeat")
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise StepError(
                f"{ctx.label}: repeat {self.repeat.text} is {expr.show(count)}, "
                "not a whole number of at least 0"
            )
        ctx.started(f"repeat {count} times")
        for index in range(1, count + 1):
            own = {self.index: index} if self.index else {}
            await ctx.run_block(self.steps, f"{ctx.path}.", index, own)

    async def preview(self, ctx: StepContext) -> list[str]:
        """The count resolved now."""
        return [f"repeat {await ctx.resolved(self.repeat)} times"]
