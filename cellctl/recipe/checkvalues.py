"""The value checks of a recipe against its cell: names, types, enum choices and ranges of
every expression, for the checker (cellctl.recipe.check) and the step kinds it runs."""

from __future__ import annotations

import math
from typing import Any

from cellctl import expr, yamlload
from cellctl.cell import Cell
from cellctl.errors import BadValue, did_you_mean
from cellctl.problems import Problems
from cellctl.recipe.located import raw_at, under_alias
from cellctl.recipe.ranges import (
    KIND_WORDS,
    TEXT_HINT,
    Loc,
    Scope,
    Span,
    Target,
    show_number,
    whole_value,
)
from cellctl.yamlload import YamlDocument, scalar_offset

__all__ = ["ValueChecks"]


class ValueChecks(Problems):
    """Problems of expressions, located in the recipe file; what names are in play."""

    def __init__(self, doc: YamlDocument, data: dict[Any, Any], cell: Cell | None) -> None:
        super().__init__(doc)
        self.data = data
        self.cell = cell
        self.tags = cell.tags if cell is not None else {}
        #: What a name with a known range is (for messages), and its min and max.
        self.ranges: dict[str, tuple[str, float | None, float | None]] = {}
        #: The choices of each enum parameter or answer: a literal compared with one is checked.
        self.choices: dict[str, list[str]] = {}
        #: Every name some step binds: the step's label and the line.
        self.bindable: dict[str, tuple[str, int]] = {}

    # -- places ----------------------------------------------------------------------------

    def add(
        self, loc: yamlload.Loc, code: str, message: str, *, key: bool = False, col_offset: int = 0
    ) -> None:
        """Report a problem located at `loc` (at its key when `key`)."""
        if under_alias(self.doc, loc):
            return  # the anchor's own problem, reported at the anchor; the alias is refused
        super().add(loc, code, message, key=key, col_offset=col_offset)

    def line(self, loc: Loc, *, key: bool = False) -> int:
        """The line of `loc` in the recipe file."""
        return self.doc.position(loc, key=key)[0]

    def raw(self, loc: Loc) -> Any:
        """The raw YAML value at `loc`, or None."""
        return raw_at(self.data, loc)

    # -- expressions ----------------------------------------------------------------------

    def expression(
        self, value: expr.Expression, loc: Loc, subject: str, scope: Scope
    ) -> expr.Kind | None:
        """Report unknown names and type errors; the expression's kind, or None when broken."""
        raw = self.raw(loc)
        hidden = sorted(n for n in value.names if n not in scope.kinds and n in self.bindable)
        for name in hidden:
            other, line = self.bindable[name]
            self.add(
                loc,
                "not-bound",
                f"{subject}: {name!r} is not bound here: {other} (line {line}) binds it, but "
                "not surely before this step (later, in a loop body, in another branch, or "
                "in a step that may be skipped)",
                col_offset=scalar_offset(raw, max(value.text.find(name), 0)),
            )
        if self.cell is None:
            return None  # names and types are checked once the cell file is valid
        kinds = {**scope.kinds, **dict.fromkeys(hidden)} if hidden else scope.kinds
        errors = expr.check(value, kinds)
        self.add_faults(loc, subject, errors, raw)
        if errors or hidden:
            return None
        self.check_choices(value, loc, subject)
        return expr.infer(value, kinds)

    def check_choices(self, value: expr.Expression, loc: Loc, subject: str) -> None:
        """A text compared with an enum must be one of its choices: 'A21' is a typo of 'A12'."""
        for name, text_node in expr.compared_texts(value):
            choices = self.choices.get(name)
            text = text_node.value
            if choices is None or not isinstance(text, str) or text in choices:
                continue
            listed = ", ".join(repr(choice) for choice in choices)
            self.add(
                loc,
                "bad-choice",
                f"{subject}: {text!r} is not a choice of {name}{did_you_mean(text, choices)} "
                f"(one of {listed})",
                col_offset=scalar_offset(self.raw(loc), value.offset(text_node)),
            )

    def condition(self, value: expr.Expression, loc: Loc, subject: str, scope: Scope) -> None:
        """Check an expression that must be true or false."""
        kind = self.expression(value, loc, subject, scope)
        if kind is not None and kind is not expr.Kind.BOOL:
            self.add(
                loc,
                "type-mismatch",
                f"{subject}: must be a condition (true or false), but {value.text!r} is "
                f"{KIND_WORDS[kind]}",
            )

    def value(
        self, value: expr.Expression, loc: Loc, subject: str, scope: Scope, target: Target
    ) -> Span | None:
        """Check a value for its target: kind, whole numbers, range. Its span when known."""
        kind = self.expression(value, loc, subject, scope)
        if kind is None:
            return None
        if kind is not target.kind:
            hint = TEXT_HINT if target.kind is expr.Kind.STRING else ""
            self.add(
                loc,
                "type-mismatch",
                f"{subject}: {target.what} takes {KIND_WORDS[target.kind]}, but {value.text!r} is "
                f"{KIND_WORDS[kind]}{hint}",
            )
            return None
        if not value.names:
            return self.constant(value, loc, subject, target)
        if kind is not expr.Kind.NUMBER:
            return None
        span = expr.span_of(value, scope.spans)
        if span is None:
            return None
        if target.integral and not span.whole:
            self.add(
                loc,
                "not-whole",
                f"{subject}: {target.what} takes whole numbers, but {value.text!r} may not be "
                "whole (use round(...))",
            )
        if span.known:
            self.check_span(value, span, loc, subject, target)
        return span if span.known else None

    def constant(
        self, value: expr.Expression, loc: Loc, subject: str, target: Target
    ) -> Span | None:
        """A value without names: evaluated now and checked for its target."""
        try:
            result = expr.evaluate(value, {})
        except expr.EvaluationError as err:
            self.add(loc, "expression", f"{subject}: {err}")
            return None
        try:
            target.check(result)
        except BadValue as err:
            self.add(loc, "out-of-range", f"{subject}: {target.what}: {err}")
            return None
        if isinstance(result, bool) or not isinstance(result, int | float):
            return None
        return Span(result, result, isinstance(result, int))

    def check_span(
        self, value: expr.Expression, span: Span, loc: Loc, subject: str, target: Target
    ) -> None:
        """Both ends of a value's range fit its target, else a problem naming the source."""
        ranged = [self.ranges[name] for name in sorted(value.names) if name in self.ranges]
        single = self.ranges.get(value.text.strip())
        for index, (end, which) in enumerate(((span.low, "min"), (span.high, "max"))):
            if math.isinf(end):
                if not target.bounded:
                    continue
                lacking = [what for what, *limits in ranged if limits[index] is None]
                give = f": give {', '.join(lacking)} a {which}" if lacking else ""
                self.add(
                    loc,
                    "unbounded",
                    f"{subject}: {value.text!r} has no {which} that fits {target.what}{give}",
                )
                return
            try:
                target.check(whole_value(end) if span.whole else end)
            except BadValue as err:
                sources = ", ".join(what for what, *_ in ranged)
                source = f"its {which}" if single else f"from the range of {sources}"
                what = single[0] if single else repr(value.text)
                self.add(
                    loc,
                    "out-of-range",
                    f"{subject}: {what} may be {show_number(end)} ({source}), but "
                    f"{target.what}: {err}",
                )
                return
