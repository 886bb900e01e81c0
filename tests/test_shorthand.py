"""A field given as a mapping or, for short, as its one required key's value alone."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from cellctl.shorthand import Shorthand


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    speed: int = 1


class _Owner(BaseModel):
    spec: Annotated[
        _Spec,
        Shorthand("model", short={"type": "string"}, properties={"model": {"type": "string"}}),
    ]
    doubled: (
        Annotated[
            _Spec, Shorthand("model", short={}, properties={}, expand=lambda v: {"model": v * 2})
        ]
        | None
    ) = None


def test_a_text_stands_for_the_mapping_of_its_key() -> None:
    assert _Owner.model_validate({"spec": "belt"}).spec == _Spec(model="belt")
    assert _Owner.model_validate({"spec": {"model": "belt", "speed": 3}}).spec.speed == 3
    with pytest.raises(ValidationError, match="speed"):
        _Owner.model_validate({"spec": {"model": "belt", "speed": "fast", "x": 1}})


def test_an_own_expansion_replaces_the_text_rule() -> None:
    assert _Owner.model_validate({"spec": "a", "doubled": "ab"}).doubled == _Spec(model="abab")


def test_the_schema_takes_the_short_form_or_the_mapping() -> None:
    schema = _Owner.model_json_schema()["properties"]["spec"]
    assert schema == {
        "anyOf": [
            {"type": "string"},
            {
                "type": "object",
                "properties": {"model": {"type": "string"}},
                "required": ["model"],
                "additionalProperties": False,
            },
        ]
    }
