"""The parts several step kinds share: what a failed step does (`on_error`) and what a wait
waits for (a wait step's `wait`, and a set step's `wait` after its writes)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from cellctl import expr
from cellctl.cell import TagName
from cellctl.errors import InvalidField
from cellctl.recipe.fields import Expr, MaybeDelay, Model, to_expression
from cellctl.shorthand import Shorthand
from drivers.base import Value

__all__ = ["OnError", "OnErrorField", "Wait", "WaitField", "seconds_text"]


def seconds_text(value: float) -> str:
    """Seconds as failure messages give them: '2.5 s'."""
    return f"{value:g} s"


class OnError(Model):
    """What a failed step does: hold (default), abort, retry (count times, delay apart), skip."""

    action: Literal["hold", "abort", "retry", "skip"]
    count: int | None = Field(None, ge=1, le=100)
    delay: MaybeDelay = None

    @model_validator(mode="after")
    def _retry_only(self) -> OnError:
        if self.action != "retry" and (self.count is not None or self.delay is not None):
            raise InvalidField(f"count and delay apply to retry, not {self.action}", "bad-key")
        return self

    @property
    def retries(self) -> int:
        """How many times a retry re-runs the step (1 when count is not given)."""
        return (self.count or 1) if self.action == "retry" else 0


#: What a failed step does: an action, or {action: ACTION, count: N, delay: DURATION}.
OnErrorField = Annotated[
    OnError,
    Shorthand(
        "action",
        short={"enum": ["hold", "abort", "retry", "skip"]},
        properties={
            "action": {"enum": ["hold", "abort", "retry", "skip"]},
            "count": {"type": "integer", "minimum": 1, "maximum": 100},
            "delay": {"type": "string"},
        },
    ),
]


def _one_or_more(value: object) -> object:
    """`changed: press.cycles` is `changed: [press.cycles]`."""
    return [value] if isinstance(value, str) else value


class Wait(Model):
    """What a wait waits for: `until` holds and each `changed` tag differs from its value when
    the step started (read before the step's first write; a wait step's at its start).

    `changed` is how a wait after a write tells the machine's answer from a state left over
    from before: a press's `cycle_done` may still be latched from an earlier cycle, but its
    cycle counter only moves when this step's cycle is done.
    """

    until: Expr
    changed: Annotated[tuple[TagName, ...], BeforeValidator(_one_or_more)] = ()

    @field_validator("changed")
    @classmethod
    def _listed_once(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise InvalidField("no tags listed (list one or more, or leave it out)", "empty")
        twice = sorted({tag for tag in value if value.count(tag) > 1})
        if twice:
            raise InvalidField(f"{twice[0]} is listed twice", "bad-value")
        return value

    def describe(
        self, before: Mapping[str, Value | None] | None = None, until: str | None = None
    ) -> str:
        """The wait in words: 'EXPR; changed: press.cycles (from 41)' (values when known;
        `until` the condition as shown instead of its text, e.g. with parameters resolved)."""
        until = self.until.text if until is None else until
        if not self.changed:
            return until
        tags = ", ".join(
            f"{tag} (from {expr.show(before[tag])})" if before and tag in before else tag
            for tag in self.changed
        )
        return f"{until}; changed: {tags}"


def _wait_form(value: object) -> object:
    """`wait: EXPR` is `wait: {until: EXPR}`; its expression errors stay located at `wait`."""
    if value is None or isinstance(value, dict):
        return value
    return Wait.model_construct(until=to_expression(value))


_EXPRESSION_SCHEMA = {"type": ["string", "number", "boolean"]}

#: A wait: an expression, or {until: EXPR, changed: [TAG, ...]} (or `changed: TAG`).
WaitField = Annotated[
    Wait,
    Shorthand(
        "until",
        short=_EXPRESSION_SCHEMA,
        properties={
            "until": _EXPRESSION_SCHEMA,
            "changed": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1},
                ]
            },
        },
        expand=_wait_form,
    ),
]
