"""One step being run: the StepContext a step kind runs through (cellctl.recipe.steps), on
the executor's session, gate, operator and event stream.

Freshness: every value that reads tags is read from the devices at that moment, after the
previous write was confirmed (writes are awaited in order), and a wait only counts samples
taken at or after its own start, which follows its branch's last confirmed write or call.
"""

from __future__ import annotations

import asyncio
import time
from collections import ChainMap
from collections.abc import Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING

from cellctl import expr
from cellctl.control.events import (
    MethodCalled,
    PromptAnswered,
    PromptShown,
    StepEnded,
    StepOutcome,
    StepStarted,
    TagWritten,
    WaitProgress,
)
from cellctl.control.gate import Interrupted
from cellctl.control.ledger import IntentNotRecorded
from cellctl.control.operator import FailureChoice, NoAnswer, PromptRequest
from cellctl.control.waiting import judge, until_met
from cellctl.errors import CellctlError
from cellctl.io.drivers import DeviceFailed
from cellctl.io.session import OutOfRange
from cellctl.recipe import Answer, StepBase, Wait
from cellctl.recipe.steps import At, StepError, seconds_text, tags_read
from cellctl.values import TagValue
from drivers.base import Quality, Value

if TYPE_CHECKING:  # the executor creates each StepRun and hands it itself
    from cellctl.cell import Cell
    from cellctl.control.executor import Executor, StepFailure

__all__ = ["Scope", "StepRun"]

#: The names in scope: a round's or a branch's own over the recipe's parameters.
Scope = ChainMap[str, Value]


def _wall_clock(deadline: float | None) -> float | None:
    """A monotonic deadline as the time.time() it falls at, for people to read (never to
    decide on)."""
    return None if deadline is None else time.time() + (deadline - time.monotonic())


