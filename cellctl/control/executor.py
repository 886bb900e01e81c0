"""The executor: runs a recipe's steps on the cell while the machine is in Execute.

It is its own asyncio task, which the controller starts, holds (pause/resume) and cancels
(Abort); it never runs inside a state machine callback. Interruptions take effect at step
boundaries (cellctl.control.gate): a wait, delay, prompt or stepping question in progress is
cut and re-entered on resume, a write or call in flight always completes. Failures follow each
step's `on_error`. What each step kind does is in its module (cellctl.recipe.steps); it runs
through a StepRun (cellctl.control.steprun).
"""

from __future__ import annotations

import asyncio
from collections import ChainMap
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cellctl import expr
from cellctl.control.events import Event, Notice, StepOutcome, UnholdAsks
from cellctl.control.gate import Gate, Interrupted, PauseReason
from cellctl.control.ledger import NO_LEDGER, WriteLedger
from cellctl.control.operator import FailureChoice, Operator
from cellctl.control.resume import ResumePoint, Resuming, Where
from cellctl.control.stepping import confirm
from cellctl.control.steprun import Scope, StepRun
from cellctl.control.waiting import Judged, judge, newest_sample, until_met
from cellctl.errors import CellctlError
from cellctl.io.session import TagIO
from cellctl.recipe import Recipe, StepBase
from cellctl.recipe.steps import StepError
from drivers.base import Value

