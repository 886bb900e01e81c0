"""The operator as the executor sees it: who answers prompts and steps the recipe.

The CLI gives a terminal operator (cellctl.cli.keys) or, without a terminal, the scripted one
here, which answers prompts from `--answer id=value` and can never step.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cellctl.control.events import StepPaused
from cellctl.errors import BadValue, CellctlError, did_you_mean
from cellctl.recipe import Answer, PromptStep, Recipe, RepeatStep, iter_steps
from drivers.base import Value


class StepChoice(enum.StrEnum):
    """What the operator decided before a step (stepping or a breakpoint)."""

    RUN = "run"  # run this step, pause before the next
    SKIP = "skip"  # do not run this step
    CONTINUE = "continue"  # run on to the end (breakpoints still stop)
    ABORT = "abort"


class FailureChoice(enum.StrEnum):
    """What Unhold does with a step that failed, or whose writes the safe state undid: run it
    again from its start (every write again, its wait afresh: a retry, or a re-run), or go on
    after it (abort is the Abort command, never blocked)."""

    RETRY = "retry"
    SKIP = "skip"


@dataclass(frozen=True)
class PromptRequest:
    """A prompt for the operator: its step, its text, and the typed answer it wants (if any)."""

    path: str
    step_id: str
    text: str
    answer: Answer | None


class NoAnswer(CellctlError):
    """A prompt that nobody can answer (no terminal and no --answer for it)."""


class Operator(Protocol):
    """Answers prompts and decides before paused steps."""

    name: str | None

    async def answer(self, request: PromptRequest) -> Value | None:
        """The answer (None for a plain acknowledgement); raises NoAnswer when nobody can."""
        ...

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        """Decide before a step that stepping or a breakpoint paused."""
        ...


def parse_answers(recipe: Recipe, assignments: Sequence[str]) -> dict[str, Value | None]:
    """`--answer id=value` texts checked against the recipe's prompts; raises BadValue.

    A prompt without a typed answer takes any text as an acknowledgement (value None).
    """
    prompts = {s.id: s for s, _ in iter_steps(recipe.steps) if isinstance(s, PromptStep)}
    answers: dict[str, Value | None] = {}
    for assignment in assignments:
        step_id, sep, text = assignment.partition("=")
        step_id = step_id.strip()
        if not sep or not step_id:
            raise BadValue(f"--answer {assignment!r}: write PROMPT_ID=VALUE")
        prompt = prompts.get(step_id)
        if prompt is None:
            known = ", ".join(prompts) or "none"
            raise BadValue(
                f"--answer {step_id}: recipe {recipe.recipe} has no prompt {step_id!r}"
                f"{did_you_mean(step_id, prompts)} (its prompts: {known})"
            )
        if step_id in answers:
            raise BadValue(f"--answer {step_id} is given twice")
        if prompt.answer is None:
            answers[step_id] = None
            continue
        try:
            answers[step_id] = prompt.answer.parse_text(text)
        except BadValue as err:
            raise BadValue(f"--answer {step_id}: {err}") from None
    return answers


def certain_prompts(recipe: Recipe) -> list[PromptStep]:
    """The prompts every run reaches: neither they nor a block around them has an `if`,
    `on_error: skip` or a repeat (whose count may be 0)."""
    steps = {path: step for step, path in iter_steps(recipe.steps)}

    def certain(path: str) -> bool:
        parts = path.split(".")
        for end in range(1, len(parts)):
            outer = steps.get(".".join(parts[:end]))  # None for a parallel branch's number
            if outer is not None and (outer.may_skip or isinstance(outer, RepeatStep)):
                return False
        return not steps[path].may_skip

    return [s for p, s in steps.items() if isinstance(s, PromptStep) and certain(p)]


def _needs_operator(step_id: str, text: str, answer: Answer | None) -> str:
    wanted = answer.describe_range() if answer else "any text"
    return (
        f"prompt {step_id!r} ({text!r}) needs an operator: run on a terminal, or give "
        f"--answer {step_id}=VALUE ({wanted})"
    )


def check_answered(recipe: Recipe, answers: Mapping[str, Value | None]) -> None:
    """Without a terminal: NoAnswer for the first prompt every run reaches that has no answer."""
    for prompt in certain_prompts(recipe):
        if prompt.id not in answers:
            raise NoAnswer(_needs_operator(prompt.id, prompt.prompt, prompt.answer))


class ScriptedOperator:
    """The operator of a run without a terminal: answers from --answer, never steps."""

    def __init__(self, answers: Mapping[str, Value | None], name: str | None = None) -> None:
        self.answers = dict(answers)
        self.name = name

    async def answer(self, request: PromptRequest) -> Value | None:
        """The --answer given for this prompt; NoAnswer naming the prompt when there is none."""
        if request.step_id in self.answers:
            return self.answers[request.step_id]
        raise NoAnswer(_needs_operator(request.step_id, request.text, request.answer))

    async def confirm_step(self, pause: StepPaused) -> StepChoice:
        """Nobody can step without a terminal: the CLI refuses --step and --break before."""
        return StepChoice.CONTINUE
