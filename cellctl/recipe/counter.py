"""The check of a recipe's parts counter (`parts: {counter: TAG}`) against its cell: a tag of
the cell, of an integer type, unscaled (parts made are the difference of two raw counts, taken
modulo the type's range when the counter wrapped)."""

from __future__ import annotations

from typing import Any

from cellctl.cell import INTEGER_TYPES
from cellctl.errors import did_you_mean
from cellctl.recipe.checkvalues import ValueChecks

__all__ = ["check_parts_counter"]


def check_parts_counter(c: ValueChecks, data: dict[Any, Any]) -> None:
    """Report a parts counter that is no tag of the cell, not an integer tag, or scaled."""
    parts = data.get("parts")
    name = parts.get("counter") if isinstance(parts, dict) else None
    if c.cell is None or not isinstance(name, str):
        return  # no cell to check against; a counter of the wrong shape: the model pass's
    loc = ("parts", "counter")
    subject = f"parts: counter {name}"
    tag = c.cell.tags.get(name)
    if tag is None:
        c.add(loc, "unknown-tag", f"{subject}: unknown tag {name!r}{did_you_mean(name, c.tags)}")
        return
    datatype = tag.datatype
    if datatype not in INTEGER_TYPES:
        c.add(
            loc,
            "type-mismatch",
            f"{subject}: a parts counter is an integer tag the devices count up once per part "
            f"(such as uint16 or uint32), not {datatype.value}",
        )
    elif tag.scaled:
        c.add(
            loc,
            "type-mismatch",
            f"{subject}: a parts counter counts raw parts: the tag has a scale or offset; "
            "name an unscaled tag",
        )
