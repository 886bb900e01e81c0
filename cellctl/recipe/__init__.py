"""The recipe file: its model (one typed model per step kind), loading with located errors,
its identity and its parameters.

A recipe is loaded in three passes so that every problem is reported at once: YAML
(yamlload), pydantic (the shape of each step, parameter and expression), then the checks
against the cell file (cellctl.recipe.check: tags, methods, types, ranges, ids, names).

Step kinds are told apart by their keys: a step holds exactly one of `set`, `wait`, `call`,
`delay`, `repeat`, `parallel`, `prompt` (`set` may carry a `wait`: write, then wait).

The literal rule — every value in a recipe that is not a name, a duration or a text for the
operator is an *expression*: `set:` values, `wait` (its `until`), `if`, `repeat`, call `args`
and `expect`. A YAML number or true/false is the constant it shows; a YAML text is parsed as an
expression, so a fixed text is written in quotes *inside* it::

    set:
      conveyor.speed_rpm: 1200           # a constant
      press.setpoint_kN: force_kN * 0.9  # an expression over a parameter
      batch.lot: "'LOT-42'"              # the text LOT-42 for a string tag

Hence `conveyor.speed_rpm: many` is an unknown name and `conveyor.run: "'yes please'"` a
string written to a bool: both are errors naming the tag.

A repeat's `index` name counts the rounds 1, 2, … N. A name bound by `result`, a prompt's
`answer` or a repeat's `index` is usable by the steps after it in its block (and inside
nested blocks); names bound in a parallel branch are usable after the parallel step; names
bound in a repeat body or by a step that may be skipped (`if`, `on_error: skip`) are not
usable after it.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PlainValidator,
    Tag,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from cellctl import expr, textvalue
from cellctl.cell import Cell, MethodName, TagName, check_cell_file, load_cell
from cellctl.durations import Duration
from cellctl.errors import BadValue, InvalidField, Problem, ValidationFailed, did_you_mean
from cellctl.expr import names
from cellctl.yamlload import (
    DuplicateKey,
    Where,
    YamlDocument,
    parse_yaml,
    plain,
    read_file,
    scalar_offset,
    validation_problems,
)
from drivers.base import Value
from drivers.points import DataType

#: A path into the recipe's data: pydantic's loc (union tags included) or a raw one.
Loc = Sequence[str | int]

# ---------------------------------------------------------------------------------------------
# Field types

StepId = Annotated[str, AfterValidator(names.label("step id"))]
RecipeName = Annotated[str, AfterValidator(names.label("recipe name"))]
#: A parameter or bound name: one word usable in expressions.
Name = Annotated[str, AfterValidator(names.expression_name("parameter or bound", names.WORD))]
PositiveDuration = Annotated[Duration, Field(gt=0)]
NonNegativeDuration = Annotated[Duration, Field(ge=0)]


def _given(what: str, code: str) -> BeforeValidator:
    """An optional key may be left out, but not written empty (`timeout:`, `if:`): an empty
    value is a slip, not a choice, and must not silently mean "none"."""

    def check(value: object) -> object:
        if value is None:
            raise InvalidField(
                f"no {what} given (the value is empty; give one or leave the key out)", code
            )
        return value

    return BeforeValidator(check)


#: Optional fields: absent is None, written empty is an error.
MaybeTimeout = Annotated[PositiveDuration | None, _given("duration", "bad-duration")]
MaybeDelay = Annotated[NonNegativeDuration | None, _given("duration", "bad-duration")]
MaybeName = Annotated[Name | None, _given("name", "bad-name")]


class ExpressionField(InvalidField):
    """An expression refused while loading; `col` is the fault's offset in the text."""

    def __init__(self, message: str, col: int = 0) -> None:
        super().__init__(message, "expression")
        self.col = col


