"""The executor: runs a recipe's steps on the cell while the machine is in Execute.

It is its own asyncio task, which the controller starts, holds (pause/resume) and cancels
(Abort); it never runs inside a state machine callback. Interruptions take effect at step
boundaries: a wait, delay, prompt or stepping question in progress is cut and re-entered on
resume, a write or call in flight always completes. Failures follow each step's `on_error`.

Freshness: every value that reads tags is read from the devices at that moment, after the
previous write was confirmed (writes are awaited in order), and a wait only counts samples
taken at or after its own start, which follows its branch's last confirmed write or call.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections import ChainMap
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import NoReturn, Protocol, TypeVar

from cellctl import expr
from cellctl.control.events import (
    Event,
    MethodCalled,
    Notice,
    PromptAnswered,
    PromptShown,
    StepEnded,
    StepOutcome,
    StepPaused,
    StepStarted,
    TagWritten,
    UnholdAsks,
    WaitProgress,
)
from cellctl.control.operator import FailureChoice, NoAnswer, Operator, PromptRequest, StepChoice
from cellctl.durations import format_duration
from cellctl.errors import BadValue, CellctlError
from cellctl.io.drivers import DeviceFailed
from cellctl.io.session import OutOfRange, TagIO
from cellctl.recipe import (
    AnyStep,
    CallStep,
    DelayStep,
    ParallelStep,
    PromptStep,
    Recipe,
    RepeatStep,
    SetStep,
    Wait,
    WaitStep,
)
from cellctl.values import TagValue
from drivers.base import Quality, Value
from drivers.points import DataType

T = TypeVar("T")
Scope = ChainMap[str, Value]


class PauseReason(enum.StrEnum):
    """Why the executor pauses at the next step boundary."""

    HOLD = "hold"
    SUSPEND = "suspend"
    STOP = "stop"


@dataclass(frozen=True)
class StepFailure:
    """A step that failed: where, why, and what its on_error asks of the controller."""

    path: str
    step_id: str | None
    label: str
    message: str  # one line naming the step and the cause
    action: str  # "hold" or "abort"
    outcome_unknown: bool  # a write or call was sent and its result is not known
    #: Not a failure but a question: the step's own writes that the safe state set otherwise
    #: while it was held (and Unholding does not restore). Re-run, skip or abort.
    undone: tuple[str, ...] = ()

    @property
    def choices(self) -> str:
        """What the operator may choose on Unhold, for messages."""
        return "re-run, skip or abort" if self.undone else "retry or skip"


class ExecutorHost(Protocol):
    """What the executor tells the controller."""

    def emit(self, event: Event) -> None:
        """Record and show an event."""
        ...

    def step_failed(self, failure: StepFailure) -> None:
        """A step failed; the controller issues Hold or Abort (synchronous)."""
        ...

    def operator_abort(self, reason: str) -> None:
        """The operator chose abort while stepping."""
        ...


class ChoiceNeeded(CellctlError):
    """Resume after a failed step without the operator's choice (retry or skip)."""


class _StepError(Exception):
    """A step failed; the message names the step and the cause."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.outcome_unknown = outcome_unknown


class _At(enum.Enum):
    """What a checkpoint is about to start: a pause lets some of it go on."""

    OUTPUT = "output"  # a write or a call: the running step finishes them, unless frozen
    WAIT = "wait"  # a wait or a delay: Hold and Suspend cut it, Stop lets it finish
    OPERATOR = "operator"  # a prompt or a stepping question: any pause cuts it


class _Interrupted(Exception):
    """The executor was paused while a step was in progress: re-enter it on resume."""


@dataclass
class _Ctx:
    """One step being run: where it is, how it is named, its bound and its progress."""

    step: AnyStep
    path: str
    label: str
    round: int | None
    timeout: float | None
    writes_done: int = 0  # a set step's writes confirmed in this attempt
    #: The `changed` tags' values when the step started (None: not read yet, or no `changed`).
    changed_from: dict[str, Value] | None = None
    #: Of those, the tags the safe state set otherwise while paused: tag -> safe value.
    undone: dict[str, Value] = field(default_factory=dict)
    parked: bool = False  # interrupted, at its boundary until the resume
    #: The operator's question about undone writes, queued with the failures.
    question: tuple[StepFailure, asyncio.Future[FailureChoice]] | None = None

    def deadline(self) -> float | None:
        """time.monotonic() at which the step times out when (re)entered now, None for never.

        Monotonic: a wall clock set forward or back (NTP, an operator) must neither fire a
        timeout early nor hold it off."""
        return None if self.timeout is None else time.monotonic() + self.timeout


def _wall_clock(deadline: float | None) -> float | None:
    """A monotonic deadline as the time.time() it falls at, for people to read (never to
    decide on)."""
    return None if deadline is None else time.time() + (deadline - time.monotonic())


def _seconds(value: float) -> str:
    return f"{value:g} s"


def newest_sample(sample: TagValue | None, baseline: TagValue) -> TagValue:
    """The newest sample heard, when it is not older than the baseline read, else the baseline.

    The baseline is a fresh read made after the last confirmed write or call, stamped once its
    reply came: a sample not older than it was taken after that write or call. Where the device
    stamps its values (OPC UA), its own clock decides: a notification that arrives after the
    baseline read but was sampled before it (published late) is older than the baseline,
    whatever our clock says when it arrives.
    """
    return sample if sample is not None and sample.not_older_than(baseline) else baseline


def judge(
    condition: expr.Expression, current: Mapping[str, TagValue], names: Mapping[str, Value]
) -> tuple[bool, dict[str, Value | None]]:
    """(met, the tag values used) of a condition on these samples and other `names`
    (parameters); a tag without a good value leaves it unmet. Raises EvaluationError."""
    good = {
        t: v.value
        for t, v in current.items()
        if v.quality is not Quality.BAD and v.value is not None
    }
    shown: dict[str, Value | None] = {t: good.get(t) for t in current}
    if len(good) < len(current):
        return False, shown
    return expr.evaluate(condition, {**names, **good}) is True, shown


@dataclass(frozen=True)
class Judged:
    """A wait's last judgement: met or not, the samples judged and the tag values it used."""

    met: bool
    current: dict[str, TagValue]
    shown: dict[str, Value | None]


