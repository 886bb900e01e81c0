"""The step kinds: one module per kind (its model, checks, plan line and execution) and this
registry, which maps each kind's key to its model. Adding a kind means writing its module
and listing it here, in STEP_MODELS, AnyStep and Step.

A step holds exactly one kind's key (`set` may carry a `wait`: write, then wait).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Discriminator, Tag

from cellctl.errors import InvalidField, did_you_mean
from cellctl.recipe.fields import model_keys
from cellctl.recipe.steps.base import (
    At,
    CheckContext,
    StepBase,
    StepContext,
    StepError,
    tags_read,
)
from cellctl.recipe.steps.call import CallStep
from cellctl.recipe.steps.delay import DelayStep
from cellctl.recipe.steps.parallel import ParallelStep
from cellctl.recipe.steps.parts import OnError, Wait, seconds_text
from cellctl.recipe.steps.planning import PlanContext, PlanPart, PlanStep
from cellctl.recipe.steps.prompt import PromptStep
from cellctl.recipe.steps.repeat import RepeatStep
from cellctl.recipe.steps.set import SetStep
from cellctl.recipe.steps.wait import WaitStep

__all__ = [
    "STEP_KEYS",
    "STEP_MODELS",
    "AnyStep",
    "At",
    "CallStep",
    "CheckContext",
    "DelayStep",
    "OnError",
    "ParallelStep",
    "PlanContext",
    "PlanPart",
    "PlanStep",
    "PromptStep",
    "RepeatStep",
    "SetStep",
    "Step",
    "StepBase",
    "StepContext",
    "StepError",
    "StepKindError",
    "Wait",
    "WaitStep",
    "seconds_text",
    "step_kind",
    "tags_read",
]

#: Every step kind's model by its key, in the order messages list them.
STEP_MODELS: dict[str, type[StepBase]] = {
    model.KIND: model
    for model in (SetStep, WaitStep, CallStep, DelayStep, RepeatStep, ParallelStep, PromptStep)
}
#: Every step kind's model; tell them apart with `step_kind`.
AnyStep = SetStep | WaitStep | CallStep | DelayStep | RepeatStep | ParallelStep | PromptStep

#: Every key some step kind takes.
STEP_KEYS = frozenset(key for model in STEP_MODELS.values() for key in model_keys(model))
_KINDS = ", ".join(STEP_MODELS)


class StepKindError(InvalidField):
    """A step whose kind cannot be told: located at `key` when one key is at fault."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message, "step-kind")
        self.key = key


def _kinds_in(data: dict[Any, Any]) -> list[str]:
    """The kinds whose key a raw step holds, less those another of them carries."""
    present = [kind for kind in STEP_MODELS if kind in data]
    carried = {kind for key in present for kind in STEP_MODELS[key].CARRIES}
    return [kind for kind in present if kind not in carried]


def step_kind(data: object) -> str | None:
    """The kind of a raw step mapping ('set', 'wait', …), or None when it has none or several."""
    if not isinstance(data, dict):
        return None
    present = _kinds_in(data)
    return present[0] if len(present) == 1 else None


def _check_step_kind(data: object) -> object:
    if not isinstance(data, dict):
        raise StepKindError(
            f"a step is a mapping with one of {_KINDS}, e.g. {{id: start, set: {{tag: value}}}}"
        )
    present = _kinds_in(data)
    if len(present) > 1:
        raise StepKindError(
            f"a step does one thing, but this one has both {present[0]!r} and {present[1]!r} "
            "(only set may carry a wait); split it into two steps",
            present[1],
        )
    if not present:
        unknown = [str(key) for key in data if str(key) not in STEP_KEYS]
        hints = [(key, did_you_mean(key, STEP_MODELS)) for key in unknown]
        for key, hint in hints:
            if hint:
                raise StepKindError(f"unknown step kind {key!r}{hint}", key)
        what = f"unknown key {unknown[0]!r}; " if unknown else ""
        raise StepKindError(f"{what}a step needs one of {_KINDS}", unknown[0] if unknown else None)
    return data


def _tag(model: type[StepBase]) -> Any:
    return Tag(model.__name__)


def _discriminate(data: object) -> str | None:
    kind = step_kind(data)
    return STEP_MODELS[kind].__name__ if kind is not None else None


#: One step of any kind, told apart by its keys.
Step = Annotated[
    Annotated[SetStep, _tag(SetStep)]
    | Annotated[WaitStep, _tag(WaitStep)]
    | Annotated[CallStep, _tag(CallStep)]
    | Annotated[DelayStep, _tag(DelayStep)]
    | Annotated[RepeatStep, _tag(RepeatStep)]
    | Annotated[ParallelStep, _tag(ParallelStep)]
    | Annotated[PromptStep, _tag(PromptStep)],
    Discriminator(_discriminate),
    BeforeValidator(_check_step_kind),
]

# The kinds that nest steps name `Step` before it exists: resolve it now.
for _model in STEP_MODELS.values():
    _model.model_rebuild(_types_namespace={"Step": Step})
