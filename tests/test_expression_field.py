"""An expression field of a recipe model: read from YAML values, written back as its text."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from cellctl import expr
from cellctl.recipe.fields import Expr, MaybeExpr, Model


class _Holder(Model):
    """A model with one expression field and one optional one, as recipe steps have."""

    until: Expr
    if_: MaybeExpr = None


@pytest.mark.parametrize(
    ("written", "text"),
    [("a.x > 1 and not b.y", "a.x > 1 and not b.y"), (2.5, "2.5"), (True, "true"), (7, "7")],
)
def test_an_expression_is_parsed_and_written_back_as_its_text(written: object, text: str) -> None:
    holder = _Holder.model_validate({"until": written})
    assert isinstance(holder.until, expr.Expression)
    assert str(holder.until) == text
    assert holder.model_dump() == {"until": text, "if_": None}
    assert json.loads(holder.model_dump_json()) == {"until": text, "if_": None}


def test_a_bad_expression_or_an_empty_optional_one_is_refused() -> None:
    with pytest.raises(ValidationError, match="expected an expression, got a list"):
        _Holder.model_validate({"until": [1]})
    with pytest.raises(ValidationError, match="no expression given"):
        _Holder.model_validate({"until": "a.x", "if_": None})


def test_the_json_schema_of_an_expression_is_text_number_or_boolean() -> None:
    schema = _Holder.model_json_schema()
    assert schema["properties"]["until"]["type"] == ["string", "number", "boolean"]
