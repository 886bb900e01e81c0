"""The set step: write tags in the order written; with `wait`, then wait for a condition."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Annotated, ClassVar

from pydantic import BaseModel, BeforeValidator, Field

from cellctl import expr
from cellctl.cell import TagName
from cellctl.errors import did_you_mean
from cellctl.recipe.fields import Expr, MaybeTimeout, StepId, expression_given
from cellctl.recipe.ranges import Block, Loc, Scope, Write, tag_target
from cellctl.recipe.steps.base import At, CheckContext, StepBase, StepContext, StepError
from cellctl.recipe.steps.parts import Wait, WaitField, seconds_text
from cellctl.recipe.steps.planning import PlanContext, PlanPart
from cellctl.recipe.steps.wait import check_wait, plan_wait, preview_wait
from drivers.points import Access


class SetStep(StepBase):
    """Write tags in the order written; with `wait`, then wait for a condition.

    `timeout` bounds the whole step (writes and wait); a wait without one takes the default.
    """

    KIND: ClassVar[str] = "set"
    CARRIES: ClassVar[tuple[str, ...]] = ("wait",)
    ITEMS: ClassVar[Mapping[str, str]] = {"set": "set"}
    PARTS: ClassVar[Mapping[str, type[BaseModel]]] = {"wait": Wait}
    WORDS: ClassVar[Mapping[str, tuple[str, str]]] = {"set": ("tag", "tags")}

    id: StepId
    set: dict[TagName, Expr] = Field(min_length=1)
    wait: Annotated[WaitField | None, BeforeValidator(expression_given)] = None
    timeout: MaybeTimeout = None

    def idempotent(self, tag: str) -> bool:
        """True when repeating the write of `tag` is harmless (see `idempotent_writes`)."""
        return self.idempotent_writes[tag]

    @property
    def idempotent_writes(self) -> dict[str, bool]:
        """Each write of the step, in order: True when repeating the step repeats its value.

        A write is idempotent when its value reads no tag that this step writes at or after it
        (`count: count + 1` is not; a retry would read its own result) and no tag an earlier
        non-idempotent write of this step changed.
        """
        order = list(self.set)
        marks: dict[str, bool] = {}
        for index, (tag, value) in enumerate(self.set.items()):
            later = set(order[index:])
            changed = {name for name, ok in marks.items() if not ok}
            marks[tag] = not (value.names & (later | changed))
        return marks

    def written(self) -> tuple[str, ...]:
        """The tags the step writes, in order."""
        return tuple(self.set)

    @property
    def uses_default_timeout(self) -> bool:
        """A set with a wait is bounded by the default timeout when it gives none."""
        return self.wait is not None

    def retry_refusal(self) -> str | None:
        """A set step may run again when every write is idempotent."""
        unsafe = [tag for tag, ok in self.idempotent_writes.items() if not ok]
        return f"its write of {unsafe[0]} is not idempotent" if unsafe else None

    def retry_culprit(self, block_writes: AbstractSet[str] | None) -> str | None:
        """The first write a retry must not repeat, in words, else None.

        Alone, the step is judged by its own marks; in a retried block (`block_writes`: every
        tag the block writes), a value that reads any of the block's tags is not repeated.
        """
        for tag, value in self.set.items():
            if block_writes is None:
                if self.idempotent(tag):
                    continue
                why = "its value depends on a tag the step writes"
            else:
                reads = value.names & block_writes
                if not reads:
                    continue
                why = f"its value reads {', '.join(sorted(reads))}, which the block writes"
            return f"the write {tag}: {value.text!r}, which is not idempotent ({why})"
        return None

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """Each write against its tag; the wait after them."""
        for tag, value in self.set.items():
            write_loc = (*loc, "set", tag)
            _check_write(c, tag, value, write_loc, label, scope)
            done.writes.setdefault(tag, Write(label, write_loc, c.line(write_loc)))
        if self.wait is not None:
            check_wait(c, self.wait, (*loc, "wait"), label, scope, self.set.keys())
            c.need_timeout(self.timeout, loc, "wait", label)

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """The writes with their values; a wait runs to the step's timeout at worst."""
        part = PlanPart("set ")
        shown = []
        for tag, value in self.set.items():
            mark = "" if self.idempotent(tag) else " (not idempotent: not repeated blindly)"
            shown.append(f"{tag} = {p.resolve(value)[0]}{mark}")
            part.writes.append(tag)
            part.reads += p.tags(value)
        part.action += ", ".join(shown)
        part.timeout = self.timeout
        if self.wait is not None:
            part.action += f", then wait until {plan_wait(p, self.wait)}"
            part.reads += p.tags(self.wait.until) + list(self.wait.changed)
            part.timeout = self.timeout or p.default_timeout
        part.worst_case = part.timeout or 0.0
        return part

    async def run(self, ctx: StepContext) -> None:
        """Write in order (each value read fresh after the previous write), then the wait."""
        detail = ", ".join(f"{tag} := {ctx.shown(e)}" for tag, e in self.set.items())
        wait = self.wait
        ctx.started(detail if wait is None else f"{detail}, then until {wait.describe()}")
        deadline = ctx.deadline()
        if wait is not None and wait.changed and ctx.writes_done == 0:
            # Before the first write of each attempt (a retry writes again, so it looks for a
            # new change); a re-entry after a pause keeps the values its writes answer to.
            ctx.changed_from = await ctx.read(list(wait.changed))
        for tag, expression in list(self.set.items())[ctx.writes_done :]:
            ctx.checkpoint(At.OUTPUT)
            await ctx.write(tag, await ctx.evaluate(expression, f"set {tag}"))
            if ctx.past(deadline):
                assert ctx.timeout is not None
                raise StepError(
                    f"{ctx.label} timed out after {seconds_text(ctx.timeout)} writing {tag}"
                )
        if wait is not None:
            ctx.checkpoint(At.WAIT)
            await ctx.wait(wait, deadline)

    async def preview(self, ctx: StepContext) -> list[str]:
        """Each write with its value now; the wait with its tags now."""
        lines = [f"{tag} := {await ctx.resolved(e)}" for tag, e in self.set.items()]
        if self.wait is not None:
            lines.append(await preview_wait(ctx, self.wait))
        return lines


def _check_write(
    c: CheckContext, name: str, value: expr.Expression, loc: Loc, label: str, scope: Scope
) -> None:
    """One write: a tag of the cell that takes writes (not a heartbeat) and a value it takes."""
    if c.cell is None:
        return
    subject = f"{label}: set {name}"
    tag = c.cell.tags.get(name)
    if tag is None:
        hint = did_you_mean(name, c.cell.tags)
        c.add(loc, "unknown-tag", f"{subject}: unknown tag {name!r}{hint}", key=True)
        c.expression(value, loc, subject, scope)
        return
    if tag.access is not Access.RW:
        c.add(
            loc, "read-only", f"{subject}: tag {name} is read-only on device {tag.device}", key=True
        )
    elif name in c.cell.heartbeat_tags:
        # A recipe's write could be "no change" to the device's watchdog: it would trip.
        c.add(
            loc,
            "heartbeat-tag",
            f"{subject}: tag {name} is the controller's heartbeat to device {tag.device}; "
            "only the controller writes it",
            key=True,
        )
    c.value(value, loc, subject, scope, tag_target(name, tag))
