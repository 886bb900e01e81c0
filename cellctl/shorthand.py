"""Fields written as a mapping or, for short, as its one required key's value alone: a cell
file's `sim: conveyor` is `sim: {model: conveyor}`, a step's `on_error: skip` is
`on_error: {action: skip}`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

__all__ = ["Shorthand"]


# Compared and hashed by identity: typing hashes a field's metadata (`Sim | None`), and the
# schemas held here are dicts.
@dataclass(frozen=True, eq=False)
class Shorthand:
    """Field metadata (`Annotated[Model, Shorthand(...)]`): a value that is not a mapping
    stands for `{key: value}`; the JSON Schema takes the short form or the mapping."""

    #: The mapping's required key that the short form gives.
    key: str
    #: The JSON Schema of the short form.
    short: JsonSchemaValue
    #: The JSON Schema of each key of the mapping.
    properties: JsonSchemaValue
    #: How a short value becomes the mapping, when not a text as `{key: text}`.
    expand: Callable[[object], object] | None = None

    def _expand(self, value: object) -> object:
        if self.expand is not None:
            return self.expand(value)
        return {self.key: value} if isinstance(value, str) else value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        """The model's own validation, after the short form is expanded."""
        return core_schema.no_info_before_validator_function(self._expand, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        """The short form or the mapping, for editors."""
        mapping = {
            "type": "object",
            "properties": self.properties,
            "required": [self.key],
            "additionalProperties": False,
        }
        return {"anyOf": [self.short, mapping]}