def to_expression(value: object) -> expr.Expression:
    """A YAML value as an expression: numbers and true/false are constants, texts are parsed."""
    value = plain(value)
    if isinstance(value, bool):
        value = "true" if value else "false"
    elif isinstance(value, int | float):
        if not math.isfinite(value):
            raise ExpressionField(f"{value!r} is not a finite number")
        value = repr(value)
    if isinstance(value, str):
        try:
            return expr.parse(value)
        except expr.ExpressionError as err:
            raise ExpressionField(err.message, err.col) from None
    if value is None:
        raise ExpressionField("no expression given (the value is empty)")
    raise ExpressionField(
        f"expected an expression, got {_shape(value)}; a fixed text is written in quotes "
        "inside the expression: \"'LOT-42'\""
    )


def _shape(value: object) -> str:
    """What a YAML value that is no expression is, in words."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple | set):
        return "a list"
    if isinstance(value, datetime.date):  # `2024-05-01` is a YAML date unless quoted
        return f"the date {value.isoformat()}"
    if isinstance(value, bytes):
        return "binary data (!!binary)"
    return f"a YAML {type(value).__name__}"


#: An expression field: written as text (or a YAML number / true / false), held parsed.
Expr = Annotated[
    expr.Expression,
    PlainValidator(to_expression),
    PlainSerializer(str),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


def _expression_given(value: object) -> object:
    if value is None:
        to_expression(value)  # raises: no expression given
    return value


#: An optional expression (`if`, a set's `wait`): absent is None, written empty is an error.
MaybeExpr = Annotated[Expr | None, BeforeValidator(_expression_given)]


def _number(value: object) -> int | float:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(f"expected a number, got {value!r}", "bad-value")
    return value


Number = Annotated[int | float, PlainValidator(_number), WithJsonSchema({"type": "number"})]


# ---------------------------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ParameterType = Literal["int", "float", "bool", "str", "enum"]
#: The type a parameter's or answer's text is parsed as (cellctl.textvalue); an int is one a
#: device can hold, at most 64 bits.
_TEXT_TYPES: dict[str, DataType] = {
    "int": DataType.INT64,
    "float": DataType.FLOAT64,
    "bool": DataType.BOOL,
    "str": DataType.STRING,
    "enum": DataType.STRING,
}


class _Typed(_Model):
    """A typed value the recipe declares: a parameter or an operator's answer."""

    type: ParameterType
    min: Number | None = None
    max: Number | None = None
    choices: list[str] | None = Field(None, min_length=1)
    unit: str | None = None
    description: str | None = None

    @field_validator("min", "max")
    @classmethod
    def _numeric_only(cls, value: float | None, info: ValidationInfo) -> float | None:
        kind = info.data.get("type")
        if value is not None and kind is not None and kind not in ("int", "float"):
            raise InvalidField(f"{info.field_name} applies to int and float, not {kind}", "bad-key")
        low = info.data.get("min")
        if info.field_name == "max" and value is not None and low is not None and value < low:
            raise InvalidField(f"max {value:g} is below min {low:g}", "bad-value")
        return value

    @field_validator("choices")
    @classmethod
    def _choices_for_enum(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        kind = info.data.get("type")
        if value is not None and kind is not None and kind != "enum":
            raise InvalidField(f"choices apply to enum, not {kind}", "bad-key")
        if value is not None and len(set(value)) != len(value):
            raise InvalidField("choices are listed twice", "bad-value")
        return value

    @model_validator(mode="after")
    def _enum_has_choices(self) -> _Typed:
        if self.type == "enum" and not self.choices:
            raise InvalidField("an enum needs 'choices' (the allowed texts)", "missing")
        return self

    @property
    def kind(self) -> expr.Kind:
        """The expression kind of the value: a number, a condition or a text."""
        if self.type in ("int", "float"):
            return expr.Kind.NUMBER
        return expr.Kind.BOOL if self.type == "bool" else expr.Kind.STRING

    def describe_range(self) -> str:
        """The accepted values in words: 'a float in 5..20 kN', "one of 'a', 'b'"."""
        if self.type == "enum":
            return "one of " + ", ".join(repr(c) for c in self.choices or ())
        if self.type == "bool":  # the words every text of a bool takes (cellctl.textvalue)
            return textvalue.describe(DataType.BOOL)
        text = {"int": "a whole number", "float": "a number"}.get(self.type, "a text")
        if self.min is not None and self.max is not None:
            text += f" in {self.min:g}..{self.max:g}"
        elif self.min is not None:
            text += f" of at least {self.min:g}"
        elif self.max is not None:
            text += f" of at most {self.max:g}"
        return f"{text} {self.unit}" if self.unit and self.type in ("int", "float") else text

    def check_value(self, value: object) -> Value:
        """The value checked against type, range and choices; raises BadValue."""
        value = plain(value)
        wanted = self.describe_range()
        if self.type == "bool":
            if not isinstance(value, bool):
                raise BadValue(f"expects {wanted}, got {value!r}")
            return value
        if self.type in ("str", "enum"):
            if not isinstance(value, str):
                raise BadValue(f"expects {wanted}, got {value!r}")
            if self.choices is not None and value not in self.choices:
                raise BadValue(f"{value!r} is not {wanted}")
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadValue(f"expects {wanted}, got {value!r}")
        if self.type == "int" and not isinstance(value, int):
            raise BadValue(f"expects {wanted}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise BadValue(f"expects a finite number, got {value!r}")
        if (self.min is not None and value < self.min) or (
            self.max is not None and value > self.max
        ):
            raise BadValue(f"{value!r} is out of range: expects {wanted}")
        return float(value) if self.type == "float" else value

    def parse_text(self, text: str) -> Value:
        """A value typed on the command line, parsed by the type (cellctl.textvalue) and
        checked; raises BadValue."""
        expects = self.describe_range()
        return self.check_value(textvalue.parse(text, _TEXT_TYPES[self.type], expects=expects))


_DEFAULT_NEEDS = {"type", "min", "max", "choices"}


class Parameter(_Typed):
    """A recipe parameter: its type, default, range or choices, unit and description."""

    default: Annotated[Any, WithJsonSchema({"type": ["number", "boolean", "string"]})] = None

    @field_validator("default")
    @classmethod
    def _default_fits(cls, value: object, info: ValidationInfo) -> Value | None:
        if value is None or not info.data.keys() >= _DEFAULT_NEEDS:
            # A bad type, range or choices is reported already: no check against half of it.
            return None if value is None else plain(value)
        data = {key: info.data.get(key) for key in ("type", "min", "max", "choices", "unit")}
        try:
            return _Typed.model_construct(**data).check_value(value)
        except BadValue as err:
            raise InvalidField(str(err), "bad-default") from None


class Answer(_Typed):
    """The operator's typed answer to a prompt, bound to `name` for later expressions."""

    name: Name


class OnError(_Model):
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


def _on_error(value: object) -> object:
    return {"action": value} if isinstance(value, str) else value


OnErrorField = Annotated[
    OnError,
    BeforeValidator(_on_error),
    WithJsonSchema(
        {
            "anyOf": [
                {"enum": ["hold", "abort", "retry", "skip"]},
                {
                    "type": "object",
                    "properties": {
                        "action": {"enum": ["hold", "abort", "retry", "skip"]},
                        "count": {"type": "integer", "minimum": 1, "maximum": 100},
                        "delay": {"type": "string"},
                    },
                    "required": ["action"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


def _one_or_more(value: object) -> object:
    """`changed: press.cycles` is `changed: [press.cycles]`."""
    return [value] if isinstance(value, str) else value


class Wait(_Model):
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
    BeforeValidator(_wait_form),
    WithJsonSchema(
        {
            "anyOf": [
                _EXPRESSION_SCHEMA,
                {
                    "type": "object",
                    "properties": {
                        "until": _EXPRESSION_SCHEMA,
                        "changed": {
                            "anyOf": [
                                {"type": "string"},
                                {"type": "array", "items": {"type": "string"}, "minItems": 1},
                            ]
                        },
                    },
                    "required": ["until"],
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class _Step(_Model):
    id: StepId | None = None
    if_: MaybeExpr = Field(None, alias="if")
    on_error: Annotated[OnErrorField | None, _given("action", "empty")] = None

    @property
    def kind(self) -> str:
        """The step kind: set, wait, call, delay, repeat, parallel or prompt."""
        return _KIND_OF_MODEL[type(self).__name__]

    @property
    def may_skip(self) -> bool:
        """True when the step may not run: it has an `if`, or on_error skip."""
        return self.if_ is not None or (
            self.on_error is not None and self.on_error.action == "skip"
        )

    def label(self, path: str) -> str:
        """How messages name the step: "step 'press'", or 'step #2.1' when it has no id."""
        return f"step {self.id!r}" if self.id else f"step #{path}"


class SetStep(_Step):
    """Write tags in the order written; with `wait`, then wait for a condition.

    `timeout` bounds the whole step (writes and wait); a wait without one takes the default.
    """

    id: StepId
    set: dict[TagName, Expr] = Field(min_length=1)
    wait: Annotated[WaitField | None, BeforeValidator(_expression_given)] = None
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


class WaitStep(_Step):
    """Wait until a condition holds, at most `timeout` (or the recipe's default timeout)."""

    id: StepId
    wait: WaitField
    timeout: MaybeTimeout = None


class CallStep(_Step):
    """Call a device method with named args; its result is bound to `result` when given, once
    the answer is accepted.

    `expect` is a condition over the name `result` that the answer must meet, else the step
    fails; without it, a method whose declared result is bool fails the step unless it answers
    true. A method that declares a result and answers nothing fails the step.
    """

    id: StepId
    call: MethodName
    args: dict[str, Expr] = {}
    result: MaybeName = None
    expect: MaybeExpr = None
    timeout: MaybeTimeout = None


class DelayStep(_Step):
    """Wait a fixed time."""

    delay: PositiveDuration


class RepeatStep(_Step):
    """Run the nested steps `repeat` times; the round (1..N) is bound to `index` when given."""

    repeat: Expr
    index: MaybeName = None
    steps: list[Step] = Field(min_length=1)


class ParallelStep(_Step):
    """Run branches (each a list of steps) together; the step ends when all have finished."""

    parallel: list[Annotated[list[Step], Field(min_length=1)]] = Field(min_length=2)


class PromptStep(_Step):
    """Show a message to the operator and wait for an acknowledgement or a typed answer."""

    id: StepId
    prompt: Annotated[str, Field(min_length=1)]
    answer: Annotated[Answer | None, _given("answer", "empty")] = None
    timeout: MaybeTimeout = None


STEP_MODELS: dict[str, type[_Step]] = {
    "set": SetStep,
    "wait": WaitStep,
    "call": CallStep,
    "delay": DelayStep,
    "repeat": RepeatStep,
    "parallel": ParallelStep,
    "prompt": PromptStep,
}
_KIND_OF_MODEL = {model.__name__: kind for kind, model in STEP_MODELS.items()}
#: Every step kind's model; tell them apart with `step_kind`.
AnyStep = SetStep | WaitStep | CallStep | DelayStep | RepeatStep | ParallelStep | PromptStep


class StepKindError(InvalidField):
    """A step whose kind cannot be told: located at `key` when one key is at fault."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message, "step-kind")
        self.key = key


_KINDS = ", ".join(STEP_MODELS)


def step_kind(data: object) -> str | None:
    """The kind of a raw step mapping ('set', 'wait', …), or None when it has none or several."""
    if not isinstance(data, dict):
        return None
    present = [kind for kind in STEP_MODELS if kind in data]
    if present == ["set", "wait"]:
        return "set"
    return present[0] if len(present) == 1 else None


def _check_step_kind(data: object) -> object:
    if not isinstance(data, dict):
        raise StepKindError(
            f"a step is a mapping with one of {_KINDS}, e.g. {{id: start, set: {{tag: value}}}}"
        )
    present = [kind for kind in STEP_MODELS if kind in data]
    if "set" in present and "wait" in present:
        present.remove("wait")
    if len(present) > 1:
        raise StepKindError(
            f"a step does one thing, but this one has both {present[0]!r} and {present[1]!r} "
            "(only set may carry a wait); split it into two steps",
            present[1],
        )
    if not present:
        unknown = [str(key) for key in data if str(key) not in _STEP_KEYS]
        hints = [(key, did_you_mean(key, STEP_MODELS)) for key in unknown]
        for key, hint in hints:
            if hint:
                raise StepKindError(f"unknown step kind {key!r}{hint}", key)
        what = f"unknown key {unknown[0]!r}; " if unknown else ""
        raise StepKindError(f"{what}a step needs one of {_KINDS}", unknown[0] if unknown else None)
    return data


def _tag(kind: str) -> Any:
    return Tag(STEP_MODELS[kind].__name__)


def _discriminate(data: object) -> str | None:
    kind = step_kind(data)
    return STEP_MODELS[kind].__name__ if kind is not None else None


#: One step of any kind, told apart by its keys.
Step = Annotated[
    Annotated[SetStep, _tag("set")]
    | Annotated[WaitStep, _tag("wait")]
    | Annotated[CallStep, _tag("call")]
    | Annotated[DelayStep, _tag("delay")]
    | Annotated[RepeatStep, _tag("repeat")]
    | Annotated[ParallelStep, _tag("parallel")]
    | Annotated[PromptStep, _tag("prompt")],
    Discriminator(_discriminate),
    BeforeValidator(_check_step_kind),
]

RepeatStep.model_rebuild()
ParallelStep.model_rebuild()


class Defaults(_Model):
    """Values for the steps that do not give their own: `timeout` bounds waits and calls.

    A prompt waits for the operator, not for a machine: the default timeout does not apply.
    """

    timeout: MaybeTimeout = None


class Recipe(_Model):
    """A recipe file: name, version, parameters, defaults and steps."""

    recipe: RecipeName
    version: Annotated[int, Field(strict=True, ge=1)]
    description: str | None = None
    parameters: dict[Name, Parameter] = {}
    defaults: Defaults = Defaults()
    steps: list[Step] = Field(min_length=1)

    def timeout_of(self, step: AnyStep) -> float | None:
        """Seconds the step may take at most: its own timeout, else the default for a wait or
        a call; None when unbounded (a prompt, a set without wait, a delay or a block).
        """
        own = getattr(step, "timeout", None)
        if own is not None:
            return float(own)
        waits = isinstance(step, WaitStep | CallStep) or (
            isinstance(step, SetStep) and step.wait is not None
        )
        return self.defaults.timeout if waits else None


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(info.alias or name for name, info in model.model_fields.items())


_STEP_KEYS = {key for model in STEP_MODELS.values() for key in _keys(model)}


# ---------------------------------------------------------------------------------------------
# Walking steps


def _children(step: AnyStep) -> list[tuple[list[AnyStep], str]]:
    """The nested blocks of a step with the path part each adds ('' for a repeat body)."""
    if isinstance(step, RepeatStep):
        return [(step.steps, "")]
    if isinstance(step, ParallelStep):
        return [(branch, f"{number}.") for number, branch in enumerate(step.parallel, 1)]
    return []


def iter_steps(steps: Sequence[AnyStep], prefix: str = "") -> Iterator[tuple[AnyStep, str]]:
    """Every step depth-first, blocks before their bodies, with its path.

    Paths count from 1: '3' is the third top-level step, '3.2' the second step of its repeat
    body, '4.1.2' the second step of the first branch of a parallel step 4.
    """
    for number, step in enumerate(steps, 1):
        path = f"{prefix}{number}"
        yield step, path
        for block, part in _children(step):
            yield from iter_steps(block, f"{path}.{part}")


def step_ids(recipe: Recipe) -> dict[str, AnyStep]:
    """The steps that have an id, by id."""
    return {step.id: step for step, _ in iter_steps(recipe.steps) if step.id}


# ---------------------------------------------------------------------------------------------
# Identity, parameters


@dataclass(frozen=True)
class RecipeIdentity:
    """What a batch record names: the recipe's name, version and the SHA-256 of its bytes."""

    name: str
    version: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version} sha256:{self.sha256[:8]}…"


@dataclass
class LoadedRecipe:
    """A recipe validated against its cell, with its identity."""

    path: Path
    recipe: Recipe
    cell: Cell
    identity: RecipeIdentity


def parse_parameters(recipe: Recipe, assignments: Sequence[str]) -> dict[str, Value]:
    """Every parameter's value: "name=value" texts parsed by type and checked, defaults filled.

    Raises BadValue naming the parameter (unknown, given twice, bad value, no value at all).
    """
    given: dict[str, Value] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadValue(f"parameter {assignment!r}: write name=value")
        parameter = recipe.parameters.get(name)
        if parameter is None:
            known = ", ".join(recipe.parameters) or "none"
            raise BadValue(
                f"unknown parameter {name!r}{did_you_mean(name, recipe.parameters)} "
                f"(recipe {recipe.recipe} has: {known})"
            )
        if name in given:
            raise BadValue(f"parameter {name} is given twice")
        try:
            given[name] = parameter.parse_text(text)
        except BadValue as err:
            raise BadValue(f"parameter {name}: {err}") from None
    values: dict[str, Value] = {}
    for name, parameter in recipe.parameters.items():
        if name in given:
            values[name] = given[name]
        elif parameter.default is not None:
            values[name] = parameter.default
        else:
            raise BadValue(
                f"parameter {name} has no default: give it with -p {name}=VALUE "
                f"({parameter.describe_range()})"
            )
    return values


# ---------------------------------------------------------------------------------------------
# Loading


def cell_file_for(recipe_path: Path) -> Path:
    """The cell file a recipe runs on: cell.yaml in the recipe's directory."""
    return recipe_path.parent / "cell.yaml"


def load_recipe(path: Path, cell: Cell) -> LoadedRecipe:
    """Load a recipe and validate it against `cell`; raises ValidationFailed with every problem."""
    raw = read_file(path)  # read once: the hash is of the very bytes that were validated
    doc = parse_yaml(raw, str(path))
    recipe = recipe_from_document(doc, cell)
    identity = RecipeIdentity(recipe.recipe, recipe.version, hashlib.sha256(raw).hexdigest())
    return LoadedRecipe(path, recipe, cell, identity)


def recipe_from_document(doc: YamlDocument, cell: Cell) -> Recipe:
    """Validate a loaded YAML document as a recipe for `cell`; raises ValidationFailed."""
    recipe, problems = _validate(doc, cell)
    if problems or recipe is None:
        raise ValidationFailed(problems)
    return recipe


def _validate(doc: YamlDocument, cell: Cell | None) -> tuple[Recipe | None, list[Problem]]:
    """The recipe (None when its shape is broken) and every problem, sorted.

    Without a cell (the cell file is broken or missing) only what does not need one is
    checked: YAML, keys, types, durations, expression syntax, ids, names, retries.
    """
    # Imported here: recipe_check builds on this module's models.
    from cellctl.recipe.check import check_rules

    problems = _yaml_problems(doc)
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(doc.data)
    except ValidationError as err:
        problems.extend(model_problems(doc, err))
    if isinstance(doc.data, dict):
        problems.extend(check_rules(doc, doc.data, cell))
    return recipe, _sorted(problems)


def check_recipe_file(path: Path, cell_path: Path | None = None) -> list[Problem]:
    """Every problem of a recipe file and of its cell file; an empty list when both are valid.

    The cell file is `cell_path`, else the one beside the recipe. When the cell file is broken
    (or missing), its problems come first (located in the cell file), then the recipe's own
    problems that do not need a cell; its tags, methods and types wait for a valid cell file.
    """
    cell_file = cell_path if cell_path is not None else cell_file_for(path)
    if cell_path is None and not cell_file.exists():
        cell_problems = [
            Problem(
                str(path),
                1,
                1,
                "no-cell",
                f"no cell file beside the recipe ({cell_file} not found); give it with --cell",
            )
        ]
    else:
        cell_problems = check_cell_file(cell_file)
    if not cell_problems:
        try:
            load_recipe(path, load_cell(cell_file))
        except ValidationFailed as err:
            return err.problems
        return []
    try:
        doc = parse_yaml(read_file(path), str(path))
    except ValidationFailed as err:  # the recipe's YAML is broken too
        return [*cell_problems, *err.problems]
    return [*cell_problems, *_validate(doc, None)[1]]


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = dict.fromkeys(problems)  # two passes may find one fault: say it once
    return sorted(unique, key=lambda p: (p.line, p.col))


_TAGS = {model.__name__ for model in STEP_MODELS.values()}


def _yaml_problems(doc: YamlDocument) -> list[Problem]:
    """The loader's problems the recipe's way: a duplicate key names its step (and the tag in a
    set); an alias is refused where it is written.

    Aliases are refused because the data an alias stands for is the anchor's own: every
    problem inside it would be reported at the anchor's lines (a duplicate id "first at" its
    own line), never at the alias. A recipe shares values through parameters instead.
    """
    describe = _describer(doc)
    renamed = {dup.problem: _duplicate_problem(dup, describe) for dup in doc.duplicates}
    problems = [renamed.get(problem, problem) for problem in doc.problems]
    for alias in doc.aliases:
        step = _step_at(alias.loc)
        if step is not None and step[0] == len(alias.loc):
            prefix, what = f"step #{step[1]}: ", "the step"  # its id would be the anchor's
        else:
            prefix, what = _prefix(describe(alias.loc)), "the value"
        message = f"{prefix}aliases (*{alias.name}) are not allowed in a recipe: write {what} out"
        problems.append(Problem(doc.file, alias.line, alias.col, "alias", message))
    return problems


def _duplicate_problem(dup: DuplicateKey, describe: Callable[[Loc], Where]) -> Problem:
    where = describe(dup.loc)
    if where.name == "recipe file":  # the loader's own words name the section already
        return dup.problem
    message = f"{_prefix(where)}duplicate key {dup.key!r} (first at line {dup.first_line})"
    return replace(dup.problem, message=message)


def _prefix(where: Where) -> str:
    """'step 'a': ' or 'step 'a': on_error: ': what a message inside `where` starts with."""
    fields = ".".join(str(part) for part in where.fields)
    return f"{where.name}: {fields}: " if fields else f"{where.name}: "


def under_alias(doc: YamlDocument, loc: Sequence[str | int]) -> bool:
    """True when `loc` (pydantic's, or a raw path) is inside an alias: its problems are the
    anchor's, reported there; the alias itself is refused."""
    parts = [str(part) for part in loc if part not in _TAGS]
    return any(
        [str(part) for part in alias.loc] == parts[: len(alias.loc)] for alias in doc.aliases
    )


def model_problems(doc: YamlDocument, error: ValidationError) -> list[Problem]:
    """pydantic's errors as located problems naming the step, parameter or key at fault."""
    problems = validation_problems(doc, error, _describer(doc))
    located: list[Problem] = []
    for details, problem in zip(error.errors(), problems, strict=True):
        cause = (details.get("ctx") or {}).get("error")
        loc = tuple(details["loc"])
        if under_alias(doc, loc):
            continue
        if isinstance(cause, StepKindError) and cause.key is not None:
            problem = doc.problem((*loc, cause.key), cause.code, problem.message, key=True)
        elif isinstance(cause, ExpressionField):
            offset = scalar_offset(raw_at(doc.data, loc), cause.col)
            problem = doc.problem(loc, cause.code, problem.message, col_offset=offset)
        elif details["type"] == "missing" and loc[-1] == "id":
            why = " (a step that writes, waits, calls or prompts has one)"
            problem = replace(problem, message=problem.message + why)
        elif details["type"] == "too_short":
            problem = replace(problem, message=_too_short(problem.message, details))
        located.append(problem)
    return located


_ITEM_WORDS = {"parallel": ("branch", "branches"), "set": ("tag", "tags")}
_ITEM_WORDS["choices"] = ("choice", "choices")
_NUMBER_WORDS = {1: "one", 2: "two"}


def _too_short(message: str, details: ErrorDetails) -> str:
    """'needs at least two branches' for pydantic's 'list should have at least 2 items …'."""
    head = message.rpartition(": list should")[0] or message.rpartition(": ")[0]
    least = int((details.get("ctx") or {}).get("min_length", 1))
    one, many = _ITEM_WORDS.get(str(details["loc"][-1]), ("step", "steps"))
    count = _NUMBER_WORDS.get(least, str(least))
    return f"{head}: needs at least {count} {one if least == 1 else many}"


def raw_at(data: Any, loc: Sequence[str | int]) -> Any:
    """The raw YAML value at a pydantic loc (step-kind tags skipped), or None."""
    node = data
    for part in loc:
        if part in _TAGS:
            continue
        if isinstance(node, dict):
            node = next((value for key, value in node.items() if str(key) == str(part)), None)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def step_label(raw: object, path: str) -> str:
    """How messages name a raw step: "step 'press'" by its id, else 'step #2.1' by its path."""
    ident = raw.get("id") if isinstance(raw, dict) else None
    return f"step {str(ident)!r}" if isinstance(ident, str) and ident else f"step #{path}"


def _step_at(parts: Sequence[str | int]) -> tuple[int, str] | None:
    """How many parts of a path (union tags removed) lead to the innermost step it reaches,
    and that step's path ('2.1'); None when the path is not inside `steps`."""
    if len(parts) < 2 or parts[0] != "steps" or not isinstance(parts[1], int):
        return None
    step_len, path = 2, str(parts[1] + 1)
    while True:
        rest = parts[step_len:]
        if len(rest) >= 2 and rest[0] == "steps" and isinstance(rest[1], int):
            step_len, path = step_len + 2, f"{path}.{rest[1] + 1}"
        elif (
            len(rest) >= 3
            and rest[0] == "parallel"
            and isinstance(rest[1], int)
            and isinstance(rest[2], int)
        ):
            step_len, path = step_len + 3, f"{path}.{rest[1] + 1}.{rest[2] + 1}"
        else:
            return step_len, path


def _describer(doc: YamlDocument) -> Callable[[Loc], Where]:
    def describe(loc: Loc) -> Where:
        parts = [part for part in loc if part not in _TAGS]
        if parts[:1] == ["parameters"] and len(parts) >= 2:
            return Where(f"parameter {parts[1]}", tuple(parts[2:]), _keys(Parameter))
        if parts[:1] == ["defaults"]:
            return Where("defaults", tuple(parts[1:]), _keys(Defaults))
        step = _step_at(parts)
        if step is None:
            return Where("recipe file", tuple(parts), _keys(Recipe))
        step_len, path = step
        raw = raw_at(doc.data, parts[:step_len])
        name = step_label(raw, path)
        rest = parts[step_len:]
        kind = step_kind(raw)
        keys = _keys(STEP_MODELS[kind]) if kind else tuple(sorted(_STEP_KEYS))
        if len(rest) >= 2 and rest[0] in ("set", "args"):
            what = "set" if rest[0] == "set" else "arg"
            return Where(f"{name}: {what} {rest[1]}", tuple(rest[2:]), keys)
        if rest[:1] == ["on_error"]:
            keys = _keys(OnError)
        elif rest[:1] == ["answer"]:
            keys = _keys(Answer)
        elif rest[:1] == ["wait"] and len(rest) >= 2:
            keys = _keys(Wait)
        return Where(name, tuple(rest), keys)

    return describe