async def until_met(
    io: TagIO,
    tags: Sequence[str],
    waker: asyncio.Event,
    judged: Callable[[dict[str, TagValue]], tuple[bool, dict[str, Value | None]]],
    deadline: Callable[[], float | None],
    go_on: Callable[[], bool] = lambda: True,
) -> Judged | None:
    """Judge `tags` on a fresh read and then on every update of them (never polled) until
    `judged(samples)` says (met, values used) is met, or `deadline()` (monotonic, None: never;
    asked once that read is in) passes. The executor's waits and Resetting's `ready` share it.

    Listening starts before the read, so no update is missed; the read, made after the
    caller's last confirmed write or call, stands in for a tag until a sample not older than it
    comes (newest_sample): older news never counts. `waker` is set by every update (and by
    whoever wants a look now); `go_on()` runs before each judgement: False calls the wait off
    (None), and it may raise to cut it. Returns the last judgement: met, or not by the deadline.
    """
    heard: dict[str, TagValue] = {}

    def listener(sample: TagValue) -> None:
        old = heard.get(sample.tag)
        if old is None or sample.not_older_than(old):
            heard[sample.tag] = sample
        waker.set()

    unlisten = io.board.listen(tags, listener)  # first, so no update is missed
    try:
        baseline = await io.read(tags) if tags else {}
        until = deadline()
        while go_on():
            waker.clear()
            current = {t: newest_sample(heard.get(t), baseline[t]) for t in tags}
            met, shown = judged(current)
            if met:
                return Judged(True, current, shown)
            remaining = None if until is None else until - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await waker.wait()
            except TimeoutError:
                return Judged(False, current, shown)
        return None
    finally:
        unlisten()


def _named(ctx: _Ctx) -> str:
    """A step as the operator's questions name it: where it is and its id ("step 2.6 press")."""
    return f"step {ctx.path} {ctx.step.id}" if ctx.step.id else f"step #{ctx.path}"


def retry_refusal(step: AnyStep) -> str | None:
    """Why on_error retry may not re-run this step, or None when it may."""
    if isinstance(step, SetStep):
        unsafe = [tag for tag, ok in step.idempotent_writes.items() if not ok]
        return f"its write of {unsafe[0]} is not idempotent" if unsafe else None
    if isinstance(step, WaitStep | DelayStep):
        return None
    return f"a {step.kind} step is never repeated without the operator"


