"""pydantic's validation errors as problems located in the YAML document that was validated."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cellctl.errors import InvalidField, Problem, did_you_mean
from cellctl.yamldoc import YamlDocument

__all__ = ["Describe", "Where", "validation_problems"]


@dataclass(frozen=True)
class Where:
    """What a pydantic error's loc points at: the thing's name, the field path, the allowed keys."""

    name: str
    fields: tuple[str | int, ...] = ()
    keys: tuple[str, ...] = ()

    @property
    def prefix(self) -> str:
        """What a message about this place starts with: "step 'a': " or "step 'a': on_error: "."""
        fields = ".".join(str(part) for part in self.fields)
        return f"{self.name}: {fields}: " if fields else f"{self.name}: "


Describe = Callable[[tuple[str | int, ...]], Where]


def validation_problems(
    doc: YamlDocument, error: ValidationError, describe: Describe
) -> list[Problem]:
    """Translate pydantic errors into located problems.

    `describe(loc)` names the thing at fault ("device conveyor"), the field path inside it and
    the keys allowed there (for "did you mean" hints).
    """
    return [_translate(doc, details, describe) for details in error.errors()]


def _translate(doc: YamlDocument, details: ErrorDetails, describe: Describe) -> Problem:
    loc = tuple(details["loc"])
    kind = details["type"]
    ctx = details.get("ctx") or {}
    if loc and loc[-1] == "[key]":
        message = f"{describe(loc[:-1]).name}: {_message(details)}"
        return doc.problem(loc[:-1], _code(details), message, key=True)
    where = describe(loc)
    if kind == "missing":
        return doc.problem(loc[:-1], "missing", f"{where.name}: missing required key {loc[-1]!r}")
    if kind == "extra_forbidden":
        hint = did_you_mean(str(loc[-1]), where.keys)
        return doc.problem(
            loc, "unknown-key", f"{where.name}: unknown key {loc[-1]!r}{hint}", key=True
        )
    if kind == "union_tag_invalid":
        discriminator = str(ctx.get("discriminator", "")).strip("'")
        expected = str(ctx.get("expected_tags", "")).replace("'", "")
        message = (
            f"{where.name}: unknown {discriminator} {ctx.get('tag')!r} (expected one of {expected})"
        )
        return doc.problem((*loc, discriminator), "unknown-" + discriminator, message)
    if kind == "union_tag_not_found" and isinstance(details["input"], dict):
        discriminator = str(ctx.get("discriminator", "")).strip("'")
        return doc.problem(loc, "missing", f"{where.name}: missing required key {discriminator!r}")
    return doc.problem(loc, _code(details), where.prefix + _message(details))


def _code(details: ErrorDetails) -> str:
    """The problem code: an InvalidField's own code, else pydantic's error type."""
    error = (details.get("ctx") or {}).get("error")
    return error.code if isinstance(error, InvalidField) else details["type"]


def _message(details: ErrorDetails) -> str:
    kind = details["type"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping, got {_describe(details['input'])}"
    if kind == "list_type":
        return f"expected a list, got {_describe(details['input'])}"
    message = details["msg"]
    if kind in ("value_error", "assertion_error"):
        # The validator's own error, not pydantic's text around it ("Value error, ...").
        error = (details.get("ctx") or {}).get("error")
        return str(error) if error is not None else message
    message = f"{message[:1].lower()}{message[1:]}"
    if isinstance(details["input"], dict | list):
        return message
    return f"{message}, got {_describe(details['input'])}"


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing"
    text = repr(str(value)) if isinstance(value, str) else str(value)
    return text if len(text) <= 40 else text[:37] + "..."