class StepRun:
    """One step being run (an attempt and its re-entries): where it is, how it is named, its
    bound, its progress, and the StepContext its kind runs through."""

    def __init__(
        self, executor: Executor, step: StepBase, path: str, round_: int | None, scope: Scope
    ) -> None:
        self.executor = executor
        self.step = step
        self.path = path
        self.label = step.label(path)
        self.round = round_
        self.timeout = executor.recipe.timeout_of(step)
        self.scope = scope
        self.writes_done = 0  # a set step's writes confirmed in this attempt
        #: The `changed` tags' values when the step started (None: not read yet, or no `changed`).
        self.changed_from: dict[str, Value] | None = None
        #: Of those, the tags the safe state set otherwise while paused: tag -> safe value.
        self.undone: dict[str, Value] = {}
        self.parked = False  # interrupted, at its boundary until the resume
        #: The operator's question about undone writes, queued with the failures.
        self.question: tuple[StepFailure, asyncio.Future[FailureChoice]] | None = None

    @property
    def cell(self) -> Cell:
        """The cell the recipe runs on."""
        return self.executor.io.cell

    @property
    def named(self) -> str:
        """The step as the operator's questions name it ("step 2.6 press")."""
        return f"step {self.path} {self.step.id}" if self.step.id else f"step #{self.path}"

    # --- time and events --------------------------------------------------------------------

    def deadline(self) -> float | None:
        """time.monotonic() at which the step times out when (re)entered now, None for never.

        Monotonic: a wall clock set forward or back (NTP, an operator) must neither fire a
        timeout early nor hold it off."""
        return None if self.timeout is None else time.monotonic() + self.timeout

    def past(self, deadline: float | None) -> bool:
        """True once the monotonic clock is beyond `deadline` (never for None)."""
        return deadline is not None and time.monotonic() > deadline

    def checkpoint(self, at: At) -> None:
        """Before a write, call, wait or question: stop here when a pause or trip says so."""
        self.executor.gate.checkpoint(at)

    def started(self, detail: str) -> None:
        """Record the step's start with what it does."""
        step = self.step
        self.executor.emit(
            StepStarted(
                path=self.path,
                step_id=step.id,
                kind=step.kind,
                label=self.label,
                detail=detail,
                round=self.round,
            )
        )

    def ended(self, outcome: StepOutcome, error: str | None = None) -> None:
        """Record how the step (or this attempt) ended."""
        self.executor.emit(
            StepEnded(
                path=self.path, step_id=self.step.id, label=self.label, outcome=outcome, error=error
            )
        )

    # --- names and values -------------------------------------------------------------------

    def names(self) -> Mapping[str, Value]:
        """The parameters and bound names in scope."""
        return self.scope

    def bind(self, name: str, value: Value) -> None:
        """Bind a name for the steps after this one."""
        self.scope[name] = value

    def shown(self, expression: expr.Expression) -> str:
        """An expression's value when it reads no tag, else its text."""
        scope = self.scope
        # Each name looked up, not `names <= scope.keys()`: a ChainMap's keys view makes a set
        # of every key in every map to compare with (once per set step).
        if not all(name in scope for name in expression.names):
            return expression.text
        try:
            return expr.show(expr.evaluate(expression, self.scope))
        except expr.EvaluationError:
            return expression.text

    async def read(self, tags: Sequence[str]) -> dict[str, Value]:
        """Fresh values of tags; a BAD one is a step failure naming the tag and the error."""
        if not tags:
            return {}
        values: dict[str, Value] = {}
        for tag, read in (await self.executor.io.read(list(tags))).items():
            if read.quality is Quality.BAD or read.value is None:
                raise StepError(f"{self.label}: cannot read {tag}: {read.error or 'no value'}")
            values[tag] = read.value
        return values

    async def look(self, tags: Sequence[str]) -> dict[str, TagValue]:
        """Fresh samples of tags, as they are (for the operator's preview)."""
        return await self.executor.io.read(list(tags))

    async def resolve(
        self, expressions: Mapping[str, expr.Expression], what: str
    ) -> dict[str, Value]:
        """Evaluate expressions with one fresh read of the tags they name."""
        tags = sorted({t for e in expressions.values() for t in tags_read(e, self.cell)})
        # No tag to read (a set step's value from its round's index): the scope as it is, not
        # a copy of it per step.
        values: Mapping[str, Value] = (
            {**self.scope, **await self.read(tags)} if tags else self.scope
        )
        resolved: dict[str, Value] = {}
        for name, expression in expressions.items():
            try:
                resolved[name] = expr.evaluate(expression, values)
            except expr.EvaluationError as err:
                raise StepError(f"{self.label}: {what}{name}: {err}") from None
        return resolved

    async def evaluate(self, expression: expr.Expression, what: str) -> Value:
        """One expression's value; `what` names it in a failure ('if', 'set dev.run')."""
        return (await self.resolve({what: expression}, ""))[what]

    async def resolved(self, expression: expr.Expression) -> str:
        """An expression's value now, or why it cannot be resolved (never raises)."""
        try:
            value = await self.evaluate(expression, "")
        except (StepError, CellctlError) as err:
            return f"{expression.text} (cannot resolve now: {err})"
        return expr.show(value)

    # --- outputs ----------------------------------------------------------------------------

    async def write(self, tag: str, value: Value) -> None:
        """Check the value for the tag, write it and wait for the device to confirm it."""
        io = self.executor.io
        try:
            checked = io.check(tag, value)
        except OutOfRange as err:
            raise StepError(f"{self.label}: {err}") from None
        # Again after the fresh read: a trip during it must stop this write too.
        self.checkpoint(At.OUTPUT)
        ledger = self.executor.ledger
        try:  # on disk before the write leaves: a write the record cannot name is not sent
            token = await ledger.intent(tag, checked, self.path, self.step.id)
        except IntentNotRecorded as err:
            raise StepError(f"{self.label}: {tag} not written: {err}") from None
        try:
            self.checkpoint(At.OUTPUT)  # a trip while the intent was committed stops it too
        except BaseException as err:  # it never left: not of unknown outcome (resume asks)
            ledger.confirmed(token, f"not sent: {type(err).__name__}")
            raise
        try:
            await io.write(tag, checked)
        except OutOfRange as err:
            ledger.confirmed(token, f"not sent: {err}")
            raise StepError(f"{self.label}: {err}") from None
        except DeviceFailed as err:
            # Sent, or maybe sent: whether the device took the value is not known.
            ledger.confirmed(token, str(err), unknown=True)
            raise StepError(
                f"{self.label}: {err}; its outcome is unknown", outcome_unknown=True
            ) from err
        except BaseException as err:  # a cancel while in flight
            ledger.confirmed(token, f"{type(err).__name__}: {err}".rstrip(": "), unknown=True)
            raise
        ledger.confirmed(token, None)
        self.executor.commanded_now(tag, checked)
        self.writes_done += 1
        self.executor.emit(TagWritten(tag=tag, value=checked, path=self.path))

    async def call(self, method: str, args: Mapping[str, Value]) -> Value | None:
        """Call a device method, its intent on disk first; its answer (None: it answered
        nothing). A failure is confirmed as of unknown outcome: the device may have acted."""
        ledger = self.executor.ledger
        try:  # a device action as a write is: a call the record cannot name is not made
            token = await ledger.call_intent(method, args, self.path, self.step.id)
        except IntentNotRecorded as err:
            raise StepError(f"{self.label}: {method} not called: {err}") from None
        try:
            self.checkpoint(At.OUTPUT)  # a trip while the intent was committed stops it too
        except BaseException as err:
            ledger.confirmed(token, f"not sent: {type(err).__name__}")
            raise
        try:
            result = await self.executor.io.call(method, dict(args))
        except DeviceFailed as err:
            ledger.confirmed(token, str(err), unknown=True)
            raise StepError(f"{self.label}: {err}", outcome_unknown=True) from err
        except BaseException as err:  # a timeout or a cancel in flight
            ledger.confirmed(token, f"{type(err).__name__}: {err}".rstrip(": "), unknown=True)
            raise
        ledger.confirmed(token, None)
        return result

    def called(self, method: str, args: Mapping[str, Value], result: Value | None) -> None:
        """Record a call's answer."""
        self.executor.emit(
            MethodCalled(method=method, args=dict(args), result=result, path=self.path)
        )

    # --- waiting ----------------------------------------------------------------------------

    async def wait(self, wait: Wait, deadline: float | None) -> None:
        """Wait for a condition, evaluated on every update of its tags (never polled), and for
        each `changed` tag to differ from its value in `changed_from`.

        A fresh read made once listening (after the step's writes or calls were confirmed)
        stands in for a tag until a sample not older than it comes; older news never counts.
        """
        condition = wait.until
        before = self.changed_from or {}
        tags = sorted({*tags_read(condition, self.cell), *before})
        text = wait.describe(before)

        def judged(current: dict[str, TagValue]) -> tuple[bool, dict[str, Value | None]]:
            met, shown = self._judge(condition, current)
            met = met and all(shown[tag] != value for tag, value in before.items())
            self.executor.emit(
                WaitProgress(
                    path=self.path,
                    step_id=self.step.id,
                    condition=text,
                    values=shown,
                    met=met,
                    deadline=_wall_clock(deadline),
                )
            )
            return met, shown

        def go_on() -> bool:
            self.checkpoint(At.WAIT)  # a pause cuts the wait (Interrupted)
            return True

        gate = self.executor.gate
        waker = asyncio.Event()  # a pause sets it too, to cut the wait at once
        gate.wakers[At.WAIT].add(waker)
        try:
            last = await until_met(self.executor.io, tags, waker, judged, lambda: deadline, go_on)
        finally:
            gate.wakers[At.WAIT].discard(waker)
        assert last is not None  # go_on never calls it off
        if not last.met:
            assert self.timeout is not None
            now = expr.show_values(last.shown)
            raise StepError(
                f"{self.label} timed out after {seconds_text(self.timeout)} waiting for "
                f"{text}" + (f" ({now})" if now else "")
            )

    def _judge(
        self, condition: expr.Expression, current: dict[str, TagValue]
    ) -> tuple[bool, dict[str, Value | None]]:
        """(met, the tag values used); a tag without a good value leaves it unmet."""
        try:
            return judge(condition, current, self.scope)
        except expr.EvaluationError as err:
            raise StepError(f"{self.label}: wait {condition.text}: {err}") from None

    async def sleep(self, seconds: float) -> None:
        """Wait a fixed time; a pause cuts it (the step is re-entered on resume)."""
        if await self.executor.gate.sleep(seconds):
            raise Interrupted

    # --- the operator and nested steps ------------------------------------------------------

    async def ask(self, text: str, answer: Answer | None) -> Value | None:
        """Show a prompt and wait for the operator's answer (a pause cuts it)."""
        step_id = self.step.id
        assert step_id is not None  # a prompt has an id
        self.executor.emit(PromptShown(path=self.path, step_id=step_id, text=text))
        request = PromptRequest(self.path, step_id, text, answer)
        try:
            return await self.executor.gate.interruptible(
                partial(self.executor.operator.answer, request)
            )
        except NoAnswer as err:
            raise StepError(str(err)) from None

    def answered(self, value: Value | None) -> None:
        """Record the operator's accepted answer."""
        self.executor.emit(
            PromptAnswered(
                path=self.path,
                step_id=self.step.id or "",
                value=value,
                operator=self.executor.operator.name,
            )
        )

    async def run_block(
        self, steps: Sequence[StepBase], prefix: str, round_: int | None, own: Mapping[str, Value]
    ) -> None:
        """Run nested steps in order; names bound in them (and `own`) stay theirs."""
        await self.executor.run_block(steps, prefix, self.scope.new_child(dict(own)), round_)

    async def run_branches(self, branches: Sequence[tuple[Sequence[StepBase], str]]) -> None:
        """Run nested blocks together until all have finished; names they bind stay in scope."""
        gate = self.executor.gate

        async def branch(steps: Sequence[StepBase], prefix: str) -> None:
            # Busy once running: a branch cancelled before it ran never counted.
            gate.add_busy(1)
            try:
                await self.executor.run_block(steps, prefix, self.scope, self.round)
            finally:
                gate.add_busy(-1)

        # This one only waits for its branches; each parks at its first step when paused.
        gate.add_busy(-1)
        try:
            async with asyncio.TaskGroup() as group:
                for steps, prefix in branches:
                    group.create_task(branch(steps, prefix))
        finally:
            gate.add_busy(1)
