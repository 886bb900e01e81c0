"""The wait step: wait until a condition holds. Its helpers serve a set step's `wait` too."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import ClassVar

from pydantic import BaseModel

from cellctl import expr
from cellctl.errors import did_you_mean
from cellctl.recipe.fields import MaybeTimeout, StepId
from cellctl.recipe.ranges import Block, Loc, Scope
from cellctl.recipe.steps.base import CheckContext, StepBase, StepContext, tags_read
from cellctl.recipe.steps.parts import Wait, WaitField
from cellctl.recipe.steps.planning import PlanContext, PlanPart


class WaitStep(StepBase):
    """Wait until a condition holds, at most `timeout` (or the recipe's default timeout)."""

    KIND: ClassVar[str] = "wait"
    PARTS: ClassVar[Mapping[str, type[BaseModel]]] = {"wait": Wait}

    id: StepId
    wait: WaitField
    timeout: MaybeTimeout = None

    @property
    def uses_default_timeout(self) -> bool:
        """A wait is bounded by the default timeout when it gives none."""
        return True

    def retry_refusal(self) -> str | None:
        """A wait may always run again."""
        return None

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """The condition and the `changed` tags; a timeout from somewhere."""
        check_wait(c, self.wait, (*loc, "wait"), label, scope, ())
        c.need_timeout(self.timeout, loc, "wait", label)

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """The wait runs to its timeout at worst."""
        timeout = self.timeout or p.default_timeout
        part = PlanPart(f"wait until {plan_wait(p, self.wait)}", timeout, timeout or 0.0)
        part.reads += p.tags(self.wait.until) + list(self.wait.changed)
        return part

    async def run(self, ctx: StepContext) -> None:
        """Wait on the tag board until the condition holds and each `changed` tag moved."""
        ctx.started(f"until {self.wait.describe()}")
        if self.wait.changed and ctx.changed_from is None:
            # Once per step: a retry or a re-entry after a pause wrote nothing, so a
            # change since the step began still counts.
            ctx.changed_from = await ctx.read(list(self.wait.changed))
        await ctx.wait(self.wait, ctx.deadline())

    async def preview(self, ctx: StepContext) -> list[str]:
        """The condition with its tags' values now."""
        return [await preview_wait(ctx, self.wait)]


def check_wait(
    c: CheckContext, wait: Wait, loc: Loc, label: str, scope: Scope, own: Collection[str]
) -> None:
    """The condition, and each `changed` tag: a tag of the cell, not a heartbeat, not one
    of the step's `own` writes."""
    full = isinstance(c.raw(loc), dict)  # {until: ..., changed: [...]}
    c.condition(wait.until, (*loc, "until") if full else loc, f"{label}: wait", scope)
    if c.cell is None:
        return  # tags are checked once the cell file is valid
    for index, name in enumerate(wait.changed):
        subject = f"{label}: wait: changed {name}"
        tag_loc = (*loc, "changed", index)
        if name not in c.tags:
            hint = did_you_mean(name, c.tags)
            if not hint and name in c.parameter_names | set(c.bindable):
                hint = " (it is not a tag: only a tag the devices report can change)"
            c.add(tag_loc, "unknown-tag", f"{subject}: unknown tag {name!r}{hint}")
        elif name in c.cell.heartbeat_tags:
            # Only the controller writes it, and it changes every period: it proves nothing.
            c.add(
                tag_loc,
                "heartbeat-tag",
                f"{subject}: tag {name} is the controller's heartbeat to device "
                f"{c.tags[name].device}; it changes on its own, so it proves nothing",
            )
        elif name in own:
            # The step's own write changes it: that says nothing of the machine's answer.
            c.add(
                tag_loc,
                "own-write",
                f"{subject}: tag {name} is written by this step; its own write changes "
                "it, so it proves nothing (list a tag the device changes in answer, such "
                "as a cycle counter)",
            )


def plan_wait(p: PlanContext, wait: Wait) -> str:
    """A wait with parameters resolved: 'press.cycle_done; changed: press.cycles'."""
    return wait.describe(until=p.resolve(wait.until)[0])


async def preview_wait(ctx: StepContext, wait: Wait) -> str:
    """'until EXPR (now tag = value, ...)': the wait with its tags read now."""
    tags = sorted({*tags_read(wait.until, ctx.cell), *wait.changed})
    now = await ctx.look(tags) if tags else {}
    values = ", ".join(f"{t} = {expr.show(v.value)}" for t, v in now.items())
    return f"until {wait.describe()}" + (f" (now {values})" if values else "")
