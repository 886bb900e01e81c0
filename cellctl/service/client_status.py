"""The service's status as the remote CLI reads it: the status variables' values (by browse
name) parsed into a ServiceStatus."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cellctl.service.api import Prompt, ServiceStatus


def parse_prompt(text: str) -> Prompt | None:
    """The prompt of a `Prompt` variable's text ('STEP_ID: text (wants)'); None for ''."""
    if not text:
        return None
    step_id, sep, rest = text.partition(": ")
    if not sep:
        return Prompt(step_id="", text=text, wants="")
    body, paren, wants = rest.rpartition(" (")
    if paren and wants.endswith(")"):
        return Prompt(step_id=step_id, text=body, wants=wants[:-1])
    return Prompt(step_id=step_id, text=rest, wants="")


def text_of(value: Any) -> str:
    """A variable's value as text ('' for none)."""
    return "" if value is None else str(value)


def _texts(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value or ())


def _number(value: Any) -> int:
    return int(value) if isinstance(value, int | float) else 0


def _pairs(value: Any) -> dict[str, str]:
    """NAME=VALUE texts as a mapping (a text without '=' is a name with an empty value)."""
    pairs: dict[str, str] = {}
    for item in _texts(value):
        name, _, text = item.partition("=")
        pairs[name] = text
    return pairs


def status_from(values: Mapping[str, Any]) -> ServiceStatus:
    """The status snapshot from the status variables' values, by browse name."""
    return ServiceStatus(
        cell=text_of(values.get("Cell")),
        state=text_of(values.get("State")),
        mode=text_of(values.get("Mode")),
        legal=_texts(values.get("LegalCommands")),
        security=text_of(values.get("Security")),
        batch=text_of(values.get("BatchId")),
        recipe=text_of(values.get("Recipe")),
        recipe_version=_number(values.get("RecipeVersion")),
        recipe_sha256=text_of(values.get("RecipeSha256")),
        parameters=_pairs(values.get("Parameters")),
        step=text_of(values.get("CurrentStep")),
        produced=_number(values.get("Produced")),
        rejected=_number(values.get("Rejected")),
        stop_reason=text_of(values.get("StopReason")),
        trips=_texts(values.get("ActiveTrips")),
        prompt=parse_prompt(text_of(values.get("Prompt"))),
        paused=text_of(values.get("Paused")),
        breakpoints=_texts(values.get("Breakpoints")),
        forced=_pairs(values.get("Forced")),
        recipes=_texts(values.get("Recipes")),
    )
