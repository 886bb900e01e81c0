"""Stepping and breakpoints: before a step, show the operator what it will do and ask."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

from cellctl.control.events import StepPaused
from cellctl.control.gate import Interrupted
from cellctl.control.operator import StepChoice
from cellctl.control.steprun import StepRun

if TYPE_CHECKING:  # the executor asks here before each of its steps
    from cellctl.control.executor import Executor

__all__ = ["confirm", "preview"]


async def confirm(executor: Executor, run: StepRun) -> bool:
    """Stepping or a breakpoint: ask the operator; True to run the step, False to skip."""
    step = run.step
    at_break = step.id is not None and step.id in executor.breakpoints
    if not (at_break or (executor.step_mode and not step.is_block)):
        return True
    while True:
        pause = StepPaused(
            path=run.path,
            step_id=step.id,
            label=run.label,
            preview=await preview(run),
            breakpoint=at_break,
        )
        executor.emit(pause)
        try:
            choice = await executor.gate.interruptible(
                partial(executor.operator.confirm_step, pause)
            )
            break
        except Interrupted:
            await executor.gate.park()
    if choice is StepChoice.SKIP:
        return False
    if choice is StepChoice.CONTINUE:
        executor.step_mode = False
    elif choice is StepChoice.ABORT:
        executor.host.operator_abort(f"the operator aborted before {run.label}")
        await executor.gate.until_cancelled()
    return True


async def preview(run: StepRun) -> tuple[str, ...]:
    """What the step will do, values resolved by fresh reads (never raises)."""
    step = run.step
    lines: list[str] = []
    if step.if_ is not None:
        lines.append(f"if {step.if_.text}: now {await run.resolved(step.if_)}")
    lines += await step.preview(run)
    return tuple(lines)