class Executor:
    """Runs a recipe's steps; the controller pauses, resumes and cancels it."""

    def __init__(
        self,
        recipe: Recipe,
        parameters: Mapping[str, Value],
        io: TagIO,
        host: ExecutorHost,
        operator: Operator,
        *,
        step_mode: bool = False,
        breakpoints: Collection[str] = (),
    ) -> None:
        self.recipe = recipe
        self.io = io
        self.host = host
        self.operator = operator
        self.step_mode = step_mode
        self.breakpoints = frozenset(breakpoints)
        self.steps_done = 0
        self._scope: Scope = ChainMap({}, dict(parameters))
        self._commanded: dict[str, Value] = {}
        self._pause: PauseReason | None = None
        self._running = asyncio.Event()
        self._running.set()
        self._frozen = False
        self._aborted = False
        # What a pause may cut short: waits and delays, and questions to the operator.
        self._wakers: dict[_At, set[asyncio.Event]] = {_At.WAIT: set(), _At.OPERATOR: set()}
        self._busy = 0  # branches running a step action (not parked at a boundary)
        self._idle = asyncio.Event()
        self._idle.set()
        self._pending: list[tuple[StepFailure, asyncio.Future[FailureChoice]]] = []
        self._leaves: list[_Ctx] = []  # leaf steps under way (one per parallel branch)

    # --- the controller's side --------------------------------------------------------------

    async def run(self) -> None:
        """Run every step to the end; cancelling the task is Abort (nothing written after)."""
        self._add_busy(1)
        try:
            await self._run_block(self.recipe.steps, "", self._scope, None)
        finally:
            self._add_busy(-1)

    def pause(self, reason: PauseReason) -> None:
        """Stop every branch at its next step boundary.

        The running step's writes and calls go on to the boundary. Hold and Suspend cut a wait
        or delay in progress (re-entered on resume); Stop lets it finish. Questions to the
        operator are cut by any pause.
        """
        self._pause = reason
        self._running.clear()
        cut = [_At.OPERATOR] if reason is PauseReason.STOP else [_At.OPERATOR, _At.WAIT]
        for kind in cut:
            for waker in self._wakers[kind]:
                waker.set()

    def freeze(self) -> None:
        """A trip: no new write or call starts, not even inside the running step (the safe
        state must be the last word); waits and questions are cut. Resume lifts it."""
        self._frozen = True
        self._running.clear()
        if self._pause is None:
            self._pause = PauseReason.HOLD
        for wakers in self._wakers.values():
            for waker in wakers:
                waker.set()

    def abort(self) -> None:
        """Abort: freeze for good. No write or call starts after this, even when the task's
        cancellation is lost (asyncio.wait_for inside a library can drop it)."""
        self._aborted = True
        self.freeze()

    @property
    def frozen(self) -> bool:
        """True between freeze() and resume(), and for good after abort()."""
        return self._frozen

    async def wait_paused(self) -> None:
        """Return once no branch runs a step action (writes and calls in flight completed)."""
        await self._idle.wait()

    def resume(self, choice: FailureChoice | None = None) -> None:
        """Go on after a pause; a failed step waiting for the operator needs `choice`.

        A choice given while no step failed is ignored. Raises ChoiceNeeded (nothing changed)
        when a failed step waits and no choice is given. After abort() it does nothing.
        """
        if self._aborted:
            return
        if self._pending:
            failure, answer = self._pending[0]
            if choice is None:
                what = failure.message if failure.undone else f"{failure.label} failed"
                raise ChoiceNeeded(f"{what}: choose {failure.choices}")
            self._pending.pop(0)
            answer.set_result(choice)
            if self._pending:
                # Another branch failed meanwhile: stay paused and report it from the loop,
                # not from inside the controller's own Unhold.
                asyncio.get_running_loop().call_soon(self.host.step_failed, self._pending[0][0])
                return
        self._pause = None
        self._frozen = False
        self._running.set()

    @property
    def failure(self) -> StepFailure | None:
        """The step waiting for the operator's choice: failed (retry or skip), or its writes
        undone by the safe state (re-run or skip; `undone` names them)."""
        return self._pending[0][0] if self._pending else None

    def overwritten(self, values: Mapping[str, Value]) -> None:
        """The safe state wrote `values` while paused. A step interrupted after its own
        confirmed writes of some of those tags (other values, tags Unholding does not restore)
        cannot just be resumed: its wait would wait for work that was undone. Unhold then asks
        the operator to re-run it from its start, skip it or abort."""
        if self._aborted or self._pause is None:
            return
        restored = set(self.io.cell.restore_on_unhold)
        for ctx in self._leaves:
            for tag, mine in self._written(ctx).items():  # in the step's order
                if tag in values and tag not in restored and values[tag] != mine:
                    ctx.undone[tag] = values[tag]
            if ctx.parked:
                self._ask_undone(ctx)

    @property
    def paused(self) -> bool:
        """True between pause() and resume()."""
        return self._pause is not None

    def commanded(self) -> dict[str, Value]:
        """The last value the recipe wrote to each tag (confirmed by the device)."""
        return dict(self._commanded)

    # --- pausing ----------------------------------------------------------------------------

    def _add_busy(self, delta: int) -> None:
        self._busy += delta
        if self._busy <= 0:
            self._idle.set()
        else:
            self._idle.clear()

    async def _park(self) -> None:
        """A step boundary: wait here while paused."""
        if self._pause is None:
            return
        self._add_busy(-1)
        try:
            while self._pause is not None:
                await self._running.wait()
        finally:
            self._add_busy(1)

    def _checkpoint(self, at: _At) -> None:
        """Before a write, call, wait or question: raise _Interrupted when a pause stops it,
        CancelledError after an Abort."""
        if self._aborted:
            raise asyncio.CancelledError("aborted")
        if self._frozen:
            raise _Interrupted
        if self._pause is None or at is _At.OUTPUT:
            return  # the running step's writes and calls go on to its end
        if at is _At.WAIT and self._pause is PauseReason.STOP:
            return  # Stop lets the running step finish
        raise _Interrupted

    async def _sleep(self, seconds: float | None) -> bool:
        """Sleep (None: forever); True when a pause cut it short."""
        self._checkpoint(_At.WAIT)
        waker = asyncio.Event()
        self._wakers[_At.WAIT].add(waker)
        try:
            async with asyncio.timeout(seconds):
                await waker.wait()
        except TimeoutError:
            return False
        finally:
            self._wakers[_At.WAIT].discard(waker)
        return True

    async def _interruptible(self, ask: Callable[[], Awaitable[T]]) -> T:
        """Await the operator; raises _Interrupted when a pause cuts it short."""
        # Before asking: a question never asked is never left unawaited.
        self._checkpoint(_At.OPERATOR)
        task = asyncio.ensure_future(ask())
        waker = asyncio.Event()
        self._wakers[_At.OPERATOR].add(waker)
        woken = asyncio.ensure_future(waker.wait())
        try:
            done, _ = await asyncio.wait({task, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wakers[_At.OPERATOR].discard(waker)
            woken.cancel()
            if not task.done():
                task.cancel()
        if task in done:
            return task.result()
        raise _Interrupted

    async def _until_cancelled(self) -> NoReturn:
        """Abort asked of the controller: no branch starts anything more; wait for the cancel."""
        self.pause(PauseReason.STOP)
        self._add_busy(-1)
        try:
            await asyncio.get_running_loop().create_future()
        finally:
            self._add_busy(1)
        raise AssertionError("unreachable: the future is never set")

    async def _await_choice(self, failure: StepFailure) -> FailureChoice:
        """Hold on a failed step until the operator chooses retry or skip."""
        answer: asyncio.Future[FailureChoice] = asyncio.get_running_loop().create_future()
        self._pending.append((failure, answer))
        # This branch holds now; the others stop at their next boundary too, even before the
        # controller's Hold reaches pause().
        if self._pause is None:
            self.pause(PauseReason.HOLD)
        if len(self._pending) == 1:
            self.host.step_failed(failure)
        self._add_busy(-1)
        try:
            choice = await answer
        finally:
            self._add_busy(1)
            if (failure, answer) in self._pending:  # cancelled while waiting: Stop or Abort
                self._pending.remove((failure, answer))
        await self._park()
        return choice

    # --- events -----------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        self.host.emit(event)

    def _started(self, ctx: _Ctx, detail: str) -> None:
        self._emit(
            StepStarted(
                path=ctx.path,
                step_id=ctx.step.id,
                kind=ctx.step.kind,
                label=ctx.label,
                detail=detail,
                round=ctx.round,
            )
        )

    def _ended(self, ctx: _Ctx, outcome: StepOutcome, error: str | None = None) -> None:
        self._emit(
            StepEnded(
                path=ctx.path, step_id=ctx.step.id, label=ctx.label, outcome=outcome, error=error
            )
        )

    # --- values -----------------------------------------------------------------------------

    def _tags_of(self, expression: expr.Expression) -> list[str]:
        return sorted(name for name in expression.names if name in self.io.cell.tags)

    async def _read(self, tags: list[str], ctx: _Ctx) -> dict[str, Value]:
        """Fresh values of tags; a BAD one is a step failure naming the tag and the error."""
        if not tags:
            return {}
        values: dict[str, Value] = {}
        for tag, read in (await self.io.read(tags)).items():
            if read.quality is Quality.BAD or read.value is None:
                raise _StepError(f"{ctx.label}: cannot read {tag}: {read.error or 'no value'}")
            values[tag] = read.value
        return values

    async def _resolve(
        self, expressions: Mapping[str, expr.Expression], scope: Scope, ctx: _Ctx, what: str
    ) -> dict[str, Value]:
        """Evaluate expressions with one fresh read of the tags they name."""
        tags = sorted({t for e in expressions.values() for t in self._tags_of(e)})
        values = {**scope, **await self._read(tags, ctx)}
        resolved: dict[str, Value] = {}
        for name, expression in expressions.items():
            try:
                resolved[name] = expr.evaluate(expression, values)
            except expr.EvaluationError as err:
                raise _StepError(f"{ctx.label}: {what}{name}: {err}") from None
        return resolved

    async def _evaluate(
        self, expression: expr.Expression, scope: Scope, ctx: _Ctx, what: str
    ) -> Value:
        """One expression's value; `what` names it in a failure ('if', 'set dev.run')."""
        return (await self._resolve({what: expression}, scope, ctx, ""))[what]

    def _constant(self, expression: expr.Expression, scope: Scope) -> str:
        """An expression's value when it reads no tag, else its text."""
        if not expression.names <= scope.keys():
            return expression.text
        try:
            return expr.show(expr.evaluate(expression, scope))
        except expr.EvaluationError:
            return expression.text

    # --- running steps ----------------------------------------------------------------------

    async def _run_block(
        self, steps: list[AnyStep], prefix: str, scope: Scope, round_: int | None
    ) -> None:
        for number, step in enumerate(steps, 1):
            await self._run_step(step, f"{prefix}{number}", scope, round_)

    async def _run_step(self, step: AnyStep, path: str, scope: Scope, round_: int | None) -> None:
        """One step with its stepping pause, its `if` and its on_error policy."""
        ctx = _Ctx(step, path, step.label(path), round_, self.recipe.timeout_of(step))
        await self._park()
        if not await self._confirm(ctx, scope):
            self._ended(ctx, StepOutcome.SKIPPED)
            return
        action = step.on_error.action if step.on_error is not None else "hold"
        count = step.on_error.retries if step.on_error is not None else 0
        if action == "retry" and (why := retry_refusal(step)) is not None:
            # Validation refuses this already; a recipe that got past it still never repeats.
            self._emit(Notice(text=f"{ctx.label}: no retry, {why}: holding", level="warning"))
            action = "hold"
        retries = count if action == "retry" else 0
        while True:
            try:
                if not await self._perform(ctx, scope):
                    self._ended(ctx, StepOutcome.SKIPPED)  # its `if` is false
                return
            except _StepError as err:
                failed = err
            if retries > 0:
                retries -= 1
                self._ended(ctx, StepOutcome.FAILED, failed.message)
                attempt = count - retries
                self._emit(Notice(text=f"{ctx.label}: retry {attempt} of {count}"))
                delay = step.on_error.delay if step.on_error is not None else None
                await self._park()
                if delay and await self._sleep(delay):
                    await self._park()
                continue
            if action == "skip":
                # Failed, then skipped as on_error says: the failure is on record.
                self._ended(ctx, StepOutcome.FAILED, failed.message)
                self._ended(ctx, StepOutcome.SKIPPED, "on_error: skip")
                return
            self._ended(ctx, StepOutcome.FAILED, failed.message)
            failure = StepFailure(
                path,
                step.id,
                ctx.label,
                failed.message,
                "abort" if action == "abort" else "hold",
                failed.outcome_unknown,
            )
            if action == "abort":
                self.host.step_failed(failure)
                await self._until_cancelled()
            if await self._await_choice(failure) is FailureChoice.SKIP:
                self._ended(ctx, StepOutcome.SKIPPED, f"skipped by the operator: {failed.message}")
                return
            retries = count if action == "retry" else 0

    async def _perform(self, ctx: _Ctx, scope: Scope) -> bool:
        """Run a step once (False: its `if` is false); a failure becomes a _StepError."""
        step = ctx.step
        try:
            if (
                step.if_ is not None
                and await self._evaluate(step.if_, scope, ctx, "if") is not True
            ):
                return False
            if isinstance(step, RepeatStep):
                await self._repeat(ctx, step, scope)
            elif isinstance(step, ParallelStep):
                await self._parallel(ctx, step, scope)
            else:
                await self._leaf(ctx, scope)
        except _StepError:
            raise
        except Exception as err:  # EvaluationError, OutOfRange, DeviceFailed, NoAnswer, a bug
            cause = str(err) if isinstance(err, CellctlError) else f"{type(err).__name__}: {err}"
            raise _StepError(f"{ctx.label}: {cause}") from err
        return True

    async def _leaf(self, ctx: _Ctx, scope: Scope) -> None:
        """A leaf step, re-entered after each interruption until it ends; when the safe state
        undid its writes meanwhile, run again from its start or skipped, as the operator chose."""
        ctx.writes_done = 0  # a new attempt (a retry) writes everything again
        self._leaves.append(ctx)
        try:
            while True:
                try:
                    await self._action(ctx, scope)
                    break
                except _Interrupted:
                    self._ended(ctx, StepOutcome.INTERRUPTED)
                    choice = await self._resumed(ctx)
                if choice is FailureChoice.SKIP:
                    self._ended(
                        ctx,
                        StepOutcome.SKIPPED,
                        "skipped by the operator: its writes were undone by the safe state",
                    )
                    return
                if choice is not None:  # re-run (or retry): every write again, the wait afresh
                    ctx.writes_done = 0
                    self._emit(Notice(text=f"{_named(ctx)}: run again from its start ({choice})"))
        finally:
            self._leaves.remove(ctx)
        self.steps_done += 1
        self._ended(ctx, StepOutcome.DONE)

    async def _resumed(self, ctx: _Ctx) -> FailureChoice | None:
        """An interrupted step at its boundary until the resume: None to re-enter it where it
        was, or the operator's choice when the safe state undid its writes meanwhile."""
        ctx.parked = True
        self._ask_undone(ctx)  # a trip's safe state may have come before this boundary
        try:
            await self._park()
            # The pause is lifted only once every queued question has its answer.
            return None if ctx.question is None else await ctx.question[1]
        finally:
            if ctx.question is not None and ctx.question in self._pending:
                self._pending.remove(ctx.question)  # Stop or Abort: nobody answers it now
            ctx.parked, ctx.question = False, None
            ctx.undone.clear()

    def _written(self, ctx: _Ctx) -> dict[str, Value]:
        """The step's own writes confirmed in this attempt: tag -> value."""
        if not isinstance(ctx.step, SetStep):
            return {}
        tags = list(ctx.step.set)[: ctx.writes_done]
        return {tag: self._commanded[tag] for tag in tags if tag in self._commanded}

    def _ask_undone(self, ctx: _Ctx) -> None:
        """Queue the operator's question for a paused step whose writes were undone (once)."""
        if not ctx.undone or ctx.question is not None or self._pause is None:
            return
        undone = "; ".join(
            f"{tag} was set {expr.show(value)} by the safe state"
            for tag, value in ctx.undone.items()
        )
        failure = StepFailure(
            ctx.path,
            ctx.step.id,
            ctx.label,
            f"{_named(ctx)}: its writes were undone: {undone}",
            "hold",
            False,
            tuple(ctx.undone),
        )
        ctx.question = (failure, asyncio.get_running_loop().create_future())
        self._pending.append(ctx.question)
        self._emit(
            UnholdAsks(
                text=f"{failure.message}; Unhold asks: {failure.choices}",
                path=ctx.path,
                step_id=ctx.step.id,
                question=failure.message,
            )
        )

    async def _action(self, ctx: _Ctx, scope: Scope) -> None:
        step = ctx.step
        if isinstance(step, SetStep):
            await self._set(ctx, step, scope)
        elif isinstance(step, WaitStep):
            self._started(ctx, f"until {step.wait.describe()}")
            if step.wait.changed and ctx.changed_from is None:
                # Once per step: a retry or a re-entry after a pause wrote nothing, so a
                # change since the step began still counts.
                ctx.changed_from = await self._read(list(step.wait.changed), ctx)
            await self._wait(ctx, step.wait, scope, ctx.deadline())
        elif isinstance(step, CallStep):
            await self._call(ctx, step, scope)
        elif isinstance(step, DelayStep):
            self._started(ctx, f"delay {format_duration(step.delay)}")
            if await self._sleep(step.delay):
                raise _Interrupted
        elif isinstance(step, PromptStep):
            await self._prompt(ctx, step, scope)

    def _set_detail(self, step: SetStep, scope: Scope) -> str:
        detail = ", ".join(f"{tag} := {self._constant(e, scope)}" for tag, e in step.set.items())
        return detail if step.wait is None else f"{detail}, then until {step.wait.describe()}"

    async def _set(self, ctx: _Ctx, step: SetStep, scope: Scope) -> None:
        """Write in order (each value read fresh after the previous write), then the wait."""
        self._started(ctx, self._set_detail(step, scope))
        deadline = ctx.deadline()
        if step.wait is not None and step.wait.changed and ctx.writes_done == 0:
            # Before the first write of each attempt (a retry writes again, so it looks for a
            # new change); a re-entry after a pause keeps the values its writes answer to.
            ctx.changed_from = await self._read(list(step.wait.changed), ctx)
        for tag, expression in list(step.set.items())[ctx.writes_done :]:
            self._checkpoint(_At.OUTPUT)
            value = await self._evaluate(expression, scope, ctx, f"set {tag}")
            try:
                checked = self.io.check(tag, value)
            except OutOfRange as err:
                raise _StepError(f"{ctx.label}: {err}") from None
            # Again after the fresh read: a trip during it must stop this write too.
            self._checkpoint(_At.OUTPUT)
            try:
                await self.io.write(tag, checked)
            except OutOfRange as err:
                raise _StepError(f"{ctx.label}: {err}") from None
            except DeviceFailed as err:
                # Sent, or maybe sent: whether the device took the value is not known.
                raise _StepError(
                    f"{ctx.label}: {err}; its outcome is unknown", outcome_unknown=True
                ) from err
            self._commanded[tag] = checked
            ctx.writes_done += 1
            self._emit(TagWritten(tag=tag, value=checked, path=ctx.path))
            if deadline is not None and time.monotonic() > deadline:
                assert ctx.timeout is not None
                raise _StepError(
                    f"{ctx.label} timed out after {_seconds(ctx.timeout)} writing {tag}"
                )
        if step.wait is not None:
            self._checkpoint(_At.WAIT)
            await self._wait(ctx, step.wait, scope, deadline)

    async def _wait(self, ctx: _Ctx, wait: Wait, scope: Scope, deadline: float | None) -> None:
        """Wait for a condition, evaluated on every update of its tags (never polled), and for
        each `changed` tag to differ from its value in `ctx.changed_from`.

        A fresh read made once listening (after the step's writes or calls were confirmed)
        stands in for a tag until a sample not older than it comes; older news never counts.
        """
        condition = wait.until
        before = ctx.changed_from or {}
        tags = sorted({*self._tags_of(condition), *before})
        text = wait.describe(before)

        def judged(current: dict[str, TagValue]) -> tuple[bool, dict[str, Value | None]]:
            met, shown = self._judge(ctx, condition, scope, current)
            met = met and all(shown[tag] != value for tag, value in before.items())
            self._emit(
                WaitProgress(
                    path=ctx.path,
                    step_id=ctx.step.id,
                    condition=text,
                    values=shown,
                    met=met,
                    deadline=_wall_clock(deadline),
                )
            )
            return met, shown

        def go_on() -> bool:
            self._checkpoint(_At.WAIT)  # a pause cuts the wait (_Interrupted)
            return True

        waker = asyncio.Event()  # a pause sets it too, to cut the wait at once
        self._wakers[_At.WAIT].add(waker)
        try:
            last = await until_met(self.io, tags, waker, judged, lambda: deadline, go_on)
        finally:
            self._wakers[_At.WAIT].discard(waker)
        assert last is not None  # go_on never calls it off
        if not last.met:
            assert ctx.timeout is not None
            now = expr.show_values(last.shown)
            raise _StepError(
                f"{ctx.label} timed out after {_seconds(ctx.timeout)} waiting for "
                f"{text}" + (f" ({now})" if now else "")
            )

    def _judge(
        self, ctx: _Ctx, condition: expr.Expression, scope: Scope, current: dict[str, TagValue]
    ) -> tuple[bool, dict[str, Value | None]]:
        """(met, the tag values used); a tag without a good value leaves it unmet."""
        try:
            return judge(condition, current, scope)
        except expr.EvaluationError as err:
            raise _StepError(f"{ctx.label}: wait {condition.text}: {err}") from None

    async def _call(self, ctx: _Ctx, step: CallStep, scope: Scope) -> None:
        self._checkpoint(_At.OUTPUT)
        args = await self._resolve(step.args, scope, ctx, "arg ")
        shown = ", ".join(f"{name}={expr.show(value)}" for name, value in args.items())
        self._started(ctx, f"{step.call}({shown})")
        self._checkpoint(_At.OUTPUT)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop an Abort's cancel.
            async with asyncio.timeout(ctx.timeout):
                result = await self.io.call(step.call, args)
        except TimeoutError:
            assert ctx.timeout is not None
            raise _StepError(
                f"{ctx.label} timed out after {_seconds(ctx.timeout)} calling "
                f"{step.call}({shown}); its outcome is unknown",
                outcome_unknown=True,
            ) from None
        except DeviceFailed as err:
            raise _StepError(f"{ctx.label}: {err}", outcome_unknown=True) from err
        self._emit(MethodCalled(method=step.call, args=args, result=result, path=ctx.path))
        self._check_result(ctx, step, scope, f"{step.call}({shown})", result)
        # Bound only once accepted: a refused answer that the operator skips must not reach
        # the steps after it (they fail naming the unbound name instead).
        if step.result is not None and result is not None:
            scope[step.result] = result

    def _check_result(
        self, ctx: _Ctx, step: CallStep, scope: Scope, call: str, result: Value | None
    ) -> None:
        """The answer meets the step's `expect`; without one, a bool method's answer is true. A
        method that declares a result and answered nothing fails (an OPC UA server may return
        no output argument): `expect` is never judged without the call's `result`, which a
        parameter of that name would otherwise stand in for."""
        method = self.io.cell.methods.get(step.call)
        declared = method.result if method is not None else None
        if result is None:
            if declared is None:
                return  # the method returns nothing, and nothing is expected of it
            if step.expect is not None:
                wanted = step.expect.text
            else:
                wanted = "true" if declared is DataType.BOOL else f"a {declared} answer"
            raise _StepError(f"{ctx.label}: {call} answered nothing, expected {wanted}")
        if step.expect is None:
            if declared is not DataType.BOOL or result is True:
                return
            refused = (
                ": the device refused (a step that accepts false says so with expect)"
                if result is False
                else ""
            )
            raise _StepError(
                f"{ctx.label}: {call} answered {expr.show(result)}, expected true{refused}"
            )
        try:
            # The step's own `result:` name too: expect may judge the answer by it.
            answer = {"result": result, **({step.result: result} if step.result else {})}
            met = expr.evaluate(step.expect, scope.new_child(answer)) is True
        except expr.EvaluationError as err:
            raise _StepError(
                f"{ctx.label}: {call} answered {expr.show(result)}: expect {step.expect.text}: "
                f"{err}"
            ) from None
        if not met:
            raise _StepError(
                f"{ctx.label}: {call} answered {expr.show(result)}, expected {step.expect.text}"
            )

    async def _prompt(self, ctx: _Ctx, step: PromptStep, scope: Scope) -> None:
        self._started(ctx, f"prompt: {step.prompt}")
        self._emit(PromptShown(path=ctx.path, step_id=step.id, text=step.prompt))
        request = PromptRequest(ctx.path, step.id, step.prompt, step.answer)
        try:
            async with asyncio.timeout(ctx.timeout):
                value = await self._interruptible(partial(self.operator.answer, request))
        except NoAnswer as err:
            raise _StepError(str(err)) from None
        except TimeoutError:
            assert ctx.timeout is not None
            raise _StepError(
                f"{ctx.label}: no answer to the prompt within {_seconds(ctx.timeout)}"
            ) from None
        if step.answer is not None:
            try:
                value = step.answer.check_value(value)
            except BadValue as err:
                raise _StepError(f"{ctx.label}: answer {step.answer.name}: {err}") from None
            scope[step.answer.name] = value
        self._emit(
            PromptAnswered(path=ctx.path, step_id=step.id, value=value, operator=self.operator.name)
        )

    async def _repeat(self, ctx: _Ctx, step: RepeatStep, scope: Scope) -> None:
        count = await self._evaluate(step.repeat, scope, ctx, "repeat")
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise _StepError(
                f"{ctx.label}: repeat {step.repeat.text} is {expr.show(count)}, "
                "not a whole number of at least 0"
            )
        self._started(ctx, f"repeat {count} times")
        for index in range(1, count + 1):
            # Names bound in a round (and the index) are the round's own.
            inner = scope.new_child({step.index: index} if step.index else {})
            await self._run_block(step.steps, f"{ctx.path}.", inner, index)
        self._ended(ctx, StepOutcome.DONE)

    async def _parallel(self, ctx: _Ctx, step: ParallelStep, scope: Scope) -> None:
        self._started(ctx, f"{len(step.parallel)} branches at once")

        async def branch(steps: list[AnyStep], prefix: str) -> None:
            # Busy once running: a branch cancelled before it ran never counted.
            self._add_busy(1)
            try:
                await self._run_block(steps, prefix, scope, ctx.round)
            finally:
                self._add_busy(-1)

        # This one only waits for its branches; each parks at its first step when paused.
        self._add_busy(-1)
        try:
            async with asyncio.TaskGroup() as group:
                for number, steps in enumerate(step.parallel, 1):
                    group.create_task(branch(steps, f"{ctx.path}.{number}."))
        finally:
            self._add_busy(1)
        self._ended(ctx, StepOutcome.DONE)

    # --- stepping ---------------------------------------------------------------------------

    async def _confirm(self, ctx: _Ctx, scope: Scope) -> bool:
        """Stepping or a breakpoint: ask the operator; True to run the step, False to skip."""
        leaf = not isinstance(ctx.step, RepeatStep | ParallelStep)
        at_break = ctx.step.id is not None and ctx.step.id in self.breakpoints
        if not (at_break or (self.step_mode and leaf)):
            return True
        while True:
            pause = StepPaused(
                path=ctx.path,
                step_id=ctx.step.id,
                label=ctx.label,
                preview=await self._preview(ctx, scope),
                breakpoint=at_break,
            )
            self._emit(pause)
            try:
                choice = await self._interruptible(partial(self.operator.confirm_step, pause))
                break
            except _Interrupted:
                await self._park()
        if choice is StepChoice.SKIP:
            return False
        if choice is StepChoice.CONTINUE:
            self.step_mode = False
        elif choice is StepChoice.ABORT:
            self.host.operator_abort(f"the operator aborted before {ctx.label}")
            await self._until_cancelled()
        return True

    async def _preview(self, ctx: _Ctx, scope: Scope) -> tuple[str, ...]:
        """What the step will do, values resolved by fresh reads (never raises)."""
        step = ctx.step
        lines: list[str] = []

        async def resolved(expression: expr.Expression) -> str:
            try:
                value = await self._evaluate(expression, scope, ctx, "")
            except (_StepError, CellctlError) as err:
                return f"{expression.text} (cannot resolve now: {err})"
            return expr.show(value)

        if step.if_ is not None:
            lines.append(f"if {step.if_.text}: now {await resolved(step.if_)}")
        if isinstance(step, SetStep):
            for tag, expression in step.set.items():
                lines.append(f"{tag} := {await resolved(expression)}")
        if isinstance(step, CallStep):
            args = [f"{n}={await resolved(e)}" for n, e in step.args.items()]
            lines.append(f"{step.call}({', '.join(args)})")
        wait = step.wait if isinstance(step, SetStep | WaitStep) else None
        if wait is not None:
            tags = sorted({*self._tags_of(wait.until), *wait.changed})
            now = await self.io.read(tags) if tags else {}
            values = ", ".join(f"{t} = {expr.show(v.value)}" for t, v in now.items())
            lines.append(f"until {wait.describe()}" + (f" (now {values})" if values else ""))
        if isinstance(step, DelayStep):
            lines.append(f"delay {format_duration(step.delay)}")
        if isinstance(step, PromptStep):
            lines.append(f"prompt: {step.prompt}")
        if isinstance(step, RepeatStep):
            lines.append(f"repeat {await resolved(step.repeat)} times")
        if isinstance(step, ParallelStep):
            lines.append(f"{len(step.parallel)} branches at once")
        return tuple(lines)
