"""The recipe's field types: names, durations, numbers and expressions read from YAML.

The literal rule: every value in a recipe that is not a name, a duration or a text for the
operator is an *expression*. A YAML number or true/false is the constant it shows; a YAML text
is parsed as an expression, so a fixed text is written in quotes *inside* it (`"'LOT-42'"`).
"""

from __future__ import annotations

import datetime
import math
from typing import Annotated

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    GetPydanticSchema,
    PlainValidator,
    WithJsonSchema,
)
from pydantic_core import core_schema

from cellctl import expr
from cellctl.durations import Duration
from cellctl.errors import InvalidField
from cellctl.expr import names
from cellctl.yamlload import plain

__all__ = [
    "Expr",
    "ExpressionField",
    "MaybeDelay",
    "MaybeExpr",
    "MaybeName",
    "MaybeTimeout",
    "Model",
    "Name",
    "NonNegativeDuration",
    "Number",
    "PositiveDuration",
    "RecipeName",
    "StepId",
    "expression_given",
    "given",
    "model_keys",
    "to_expression",
]


class Model(BaseModel):
    """A part of a recipe: unknown keys are refused and a loaded recipe never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def model_keys(model: type[BaseModel]) -> tuple[str, ...]:
    """The keys a model takes as written in YAML (aliases, such as `if`, included)."""
    return tuple(info.alias or name for name, info in model.model_fields.items())


StepId = Annotated[str, AfterValidator(names.label("step id"))]
RecipeName = Annotated[str, AfterValidator(names.label("recipe name"))]
#: A parameter or bound name: one word usable in expressions.
Name = Annotated[str, AfterValidator(names.expression_name("parameter or bound", names.WORD))]
PositiveDuration = Annotated[Duration, Field(gt=0)]
NonNegativeDuration = Annotated[Duration, Field(ge=0)]


def given(what: str, code: str) -> BeforeValidator:
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
MaybeTimeout = Annotated[PositiveDuration | None, given("duration", "bad-duration")]
MaybeDelay = Annotated[NonNegativeDuration | None, given("duration", "bad-duration")]
MaybeName = Annotated[Name | None, given("name", "bad-name")]


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


#: How pydantic validates and writes an expression field: parsed by to_expression, written as
#: its text. The very schema PlainValidator(to_expression) + PlainSerializer(str) give, stated
#: here: those would also derive one from expr.Expression's node dataclasses for every model
#: with an expression field, only to discard it (half the time the recipe models took to build).
_EXPRESSION_SCHEMA = core_schema.no_info_plain_validator_function(
    to_expression,
    serialization=core_schema.plain_serializer_function_ser_schema(
        str, info_arg=False, return_schema=core_schema.str_schema()
    ),
    json_schema_input_schema=core_schema.any_schema(),
)

#: An expression field: written as text (or a YAML number / true / false), held parsed.
Expr = Annotated[
    expr.Expression,
    GetPydanticSchema(lambda _source, _handler: _EXPRESSION_SCHEMA),
    WithJsonSchema({"type": ["string", "number", "boolean"]}),
]


def expression_given(value: object) -> object:
    """An optional expression written empty is refused (absent is fine)."""
    if value is None:
        to_expression(value)  # raises: no expression given
    return value


#: An optional expression (`if`, a set's `wait`): absent is None, written empty is an error.
MaybeExpr = Annotated[Expr | None, BeforeValidator(expression_given)]


def _number(value: object) -> int | float:
    value = plain(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidField(f"expected a number, got {value!r}", "bad-value")
    return value


Number = Annotated[int | float, PlainValidator(_number), WithJsonSchema({"type": "number"})]
