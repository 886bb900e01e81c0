"""Typed values a recipe declares: its parameters and the operator's answers to prompts."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, WithJsonSchema, field_validator, model_validator

from cellctl import expr, textvalue
from cellctl.errors import BadValue, InvalidField
from cellctl.recipe.fields import Model, Name, Number
from cellctl.yamlload import plain
from drivers.base import Value
from drivers.points import DataType

__all__ = ["Answer", "Parameter", "ParameterType", "Typed"]

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


class Typed(Model):
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
    def _enum_has_choices(self) -> Typed:
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


class Parameter(Typed):
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
            return Typed.model_construct(**data).check_value(value)
        except BadValue as err:
            raise InvalidField(str(err), "bad-default") from None


class Answer(Typed):
    """The operator's typed answer to a prompt, bound to `name` for later expressions."""

    name: Name
