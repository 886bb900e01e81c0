"""Problems of a recipe file located the recipe's way: pydantic's and the YAML loader's errors
naming the step (by id, else by path), the parameter or the key at fault, at its line."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

from cellctl.errors import Problem, Subject, SubjectKind
from cellctl.recipe.fields import ExpressionField, model_keys
from cellctl.recipe.model import Defaults, Recipe
from cellctl.recipe.steps import STEP_KEYS, STEP_MODELS, OnError, StepKindError, step_kind
from cellctl.recipe.typed import Parameter
from cellctl.yamlload import (
    DuplicateKey,
    Where,
    YamlDocument,
    scalar_offset,
    validation_problems,
)

__all__ = [
    "model_problems",
    "raw_at",
    "step_label",
    "subject_in",
    "under_alias",
    "yaml_problems",
]

#: A path into the recipe's data: pydantic's loc (union tags included) or a raw one.
Loc = Sequence[str | int]

_TAGS = {model.__name__ for model in STEP_MODELS.values()}


def yaml_problems(doc: YamlDocument) -> list[Problem]:
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
            prefix, what = describe(alias.loc).prefix, "the value"
        message = f"{prefix}aliases (*{alias.name}) are not allowed in a recipe: write {what} out"
        problems.append(Problem(doc.file, alias.line, alias.col, "alias", message))
    return problems


def _duplicate_problem(dup: DuplicateKey, describe: Callable[[Loc], Where]) -> Problem:
    where = describe(dup.loc)
    if where.name == "recipe file":  # the loader's own words name the section already
        return dup.problem
    message = f"{where.prefix}duplicate key {dup.key!r} (first at line {dup.first_line})"
    return replace(dup.problem, message=message)


def under_alias(doc: YamlDocument, loc: Sequence[str | int]) -> bool:
    """True when `loc` (pydantic's, or a raw path) is inside an alias: its problems are the
    anchor's, reported there; the alias itself is refused."""
    parts = [str(part) for part in loc if part not in _TAGS]
    return any(
        [str(part) for part in alias.loc] == parts[: len(alias.loc)] for alias in doc.aliases
    )


def model_problems(doc: YamlDocument, error: ValidationError) -> list[Problem]:
    """pydantic's errors as located problems naming the step, parameter or key at fault."""
    describe = _describer(doc)
    problems = validation_problems(doc, error, describe)
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
            problem = replace(problem, message=_too_short(describe(loc).prefix, details))
        located.append(problem)
    return located


_ITEM_WORDS = {key: words for model in STEP_MODELS.values() for key, words in model.WORDS.items()}
_ITEM_WORDS["choices"] = ("choice", "choices")
_NUMBER_WORDS = {1: "one", 2: "two"}


def _too_short(prefix: str, details: ErrorDetails) -> str:
    """'needs at least two branches' for pydantic's 'list should have at least 2 items …',
    after `prefix` (where the list is)."""
    least = int((details.get("ctx") or {}).get("min_length", 1))
    one, many = _ITEM_WORDS.get(str(details["loc"][-1]), ("step", "steps"))
    count = _NUMBER_WORDS.get(least, str(least))
    return f"{prefix}needs at least {count} {one if least == 1 else many}"


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
    ident = _step_id(raw)
    return f"step {ident!r}" if ident is not None else f"step #{path}"


def _step_id(raw: object) -> str | None:
    ident = raw.get("id") if isinstance(raw, dict) else None
    return str(ident) if isinstance(ident, str) and ident else None


def subject_in(doc: YamlDocument) -> Callable[[Loc], Subject | None]:
    """What a path into the recipe `doc` is inside: a parameter, or the innermost step that
    has an id (a step without one is named by its path only in messages)."""

    def subject_at(loc: Loc) -> Subject | None:
        parts = [part for part in loc if part not in _TAGS]
        if parts[:1] == ["parameters"] and len(parts) >= 2:
            return Subject(SubjectKind.PARAMETER, str(parts[1]))
        step = _step_at(parts)
        ident = _step_id(raw_at(doc.data, parts[: step[0]])) if step is not None else None
        return Subject(SubjectKind.STEP, ident) if ident is not None else None

    return subject_at


#: The keys that hold nested steps, each with True when it is a list of branches.
_NESTS = {key: branches for model in STEP_MODELS.values() for key, branches in model.NESTS}


def _step_at(parts: Sequence[str | int]) -> tuple[int, str] | None:
    """How many parts of a path (union tags removed) lead to the innermost step it reaches,
    and that step's path ('2.1'); None when the path is not inside `steps`."""
    if len(parts) < 2 or parts[0] != "steps" or not isinstance(parts[1], int):
        return None
    step_len, path = 2, str(parts[1] + 1)
    while True:
        rest = parts[step_len:]
        branches = _NESTS.get(str(rest[0])) if rest else None
        numbers = rest[1 : 3 if branches else 2]
        if branches is None or len(numbers) < (2 if branches else 1):
            return step_len, path
        if not all(isinstance(number, int) for number in numbers):
            return step_len, path
        step_len += 1 + len(numbers)
        path += "".join(f".{int(number) + 1}" for number in numbers)


def _describer(doc: YamlDocument) -> Callable[[Loc], Where]:
    def describe(loc: Loc) -> Where:
        parts = [part for part in loc if part not in _TAGS]
        if parts[:1] == ["parameters"] and len(parts) >= 2:
            return Where(f"parameter {parts[1]}", tuple(parts[2:]), model_keys(Parameter))
        if parts[:1] == ["defaults"]:
            return Where("defaults", tuple(parts[1:]), model_keys(Defaults))
        step = _step_at(parts)
        if step is None:
            return Where("recipe file", tuple(parts), model_keys(Recipe))
        step_len, path = step
        raw = raw_at(doc.data, parts[:step_len])
        name = step_label(raw, path)
        rest = parts[step_len:]
        kind = step_kind(raw)
        model = STEP_MODELS[kind] if kind else None
        keys = model_keys(model) if model else tuple(sorted(STEP_KEYS))
        item = model.ITEMS.get(str(rest[0])) if model and rest else None
        if len(rest) >= 2 and item is not None:
            return Where(f"{name}: {item} {rest[1]}", tuple(rest[2:]), keys)
        part = model.PARTS.get(str(rest[0])) if model and len(rest) >= 2 else None
        if rest[:1] == ["on_error"]:
            keys = model_keys(OnError)
        elif part is not None:
            keys = model_keys(part)
        return Where(name, tuple(rest), keys)

    return describe
