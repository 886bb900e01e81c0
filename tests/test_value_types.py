"""Reading and TagValue write their __init__ out for speed: it must stay the dataclass's."""

from __future__ import annotations

import dataclasses
import inspect
import math
import pickle
from typing import Any

import pytest

from cellctl.values import TagValue
from drivers.base import Quality, Reading, Value
from drivers.codecs import same_value


@pytest.mark.parametrize("cls", [Reading, TagValue])
def test_init_takes_the_fields_in_order_with_their_defaults(cls: type[Any]) -> None:
    fields = dataclasses.fields(cls)
    parameters = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in parameters] == [f.name for f in fields]
    for parameter, field in zip(parameters, fields, strict=True):
        assert parameter.default == (
            inspect.Parameter.empty if field.default is dataclasses.MISSING else field.default
        )


@pytest.mark.parametrize(
    "value",
    [
        Reading(1.5, 2.0, Quality.UNCERTAIN, "why", 3.0),
        TagValue("press.force", "press", 1.5, Quality.BAD, 2.0, "why", 3.0),
    ],
)
def test_a_value_behaves_as_a_frozen_dataclass(value: Reading | TagValue) -> None:
    as_dict = dataclasses.asdict(value)
    assert list(as_dict) == [f.name for f in dataclasses.fields(value)]
    again = type(value)(**as_dict)
    assert again == value and hash(again) == hash(value)
    assert pickle.loads(pickle.dumps(value)) == value
    assert dataclasses.replace(value, value=7).value == 7
    assert dataclasses.replace(value, value=7) != value
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.value = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (math.nan, math.nan, True),  # re-reading NaN is not a change
        (math.nan, 1.0, False),
        (1.0, math.nan, False),
        (0.0, -0.0, True),
        (1, 1.0, False),  # a change of type is a change
        (True, 1, False),
        (True, True, True),
        (False, True, False),
        ("a", "a", True),
        (None, None, True),
        (None, 0, False),
        (3, 4, False),
    ],
)
def test_same_value(a: Value | None, b: Value | None, same: bool) -> None:
    assert same_value(a, b) is same
