"""The call step: call a device method with named args, judge its answer, bind its result."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import ClassVar

from cellctl import expr
from cellctl.cell import INTEGER_TYPES, Method, MethodName
from cellctl.errors import did_you_mean
from cellctl.recipe.fields import Expr, MaybeExpr, MaybeName, MaybeTimeout, StepId
from cellctl.recipe.ranges import ANY, Block, Loc, Scope, Span, arg_target
from cellctl.recipe.steps.base import At, CheckContext, StepBase, StepContext, StepError
from cellctl.recipe.steps.parts import seconds_text
from cellctl.recipe.steps.planning import PlanContext, PlanPart
from cellctl.yamlload import scalar_offset
from drivers.base import Value
from drivers.points import DataType


class CallStep(StepBase):
    """Call a device method with named args; its result is bound to `result` when given, once
    the answer is accepted.

    `expect` is a condition over the name `result` that the answer must meet, else the step
    fails; without it, a method whose declared result is bool fails the step unless it answers
    true. A method that declares a result and answers nothing fails the step.
    """

    KIND: ClassVar[str] = "call"
    BINDS: ClassVar[tuple[tuple[str, ...], ...]] = (("result",),)
    ITEMS: ClassVar[Mapping[str, str]] = {"args": "arg"}

    id: StepId
    call: MethodName
    # A pydantic field (copied per instance), not a shared class attribute.
    args: dict[str, Expr] = {}  # noqa: RUF012
    result: MaybeName = None
    expect: MaybeExpr = None
    timeout: MaybeTimeout = None

    @property
    def uses_default_timeout(self) -> bool:
        """A call is bounded by the default timeout when it gives none."""
        return True

    def retry_culprit(self, block_writes: AbstractSet[str] | None) -> str | None:
        """A call is never repeated blindly."""
        return f"the call {self.call}, and a call is not known to be idempotent"

    def check(
        self, c: CheckContext, loc: Loc, path: str, label: str, scope: Scope, done: Block
    ) -> None:
        """The method and its args, `expect`, and the `result` name."""
        c.need_timeout(self.timeout, loc, "call", label)
        # Without a cell, the method and its args are checked once the cell file is valid.
        method = c.cell.methods.get(self.call) if c.cell is not None else None
        if method is None and c.cell is not None:
            hint = did_you_mean(self.call, c.cell.methods)
            if not hint and self.call in c.tags:
                hint = " (it is a tag: write it with 'set', read it in an expression)"
            c.add((*loc, "call"), "unknown-method", f"{label}: unknown method {self.call!r}{hint}")
            for arg, value in self.args.items():
                c.expression(value, (*loc, "args", arg), f"{label}: arg {arg}", scope)
        elif method is not None:
            self._check_args(c, method, loc, label, scope)
        if self.expect is not None:
            self._check_expect(c, self.expect, (*loc, "expect"), label, method, scope)
        if self.result is not None:
            self._check_result(c, self.result, method, loc, label, done)

    def _check_args(
        self, c: CheckContext, method: Method, loc: Loc, label: str, scope: Scope
    ) -> None:
        for arg, value in self.args.items():
            arg_loc = (*loc, "args", arg)
            subject = f"{label}: arg {arg}"
            datatype = method.args.get(arg)
            if datatype is None:
                hint = did_you_mean(arg, method.args)
                takes = ", ".join(method.args) or "no args"
                c.add(
                    arg_loc,
                    "unknown-arg",
                    f"{subject}: method {self.call} has no arg {arg!r}{hint} (it takes {takes})",
                    key=True,
                )
                c.expression(value, arg_loc, subject, scope)
            else:
                c.value(value, arg_loc, subject, scope, arg_target(self.call, arg, datatype))
        missing = [arg for arg in method.args if arg not in self.args]
        if missing:
            where = (*loc, "args") if "args" in (c.raw(loc) or {}) else (*loc, "call")
            listed = ", ".join(f"{arg} ({method.args[arg].value})" for arg in missing)
            c.add(
                where,
                "missing-arg",
                f"{label}: call {self.call} misses arg{'s' if len(missing) > 1 else ''} {listed}",
                key=True,
            )

    def _check_expect(
        self,
        c: CheckContext,
        value: expr.Expression,
        loc: Loc,
        label: str,
        method: Method | None,
        scope: Scope,
    ) -> None:
        """`expect` judges the call's answer: a condition over `result` (or the step's own
        `result:` name), parameters and bound names; no tags (no device is read for it)."""
        subject = f"{label}: expect"
        if method is not None and method.result is None:
            c.add(
                loc,
                "no-result",
                f"{subject}: method {self.call} returns nothing, so there is no result to expect",
            )
            return
        raw = c.raw(loc)
        for name in sorted(value.names & c.tags.keys()):
            c.add(
                loc,
                "expect-reads-tag",
                f"{subject}: reads tag {name}, but expect judges the call's answer only "
                "(`result`, parameters, bound names); wait for a tag in a step after the call",
                col_offset=scalar_offset(raw, max(value.text.find(name), 0)),
            )
        own = scope.copy()
        kind = expr.kind_of(method.result) if method is not None and method.result else None
        whole = method is not None and method.result in INTEGER_TYPES
        for answer in ("result", self.result):
            if answer is not None:
                own.add(answer, kind, Span(-math.inf, math.inf, whole, known=False))
        c.condition(value, loc, subject, own)

    def _check_result(
        self, c: CheckContext, name: str, method: Method | None, loc: Loc, label: str, done: Block
    ) -> None:
        """The `result` name: bound once accepted, of the method's declared result type."""
        result_loc = (*loc, "result")
        kind: expr.Kind | None = None
        span = ANY
        if method is not None and method.result is None:
            c.add(
                result_loc,
                "no-result",
                f"{label}: method {self.call} returns nothing, so 'result' has nothing to bind",
            )
        elif method is not None and method.result is not None:
            kind = expr.kind_of(method.result)
            span = Span(-math.inf, math.inf, method.result in INTEGER_TYPES, known=False)
        if c.bind(name, result_loc, label):
            done.exports[name] = (kind, span)

    def plan(self, p: PlanContext, path: str) -> PlanPart:
        """The call with its args resolved; it runs to its timeout at worst."""
        timeout = self.timeout or p.default_timeout
        args = ", ".join(f"{name}={p.resolve(value)[0]}" for name, value in self.args.items())
        result = f" → {self.result}" if self.result is not None else ""
        method = p.cell.methods.get(self.call)
        if self.expect is not None:
            result += f", expect {p.resolve(self.expect)[0]}"
        elif method is not None and method.result is DataType.BOOL:
            result += ", expect true"  # a bool answer of false fails the step
        part = PlanPart(f"call {self.call}({args}){result}", timeout, timeout or 0.0)
        for value in self.args.values():
            part.reads += p.tags(value)
        part.devices += [method.device] if method is not None else []
        return part

    async def run(self, ctx: StepContext) -> None:
        """Call with args read fresh; judge the answer; bind it once accepted."""
        ctx.checkpoint(At.OUTPUT)
        args = await ctx.resolve(self.args, "arg ")
        shown = ", ".join(f"{name}={expr.show(value)}" for name, value in args.items())
        ctx.started(f"{self.call}({shown})")
        ctx.checkpoint(At.OUTPUT)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop an Abort's cancel.
            async with asyncio.timeout(ctx.timeout):
                result = await ctx.call(self.call, args)
        except TimeoutError:
            assert ctx.timeout is not None
            raise StepError(
                f"{ctx.label} timed out after {seconds_text(ctx.timeout)} calling "
                f"{self.call}({shown}); its outcome is unknown",
                outcome_unknown=True,
            ) from None
        ctx.called(self.call, args, result)
        self._judge(ctx, f"{self.call}({shown})", result)
        # Bound only once accepted: a refused answer that the operator skips must not reach
        # the steps after it (they fail naming the unbound name instead).
        if self.result is not None and result is not None:
            ctx.bind(self.result, result)

    def _judge(self, ctx: StepContext, call: str, result: Value | None) -> None:
        """The answer meets the step's `expect`; without one, a bool method's answer is true. A
        method that declares a result and answered nothing fails (an OPC UA server may return
        no output argument): `expect` is never judged without the call's `result`, which a
        parameter of that name would otherwise stand in for."""
        method = ctx.cell.methods.get(self.call)
        declared = method.result if method is not None else None
        if result is None:
            if declared is None:
                return  # the method returns nothing, and nothing is expected of it
            if self.expect is not None:
                wanted = self.expect.text
            else:
                wanted = "true" if declared is DataType.BOOL else f"a {declared} answer"
            raise StepError(f"{ctx.label}: {call} answered nothing, expected {wanted}")
        if self.expect is None:
            if declared is not DataType.BOOL or result is True:
                return
            refused = (
                ": the device refused (a step that accepts false says so with expect)"
                if result is False
                else ""
            )
            raise StepError(
                f"{ctx.label}: {call} answered {expr.show(result)}, expected true{refused}"
            )
        try:
            # The step's own `result:` name too: expect may judge the answer by it.
            answer = {"result": result, **({self.result: result} if self.result else {})}
            met = expr.evaluate(self.expect, {**ctx.names(), **answer}) is True
        except expr.EvaluationError as err:
            raise StepError(
                f"{ctx.label}: {call} answered {expr.show(result)}: expect {self.expect.text}: "
                f"{err}"
            ) from None
        if not met:
            raise StepError(
                f"{ctx.label}: {call} answered {expr.show(result)}, expected {self.expect.text}"
            )

    async def preview(self, ctx: StepContext) -> list[str]:
        """The call with its args resolved now."""
        args = [f"{name}={await ctx.resolved(e)}" for name, e in self.args.items()]
        return [f"{self.call}({', '.join(args)})"]
