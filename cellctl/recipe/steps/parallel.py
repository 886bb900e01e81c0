"""The parallel step: run branches of steps together; it ends when all have finished."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, ClassVar

from pydantic import Field

from cellctl.recipe.ranges import Block, Loc, Scope
from cellctl.recipe.steps.base import CheckContext, StepBase, StepContext, raw_items
from cellctl.recipe.steps.planning import PlanContext, PlanPart, total_worst

if TYPE_CHECKING:  # the registry's union of every kind; set on the model by the registry
    from cellctl.recipe.steps import Step


class ParallelStep(StepBase):
    """Run branches (each a list of steps) together; the step ends when all have finished."""

    KIND: ClassVar[str] = "parallel"
    NESTS: ClassVar[tuple[tuple[str, bool], ...]] = (("parallel", True),)
    WORDS: ClassVar[Mapping[str, tuple[str, str]]] = {"parallel": ("branch", "branches")}

    parallel: list[Annotated[list[Step], Field(min_length=1)]] = Field(min_length=2)

    def blocks(self) -> list[tuple[Sequence[StepBase], str]]:
        """The branches; a branch's steps' paths add its number ('4.1.2')."""
        return [(branch, f"{number}.") for number, branch in enumerate(self.parallel, 1)]

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """Each branch on its own; no two branches write the same tag."""
        for index, branch, branch_path in raw_items(c.raw((*loc, "parallel")), f"{path}."):
            inner = c.block(branch, (*loc, "parallel", index), f"{branch_path}.", scope.copy())
            for tag, write in inner.writes.items():
                first = done.writes.setdefault(tag, write)
                if first is not write:
                    c.add(
                        write.loc,
                        "parallel-conflict",
                        f"{write.label}: set {tag}: another branch of parallel {label} also "
                        f"writes it ({first.label}, line {first.line}); parallel branches must "
                        "not write the same tag",
                        key=True,
                    )
            done.exports.update(inner.exports)

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """The longest branch is the step's worst case."""
        branches = tuple(
            p.block(branch, f"{path}.{number}.") for number, branch in enumerate(self.parallel, 1)
        )
        lengths = [total_worst(s.worst_case for s in branch) for branch in branches]
        longest = None if None in lengths else max(x for x in lengths if x is not None)
        action = f"run {len(branches)} branches together; all must finish"
        return PlanPart(action, worst_case=longest, branches=branches)

    async def run(self, ctx: StepContext) -> None:
        """Every branch at once, each a task of its own."""
        ctx.started(f"{len(self.parallel)} branches at once")
        await ctx.run_branches(
            [(steps, f"{ctx.path}.{number}.") for number, steps in enumerate(self.parallel, 1)]
        )

    async def preview(self, ctx: StepContext) -> list[str]:
        """How many branches."""
        return [f"{len(self.parallel)} branches at once"]