__all__ = [
    "ChoiceNeeded",
    "Executor",
    "ExecutorHost",
    "Judged",
    "PauseReason",
    "StepFailure",
    "judge",
    "newest_sample",
    "until_met",
]


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
        #: What records each write before it is sent (the controller sets the batch's).
        self.ledger: WriteLedger = NO_LEDGER
        self.operator = operator
        self.step_mode = step_mode
        self.breakpoints = frozenset(breakpoints)
        self.steps_done = 0
        self.gate = Gate()
        self._scope: Scope = ChainMap({}, dict(parameters))
        self._commanded: dict[str, Value] = {}
        self._pending: list[tuple[StepFailure, asyncio.Future[FailureChoice]]] = []
        self._leaves: list[StepRun] = []  # leaf steps under way (one per parallel branch)
        #: Taking up a crashed batch (cellctl.control.resume): the steps it passes over until
        #: it stands at its resume point; None once there (or for a new batch).
        self.resuming: Resuming | None = None
        self._entering: set[str] = set()  # blocks around the resume point, entered again
        self._resume_writes: dict[str, int] = {}  # the step in progress: writes confirmed

    def resume_at(self, point: ResumePoint) -> Resuming:
        """Take the batch up at `point` (before run()): the steps before it are not run again,
        the names they bound and the values the recipe last wrote come back from the record."""
        resuming = Resuming(point, self.recipe)
        self.steps_done = point.steps_done
        for tag, value in point.commanded.items():
            self._commanded[tag] = value
        if point.path is None:  # nothing had started: the recipe from its first step
            resuming.reached.set()
        else:
            self.resuming = resuming
        return resuming

    # --- the controller's side --------------------------------------------------------------

    async def run(self) -> None:
        """Run every step to the end; cancelling the task is Abort (nothing written after)."""
        resuming = self.resuming
        self.gate.add_busy(1)
        try:
            await self.run_block(self.recipe.steps, "", self._scope, None)
        finally:
            self.gate.add_busy(-1)
            if resuming is not None:  # ended (or failed) before its point: nobody waits on
                resuming.reached.set()

    def pause(self, reason: PauseReason) -> None:
        """Stop every branch at its next step boundary.

        The running step's writes and calls go on to the boundary. Hold and Suspend cut a wait
        or delay in progress (re-entered on resume); Stop lets it finish. Questions to the
        operator are cut by any pause.
        """
        self.gate.pause(reason)

    def freeze(self) -> None:
        """A trip: no new write or call starts, not even inside the running step (the safe
        state must be the last word); waits and questions are cut. Resume lifts it."""
        self.gate.freeze()

    def abort(self) -> None:
        """Abort: freeze for good. No write or call starts after this, even when the task's
        cancellation is lost (asyncio.wait_for inside a library can drop it)."""
        self.gate.aborted = True
        self.freeze()

    @property
    def frozen(self) -> bool:
        """True between freeze() and resume(), and for good after abort()."""
        return self.gate.frozen

    async def wait_paused(self) -> None:
        """Return once no branch runs a step action (writes and calls in flight completed)."""
        await self.gate.idle.wait()

    def resume(self, choice: FailureChoice | None = None) -> None:
        """Go on after a pause; a failed step waiting for the operator needs `choice`.

        A choice given while no step failed is ignored. Raises ChoiceNeeded (nothing changed)
        when a failed step waits and no choice is given. After abort() it does nothing.
        """
        if self.gate.aborted:
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
        self.gate.release()

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
        if self.gate.aborted or self.gate.pause_reason is None:
            return
        restored = set(self.io.cell.restore_on_unhold)
        for run in self._leaves:
            for tag, mine in self._written(run).items():  # in the step's order
                if tag in values and tag not in restored and values[tag] != mine:
                    run.undone[tag] = values[tag]
            if run.parked:
                self._ask_undone(run)

    @property
    def paused(self) -> bool:
        """True between pause() and resume()."""
        return self.gate.pause_reason is not None

    def commanded(self) -> dict[str, Value]:
        """The last value the recipe wrote to each tag (confirmed by the device)."""
        return dict(self._commanded)

    # --- what a running step tells it -------------------------------------------------------

    def emit(self, event: Event) -> None:
        """Record and show an event (through the controller)."""
        self.host.emit(event)

    def commanded_now(self, tag: str, value: Value) -> None:
        """The device confirmed the recipe's write of `value` to `tag`."""
        self._commanded[tag] = value

    # --- running steps ----------------------------------------------------------------------

    async def run_block(
        self, steps: Sequence[StepBase], prefix: str, scope: Scope, round_: int | None
    ) -> None:
        """Run a list of steps in order (paths after `prefix`) with the names in `scope`."""
        for number, step in enumerate(steps, 1):
            path = f"{prefix}{number}"
            resuming = self.resuming
            if resuming is not None:
                where = resuming.where(path, round_)
                if where is Where.BEFORE or (where is Where.AT and resuming.point.after):
                    resuming.bind_back(path, scope)  # done before the crash: not run again
                    if where is Where.AT:  # the last step that ended: on after it, held
                        self.resuming = None
                        resuming.reached.set()
                    continue
                if where is Where.INSIDE:
                    self._entering.add(path)
            run = StepRun(self, step, path, round_, scope)
            await self._run_step(run)

    async def _run_step(self, run: StepRun) -> None:
        """One step with its stepping pause, its `if` and its on_error policy."""
        step = run.step
        resuming = self.resuming
        if resuming is not None and resuming.point.path == run.path:
            self.resuming = None
            if await self._resume_question(run, resuming) is FailureChoice.SKIP:
                run.ended(StepOutcome.SKIPPED, "skipped by the operator after the resume")
                return
        if run.path not in self._entering:  # a block around the resume point: no pause
            await self.gate.park()
            if not await confirm(self, run):
                run.ended(StepOutcome.SKIPPED)
                return
        action = step.on_error.action if step.on_error is not None else "hold"
        count = step.on_error.retries if step.on_error is not None else 0
        if action == "retry" and (why := step.retry_refusal()) is not None:
            # Validation refuses this already; a recipe that got past it still never repeats.
            self.emit(Notice(text=f"{run.label}: no retry, {why}: holding", level="warning"))
            action = "hold"
        retries = count if action == "retry" else 0
        while True:
            try:
                if not await self._perform(run):
                    run.ended(StepOutcome.SKIPPED)  # its `if` is false
                return
            except StepError as err:
                failed = err
            run.ended(StepOutcome.FAILED, failed.message)
            if retries > 0:
                retries -= 1
                self.emit(Notice(text=f"{run.label}: retry {count - retries} of {count}"))
                delay = step.on_error.delay if step.on_error is not None else None
                await self.gate.park()
                if delay and await self.gate.sleep(delay):
                    await self.gate.park()
                continue
            if action == "skip":
                # Failed, then skipped as on_error says: the failure is on record.
                run.ended(StepOutcome.SKIPPED, "on_error: skip")
                return
            if await self._fail(run, failed, action) is FailureChoice.SKIP:
                run.ended(StepOutcome.SKIPPED, f"skipped by the operator: {failed.message}")
                return
            retries = count if action == "retry" else 0

    async def _fail(self, run: StepRun, failed: StepError, action: str) -> FailureChoice:
        """A failure that holds for the operator's choice, or aborts."""
        failure = StepFailure(
            run.path,
            run.step.id,
            run.label,
            failed.message,
            "abort" if action == "abort" else "hold",
            failed.outcome_unknown,
        )
        if action == "abort":
            self.host.step_failed(failure)
            await self.gate.until_cancelled()
        return await self._await_choice(failure)

    async def _perform(self, run: StepRun) -> bool:
        """Run a step once (False: its `if` is false); a failure becomes a StepError."""
        step = run.step
        try:
            entering = run.path in self._entering
            self._entering.discard(run.path)  # its `if` was true when it first ran
            if (
                not entering
                and step.if_ is not None
                and await run.evaluate(step.if_, "if") is not True
            ):
                return False
            if step.is_block:
                await step.run(run)
                run.ended(StepOutcome.DONE)
            else:
                await self._leaf(run)
        except StepError:
            raise
        except Exception as err:  # EvaluationError, OutOfRange, DeviceFailed, NoAnswer, a bug
            cause = str(err) if isinstance(err, CellctlError) else f"{type(err).__name__}: {err}"
            raise StepError(f"{run.label}: {cause}") from err
        return True

    async def _leaf(self, run: StepRun) -> None:
        """A leaf step, re-entered after each interruption until it ends; when the safe state
        undid its writes meanwhile, run again from its start or skipped, as the operator chose."""
        # A new attempt (a retry) writes everything again; the step in progress when a batch
        # is resumed goes on after its writes confirmed before the crash.
        run.writes_done = self._resume_writes.pop(run.path, 0)
        self._leaves.append(run)
        try:
            while True:
                try:
                    await run.step.run(run)
                    break
                except Interrupted:
                    run.ended(StepOutcome.INTERRUPTED)
                    choice = await self._resumed(run)
                if choice is FailureChoice.SKIP:
                    run.ended(
                        StepOutcome.SKIPPED,
                        "skipped by the operator: its writes were undone by the safe state",
                    )
                    return
                if choice is not None:  # re-run (or retry): every write again, the wait afresh
                    run.writes_done = 0
                    self.emit(Notice(text=f"{run.named}: run again from its start ({choice})"))
        finally:
            self._leaves.remove(run)
        self.steps_done += 1
        run.ended(StepOutcome.DONE)

    # --- failures and questions -------------------------------------------------------------

    async def _await_choice(self, failure: StepFailure) -> FailureChoice:
        """Hold on a failed step until the operator chooses retry or skip."""
        answer: asyncio.Future[FailureChoice] = asyncio.get_running_loop().create_future()
        self._pending.append((failure, answer))
        # This branch holds now; the others stop at their next boundary too, even before the
        # controller's Hold reaches pause().
        if self.gate.pause_reason is None:
            self.pause(PauseReason.HOLD)
        if len(self._pending) == 1:
            self.host.step_failed(failure)
        choice = await self._answer(failure, answer)
        await self.gate.park()
        return choice

    async def _answer(
        self, failure: StepFailure, answer: asyncio.Future[FailureChoice]
    ) -> FailureChoice:
        """The operator's choice for a pending question, this branch not busy meanwhile."""
        self.gate.add_busy(-1)
        try:
            return await answer
        finally:
            self.gate.add_busy(1)
            if (failure, answer) in self._pending:  # cancelled while waiting: Stop or Abort
                self._pending.remove((failure, answer))

    async def _resume_question(self, run: StepRun, resuming: Resuming) -> FailureChoice | None:
        """The step in progress when the batch was resumed: ask Unhold's question about its
        writes (unknown outcome, or undone by the safe state) and wait for the choice; None
        when it is simply re-entered after its confirmed writes."""
        asked = resuming.question(self.io.cell.safe_state, self.io.cell.restore_on_unhold)
        if asked is None:
            self._resume_writes[run.path] = resuming.writes_done()
            resuming.reached.set()
            return None
        message, unknown, undone = asked
        failure = StepFailure(run.path, run.step.id, run.label, message, "hold", unknown, undone)
        answer: asyncio.Future[FailureChoice] = asyncio.get_running_loop().create_future()
        self._pending.append((failure, answer))
        self.emit(
            UnholdAsks(
                text=f"{message}; Unhold asks: {failure.choices}",
                path=run.path,
                step_id=run.step.id,
                question=message,
            )
        )
        resuming.reached.set()
        choice = await self._answer(failure, answer)
        if choice is FailureChoice.RETRY:
            self.emit(Notice(text=f"{run.named}: run again from its start ({choice})"))
        await self.gate.park()
        return choice

    async def _resumed(self, run: StepRun) -> FailureChoice | None:
        """An interrupted step at its boundary until the resume: None to re-enter it where it
        was, or the operator's choice when the safe state undid its writes meanwhile."""
        run.parked = True
        self._ask_undone(run)  # a trip's safe state may have come before this boundary
        try:
            await self.gate.park()
            # The pause is lifted only once every queued question has its answer.
            return None if run.question is None else await run.question[1]
        finally:
            if run.question is not None and run.question in self._pending:
                self._pending.remove(run.question)  # Stop or Abort: nobody answers it now
            run.parked, run.question = False, None
            run.undone.clear()

    def _written(self, run: StepRun) -> dict[str, Value]:
        """The step's own writes confirmed in this attempt: tag -> value."""
        tags = run.step.written()[: run.writes_done]
        return {tag: self._commanded[tag] for tag in tags if tag in self._commanded}

    def _ask_undone(self, run: StepRun) -> None:
        """Queue the operator's question for a paused step whose writes were undone (once)."""
        if not run.undone or run.question is not None or self.gate.pause_reason is None:
            return
        undone = "; ".join(
            f"{tag} was set {expr.show(value)} by the safe state"
            for tag, value in run.undone.items()
        )
        failure = StepFailure(
            run.path,
            run.step.id,
            run.label,
            f"{run.named}: its writes were undone: {undone}",
            "hold",
            False,
            tuple(run.undone),
        )
        run.question = (failure, asyncio.get_running_loop().create_future())
        self._pending.append(run.question)
        self.emit(
            UnholdAsks(
                text=f"{failure.message}; Unhold asks: {failure.choices}",
                path=run.path,
                step_id=run.step.id,
                question=failure.message,
            )
        )
