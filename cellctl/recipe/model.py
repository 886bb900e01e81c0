"""The recipe file's model: name, version, parameters, defaults and steps; its identity."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BeforeValidator, Field

from cellctl.cell import Cell, TagName
from cellctl.errors import BadValue, InvalidField, did_you_mean
from cellctl.recipe.fields import MaybeTimeout, Model, Name, RecipeName, given
from cellctl.recipe.steps import AnyStep, Step, StepBase
from cellctl.recipe.typed import Parameter
from cellctl.yamlload import YamlDocument
from drivers.base import Value

__all__ = [
    "Defaults",
    "LoadedRecipe",
    "PartsCounter",
    "Recipe",
    "RecipeIdentity",
    "iter_steps",
    "parse_parameters",
    "step_ids",
]


class Defaults(Model):
    """Values for the steps that do not give their own: `timeout` bounds waits and calls.

    A prompt waits for the operator, not for a machine: the default timeout does not apply.
    """

    timeout: MaybeTimeout = None


class PartsCounter(Model):
    """How a batch counts the parts it made: `counter` is an integer tag of the cell that the
    devices count up once per part (a press's cycle counter, a conveyor's parts delivered).
    Parts made = its value at the end - its value at the start, modulo its type's range."""

    counter: TagName


def _counter_shape(value: object) -> object:
    """A tag name written alone (`parts: press.cycles`) is told how to write it."""
    if isinstance(value, str):
        raise InvalidField(
            f"the counter is written as a mapping: parts: {{counter: {value}}}", "bad-value"
        )
    return value


class Recipe(Model):
    """A recipe file: name, version, parameters, defaults, steps and its parts counter."""

    recipe: RecipeName
    version: Annotated[int, Field(strict=True, ge=1)]
    description: str | None = None
    # A pydantic field (copied per instance), not a shared class attribute.
    parameters: dict[Name, Parameter] = {}  # noqa: RUF012
    defaults: Defaults = Defaults()
    #: `parts: {counter: TAG}`: the batch's parts made, read from that tag (None: not counted).
    parts: Annotated[
        PartsCounter | None,
        BeforeValidator(_counter_shape),
        given("parts counter", "bad-value"),
    ] = None
    steps: list[Step] = Field(min_length=1)

    def timeout_of(self, step: StepBase) -> float | None:
        """Seconds the step may take at most: its own timeout, else the default for a wait or
        a call; None when unbounded (a prompt, a set without wait, a delay or a block).
        """
        own = getattr(step, "timeout", None)
        if own is not None:
            return float(own)
        return self.defaults.timeout if step.uses_default_timeout else None


def iter_steps(steps: Sequence[StepBase], prefix: str = "") -> Iterator[tuple[AnyStep, str]]:
    """Every step depth-first, blocks before their bodies, with its path.

    Paths count from 1: '3' is the third top-level step, '3.2' the second step of its repeat
    body, '4.1.2' the second step of the first branch of a parallel step 4.
    """
    for number, step in enumerate(steps, 1):
        path = f"{prefix}{number}"
        yield step, path  # type: ignore[misc]  # every step in a recipe is one of AnyStep
        for block, part in step.blocks():
            yield from iter_steps(block, f"{path}.{part}")


def step_ids(recipe: Recipe) -> dict[str, AnyStep]:
    """The steps that have an id, by id."""
    return {step.id: step for step, _ in iter_steps(recipe.steps) if step.id}


@dataclass(frozen=True)
class RecipeIdentity:
    """What a batch record names: the recipe's name, version and the SHA-256 of its bytes."""

    name: str
    version: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.name} v{self.version} sha256:{self.sha256[:8]}…"


@dataclass
class LoadedRecipe:
    """A recipe validated against its cell, with its identity and its parsed document (for
    locating problems found later, such as a bad `-p` value)."""

    path: Path
    recipe: Recipe
    cell: Cell
    identity: RecipeIdentity
    document: YamlDocument | None = None


def parse_parameters(recipe: Recipe, assignments: Sequence[str]) -> dict[str, Value]:
    """Every parameter's value: "name=value" texts parsed by type and checked, defaults filled.

    Raises BadValue naming the parameter (unknown, given twice, bad value, no value at all).
    """
    given: dict[str, Value] = {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadValue(f"parameter {assignment!r}: write name=value")
        parameter = recipe.parameters.get(name)
        if parameter is None:
            known = ", ".join(recipe.parameters) or "none"
            raise BadValue(
                f"unknown parameter {name!r}{did_you_mean(name, recipe.parameters)} "
                f"(recipe {recipe.recipe} has: {known})"
            )
        if name in given:
            raise BadValue(f"parameter {name} is given twice", parameter=name)
        try:
            given[name] = parameter.parse_text(text)
        except BadValue as err:
            raise BadValue(f"parameter {name}: {err}", parameter=name) from None
    values: dict[str, Value] = {}
    for name, parameter in recipe.parameters.items():
        if name in given:
            values[name] = given[name]
        elif parameter.default is not None:
            values[name] = parameter.default
        else:
            raise BadValue(
                f"parameter {name} has no default: give it with -p {name}=VALUE "
                f"({parameter.describe_range()})",
                parameter=name,
            )
    return values
