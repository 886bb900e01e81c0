"""Checks of a recipe against its cell file: tags, methods, types, ranges, expressions, ids, names.

The checks walk the raw YAML data and validate each step on its own, so a broken step hides
nothing but itself: the steps around it, and the steps nested in a broken block, are still
checked. Every problem is located at the key or value at fault and names the step. What each
step kind checks is in its module (cellctl.recipe.steps); this is what they share.

Ranges are checked on constants and parameters: a value computed from them is bounded by
interval arithmetic over the min and max of parameters, answers and repeat indexes, and both
ends must fit the tag (its type's raw range after scale/offset, its min/max). A value that
reads a tag or a call result is checked at run time, before it is sent.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cellctl import expr
from cellctl.cell import INTEGER_TYPES, Cell
from cellctl.errors import Problem
from cellctl.recipe.checkvalues import ValueChecks
from cellctl.recipe.counter import check_parts_counter
from cellctl.recipe.located import step_label
from cellctl.recipe.model import iter_steps
from cellctl.recipe.ranges import (
    ANY,
    Block,
    Loc,
    Scope,
    Span,
)
from cellctl.recipe.steps import STEP_MODELS, AnyStep, Step
from cellctl.recipe.steps.base import raw_items
from cellctl.recipe.typed import Parameter
from cellctl.yamlload import YamlDocument

__all__ = ["check_rules"]

_STEP: TypeAdapter[AnyStep] = TypeAdapter(Step)
_PARAMETER = TypeAdapter(Parameter)
#: The keys that hold nested steps (each with True for a list of branches), and the key
#: paths where steps bind names, over every kind.
_NESTS = [nest for model in STEP_MODELS.values() for nest in model.NESTS]
_BINDS = [path for model in STEP_MODELS.values() for path in model.BINDS]


def check_rules(doc: YamlDocument, data: dict[Any, Any], cell: Cell | None) -> list[Problem]:
    """Every problem of a recipe against its cell, located in the recipe file.

    With no cell (its file is broken), only what does not need one: ids, bound names, where
    names are bound, timeouts, retries, parallel branches; no tag, method, type or range.
    """
    return _Checker(doc, data, cell).run()


def _nested(item: dict[Any, Any], loc: Loc, path: str) -> Iterator[tuple[Loc, Any, str]]:
    """The raw blocks nested in a raw step: (loc, list of steps, path prefix)."""
    for key, branches in _NESTS:
        if not branches and isinstance(item.get(key), list):
            yield (*loc, key), item[key], f"{path}."
        elif branches:
            for index, branch, prefix in raw_items(item.get(key), f"{path}."):
                yield (*loc, key, index), branch, f"{prefix}."


def _bound_names(item: dict[Any, Any]) -> Iterator[tuple[tuple[str, ...], str]]:
    """The names a raw step binds, each with its key path."""
    for keys in _BINDS:
        node: Any = item
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, str):
            yield keys, node


class _Checker(ValueChecks):
    """Walks a recipe's raw steps; the CheckContext the step kinds check themselves through."""

    def __init__(self, doc: YamlDocument, data: dict[Any, Any], cell: Cell | None) -> None:
        super().__init__(doc, data, cell)
        raw_parameters = data.get("parameters")
        raw_parameters = raw_parameters if isinstance(raw_parameters, dict) else {}
        self.parameter_names = {str(name) for name in raw_parameters}
        self.parameters: dict[str, Parameter] = {}
        for name, raw in raw_parameters.items():
            try:
                self.parameters[str(name)] = _PARAMETER.validate_python(raw)
            except ValidationError:
                continue  # reported by the model pass
        #: What a name with a known range is (for messages), and its min and max.
        self.ranges.update(
            (name, (f"parameter {name}", parameter.min, parameter.max))
            for name, parameter in self.parameters.items()
        )
        defaults = data.get("defaults")
        # A default timeout that is broken counts as given (its own error says what is wrong);
        # one written empty is none at all.
        self.default_timeout = isinstance(defaults, dict) and defaults.get("timeout") is not None
        self.ids: dict[str, int] = {}
        # The choices of each enum parameter or answer: a literal compared with one is checked.
        self.choices.update(
            (name, parameter.choices)
            for name, parameter in self.parameters.items()
            if parameter.choices is not None
        )
        self.bound: dict[str, tuple[str, int]] = {}
        self._collect_bindings(data.get("steps"), ("steps",), "")

    def _collect_bindings(self, raw: object, loc: Loc, prefix: str) -> None:
        """Every name some step binds, where: to explain a name used where it is not bound."""
        for index, item, path in raw_items(raw, prefix):
            if not isinstance(item, dict):
                continue
            step_loc = (*loc, index)
            for keys, name in _bound_names(item):
                line = self.line((*step_loc, keys[0]))
                self.bindable.setdefault(name, (step_label(item, path), line))
            for child_loc, child, child_prefix in _nested(item, step_loc, path):
                self._collect_bindings(child, child_loc, child_prefix)

    # -- the walk -------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        """Check every step with the cell's tags and the parameters in scope."""
        scope = Scope({}, {})
        for name, tag in self.tags.items():
            datatype = tag.datatype
            whole = datatype in INTEGER_TYPES and not tag.scaled
            scope.add(name, expr.kind_of(datatype), Span(-math.inf, math.inf, whole, known=False))
        for name in self.parameter_names:
            parameter = self.parameters.get(name)
            if name in self.tags:
                self.add(
                    ("parameters", name),
                    "duplicate-name",
                    f"parameter {name}: a tag of the cell has the same name",
                    key=True,
                )
            if parameter is None:
                scope.add(name, None, ANY)
            else:
                span = Span.of(parameter.min, parameter.max, parameter.type == "int")
                scope.add(name, parameter.kind, span)
        self.block(self.data.get("steps"), ("steps",), "", scope)
        check_parts_counter(self, self.data)
        return self.problems

    def block(self, raw: object, loc: Loc, prefix: str, scope: Scope) -> Block:
        """Check a list of steps in order; names bound by a step are in scope after it."""
        result = Block()
        for index, item, path in raw_items(raw, prefix):
            step_loc = (*loc, index)
            self.check_id(item, step_loc)
            try:
                step = _STEP.validate_python(item)
            except ValidationError:
                self.recover(item, step_loc, path, scope.copy())  # reported by the model pass
                continue
            done = self.step(step, step_loc, path, scope)
            for tag, write in done.writes.items():
                result.writes.setdefault(tag, write)
            if not step.may_skip:
                for name, (kind, span) in done.exports.items():
                    scope.add(name, kind, span)
                    result.exports[name] = (kind, span)
        return result

    def recover(self, item: object, loc: Loc, path: str, scope: Scope) -> None:
        """Check the blocks nested in a step that failed its own validation."""
        if not isinstance(item, dict):
            return
        for _, name in _bound_names(item):
            scope.add(name, None, ANY)  # known, of unknown kind: not reported again
        for child_loc, child, prefix in _nested(item, loc, path):
            self.block(child, child_loc, prefix, scope.copy())

    def check_id(self, item: object, loc: Loc) -> None:
        """A step id is used once in the whole recipe."""
        ident = item.get("id") if isinstance(item, dict) else None
        if not isinstance(ident, str):
            return
        first = self.ids.get(ident)
        if first is not None:
            self.add(
                (*loc, "id"),
                "duplicate-id",
                f"step {ident!r}: id used twice (first at line {first})",
            )
        else:
            self.ids[ident] = self.line((*loc, "id"))

    def step(self, step: AnyStep, loc: Loc, path: str, scope: Scope) -> Block:
        """One step: its `if`, what its kind checks, its on_error retry."""
        label = step.label(path)
        done = Block()
        if step.if_ is not None:
            self.condition(step.if_, (*loc, "if"), f"{label}: if", scope)
        step.check(self, loc, path, label, scope, done)
        if step.on_error is not None and step.on_error.action == "retry":
            self.check_retry(step, loc, label)
        return done

    # -- what the step kinds ask ----------------------------------------------------------

    def bind(self, name: str, loc: Loc, label: str) -> bool:
        """Register a bound name; False (and a problem) when it collides with another name."""
        clash: str | None = None
        if name in self.tags:
            clash = "a tag of the cell"
        elif name in self.parameter_names:
            clash = "a parameter"
        elif name in self.bound:
            other, line = self.bound[name]
            clash = f"already bound by {other} (line {line})"
        if clash is not None:
            self.add(loc, "duplicate-name", f"{label}: name {name!r} is {clash}")
            return False
        self.bound[name] = (label, self.line(loc))
        return True

    def note_range(self, name: str, what: str, low: float | None, high: float | None) -> None:
        """A bound name's range, for messages about values computed from it."""
        self.ranges[name] = (what, low, high)

    def note_choices(self, name: str, choices: list[str]) -> None:
        """A bound name's choices: a text compared with it must be one of them."""
        self.choices[name] = choices

    def need_timeout(self, timeout: float | None, loc: Loc, what: str, label: str) -> None:
        """Report a wait or call (`what`, also its key) bounded by no timeout at all."""
        if timeout is None and not self.default_timeout:
            self.add(
                (*loc, what),
                "missing-timeout",
                f"{label}: a {what} needs a timeout (give 'timeout' on the step, or a default "
                "in 'defaults: {timeout: ...}')",
                key=True,
            )

    def check_retry(self, step: AnyStep, loc: Loc, label: str) -> None:
        """Retry only where repeating is harmless: idempotent writes, no calls.

        A step alone is judged by its own marks (SetStep.idempotent_writes). A retried block
        (repeat, parallel) runs again from its start, after its steps have written: a value in
        it that reads any tag written anywhere in the block may read the block's own result,
        so it is not idempotent there.
        """
        inner_steps = [inner for inner, _ in iter_steps([step])]
        written = {tag for inner in inner_steps for tag in inner.written()}
        for inner in inner_steps:
            culprit = inner.retry_culprit(None if inner is step else written)
            if culprit is not None:
                where = f" in step {inner.id!r}" if inner is not step else ""
                self.add(
                    (*loc, "on_error"),
                    "retry-not-idempotent",
                    f"{label}: on_error retry would repeat {culprit}{where}; use hold, abort "
                    "or skip",
                )
                return
