"""Checks of a recipe against its cell file: tags, methods, types, ranges, expressions, ids, names.

The checks walk the raw YAML data and validate each step on its own, so a broken step hides
nothing but itself: the steps around it, and the steps nested in a broken block, are still
checked. Every problem is located at the key or value at fault and names the step.

Ranges are checked on constants and parameters: a value computed from them is bounded by
interval arithmetic over the min and max of parameters, answers and repeat indexes, and both
ends must fit the tag (its type's raw range after scale/offset, its min/max). A value that
reads a tag or a call result is checked at run time, before it is sent.
"""

from __future__ import annotations

import ast
import itertools
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from cellctl import expr
from cellctl.cell import INTEGER_TYPES, Cell, Method, Tag
from cellctl.errors import BadValue, Problem, did_you_mean
from cellctl.recipe import (
    AnyStep,
    CallStep,
    ParallelStep,
    Parameter,
    PromptStep,
    RepeatStep,
    SetStep,
    Step,
    Wait,
    WaitStep,
    iter_steps,
    raw_at,
    step_label,
    under_alias,
)
from cellctl.yamlload import YamlDocument, scalar_offset
from drivers import codecs
from drivers.base import Value
from drivers.errors import WriteRejected
from drivers.points import Access, DataType

#: Most rounds a repeat may run: a recipe loop is bounded like any loop that drives machines.
MAX_REPEAT = 1_000_000

Loc = tuple[str | int, ...]
_STEP: TypeAdapter[AnyStep] = TypeAdapter(Step)
_PARAMETER = TypeAdapter(Parameter)
_INF = math.inf


def check_rules(doc: YamlDocument, data: dict[Any, Any], cell: Cell | None) -> list[Problem]:
    """Every problem of a recipe against its cell, located in the recipe file.

    With no cell (its file is broken), only what does not need one: ids, bound names, where
    names are bound, timeouts, retries, parallel branches; no tag, method, type or range.
    """
    return _Checker(doc, data, cell).run()


# ---------------------------------------------------------------------------------------------
# Value ranges


@dataclass(frozen=True)
class Span:
    """The values a numeric expression may take: low..high, whether whole, whether knowable.

    `known` is false when the value reads a tag or a call result: its range is then checked
    at run time.
    """

    low: float
    high: float
    whole: bool
    known: bool = True

    @staticmethod
    def of(low: float | None, high: float | None, whole: bool, known: bool = True) -> Span:
        """A span from optional limits (None: unbounded)."""
        return Span(-_INF if low is None else low, _INF if high is None else high, whole, known)


_ANY = Span(-_INF, _INF, False, False)


def _product(x: float, y: float) -> float:
    return 0 if x == 0 or y == 0 else x * y  # 0 × ∞ is 0 here: a bound, not a value


def _join(values: Sequence[float], whole: bool, known: bool) -> Span:
    if any(math.isnan(v) for v in values):
        return Span(-_INF, _INF, whole, known)
    return Span(min(values), max(values), whole, known)


def _binop(op: ast.operator, a: Span, b: Span) -> Span:
    known = a.known and b.known
    whole = a.whole and b.whole
    if isinstance(op, ast.Add):
        return Span(a.low + b.low, a.high + b.high, whole, known)
    if isinstance(op, ast.Sub):
        return Span(a.low - b.high, a.high - b.low, whole, known)
    if isinstance(op, ast.Mult):
        return _join(
            [_product(x, y) for x in (a.low, a.high) for y in (b.low, b.high)], whole, known
        )
    if isinstance(op, ast.Div | ast.FloorDiv):
        floor = isinstance(op, ast.FloorDiv)
        if b.low <= 0 <= b.high:
            return Span(-_INF, _INF, floor, known)
        quotients = [x / y for x in (a.low, a.high) for y in (b.low, b.high)]
        span = _join(quotients, floor, known)
        if floor:
            low = math.floor(span.low) if math.isfinite(span.low) else span.low
            high = math.floor(span.high) if math.isfinite(span.high) else span.high
            return Span(low, high, True, known)
        return span
    if isinstance(op, ast.Mod):  # the result takes the divisor's sign, below its size
        if b.low > 0:
            return Span(0, b.high, whole, known)
        if b.high < 0:
            return Span(b.low, 0, whole, known)
    return Span(-_INF, _INF, whole, known)


def _call(name: str, args: list[Span], node: ast.Call) -> Span:
    known = all(a.known for a in args)
    whole = all(a.whole for a in args)
    if name == "abs":
        (a,) = args
        if a.low >= 0:
            return a
        if a.high <= 0:
            return Span(-a.high, -a.low, a.whole, a.known)
        return Span(0, max(-a.low, a.high), a.whole, a.known)
    if name == "min":
        return Span(min(a.low for a in args), min(a.high for a in args), whole, known)
    if name == "max":
        return Span(max(a.low for a in args), max(a.high for a in args), whole, known)
    a = args[0]  # round(x) is whole; round(x, n ≥ 0) stays within the whole numbers around x
    digits = node.args[1] if len(node.args) == 2 else None
    constant = digits.value if isinstance(digits, ast.Constant) else None
    if digits is not None and not (isinstance(constant, int) and constant >= 0):
        return Span(-_INF, _INF, False, known)
    low = math.floor(a.low) if math.isfinite(a.low) else a.low
    high = math.ceil(a.high) if math.isfinite(a.high) else a.high
    return Span(low, high, digits is None, known)


def span_of(expression: expr.Expression, spans: dict[str, Span]) -> Span | None:
    """The range of a numeric expression given the ranges of its names; None if not numeric."""
    try:
        return _span(expression.tree, spans)
    except (OverflowError, ValueError):  # huge literals: leave them to the run-time check
        return None


def _span(node: ast.expr, spans: dict[str, Span]) -> Span | None:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return Span(value, value, isinstance(value, int))
    if isinstance(node, ast.Name | ast.Attribute):
        return spans.get(ast.unparse(node), _ANY)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _span(node.operand, spans)
        if inner is None or isinstance(node.op, ast.UAdd):
            return inner
        return Span(-inner.high, -inner.low, inner.whole, inner.known)
    if isinstance(node, ast.BinOp):
        left, right = _span(node.left, spans), _span(node.right, spans)
        return None if left is None or right is None else _binop(node.op, left, right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        args = [_span(arg, spans) for arg in node.args]
        if any(a is None for a in args):
            return None
        return _call(node.func.id, [a for a in args if a is not None], node)
    return None


# ---------------------------------------------------------------------------------------------
# What a value is written to


@dataclass(frozen=True)
class _Target:
    """Where a value goes (a tag, a method argument, a repeat count) and what it accepts."""

    what: str
    kind: expr.Kind
    integral: bool  # only whole numbers
    bounded: bool  # a value from parameters must have a finite range
    check: Callable[[Value], object]  # raises BadValue


def _tag_target(name: str, tag: Tag) -> _Target:
    datatype = tag.datatype
    integral = datatype in INTEGER_TYPES
    return _Target(
        f"tag {name} ({datatype.value})",
        expr.kind_of(datatype),
        integral and not tag.scaled,
        integral or tag.min is not None or tag.max is not None,
        tag.check_value,
    )


def _arg_target(method: str, arg: str, datatype: DataType) -> _Target:
    def check(value: Value) -> object:
        try:
            return codecs.check_value(datatype, value)
        except WriteRejected as err:
            raise BadValue(str(err)) from None

    integral = datatype in INTEGER_TYPES
    return _Target(
        f"arg {arg} of {method} ({datatype.value})",
        expr.kind_of(datatype),
        integral,
        integral,
        check,
    )


def _check_count(value: Value) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValue(f"expects a whole number, got {value!r}")
    if not float(value).is_integer():
        raise BadValue(f"expects a whole number, got {value!r}")
    if not 0 <= value <= MAX_REPEAT:
        raise BadValue(f"expects 0..{MAX_REPEAT}, got {_show(value)}")
    return value


_COUNT = _Target("a repeat count", expr.Kind.NUMBER, True, True, _check_count)

_A = {expr.Kind.BOOL: "a condition", expr.Kind.NUMBER: "a number", expr.Kind.STRING: "a text"}
_TEXT_HINT = " (a fixed text is written in quotes inside the value: \"'LOT-42'\")"


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _whole(value: float) -> Value:
    return int(value) if float(value).is_integer() else value


# ---------------------------------------------------------------------------------------------
# The walk


@dataclass
class _Scope:
    """The names an expression may use at one point of the recipe: kinds and ranges."""

    kinds: dict[str, expr.Kind | None]
    spans: dict[str, Span]

    def copy(self) -> _Scope:
        return _Scope(dict(self.kinds), dict(self.spans))

    def add(self, name: str, kind: expr.Kind | None, span: Span) -> None:
        self.kinds[name] = kind
        self.spans[name] = span


@dataclass
class _Write:
    label: str
    loc: Loc
    line: int


@dataclass
class _Block:
    """What a block of steps did: the tags it writes, the names it binds for later steps."""

    writes: dict[str, _Write] = field(default_factory=dict)
    exports: dict[str, tuple[expr.Kind | None, Span]] = field(default_factory=dict)


class _Checker:
    def __init__(self, doc: YamlDocument, data: dict[Any, Any], cell: Cell | None) -> None:
        self.doc = doc
        self.data = data
        self.cell = cell
        self.tags = cell.tags if cell is not None else {}
        self.problems: list[Problem] = []
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
        self.ranges: dict[str, tuple[str, float | None, float | None]] = {
            name: (f"parameter {name}", parameter.min, parameter.max)
            for name, parameter in self.parameters.items()
        }
        defaults = data.get("defaults")
        # A default timeout that is broken counts as given (its own error says what is wrong);
        # one written empty is none at all.
        self.default_timeout = isinstance(defaults, dict) and defaults.get("timeout") is not None
        self.ids: dict[str, int] = {}
        # The choices of each enum parameter or answer: a literal compared with one is checked.
        self.choices: dict[str, list[str]] = {
            name: parameter.choices
            for name, parameter in self.parameters.items()
            if parameter.choices is not None
        }
        self.bound: dict[str, tuple[str, int]] = {}
        self.bindable: dict[str, tuple[str, int]] = {}
        self._collect_bindings(data.get("steps"), ("steps",), "")

    # -- helpers --------------------------------------------------------------------------

    def add(
        self, loc: Loc, code: str, message: str, *, key: bool = False, col_offset: int = 0
    ) -> None:
        if under_alias(self.doc, loc):
            return  # the anchor's own problem, reported at the anchor; the alias is refused
        self.problems.append(self.doc.problem(loc, code, message, key=key, col_offset=col_offset))

    def line(self, loc: Loc, *, key: bool = False) -> int:
        return self.doc.position(loc, key=key)[0]

    def raw(self, loc: Loc) -> Any:
        return raw_at(self.data, loc)

    def _collect_bindings(self, raw: object, loc: Loc, prefix: str) -> None:
        """Every name some step binds, where: to explain a name used where it is not bound."""
        for index, item, path in _items(raw, prefix):
            if not isinstance(item, dict):
                continue
            step_loc = (*loc, index)
            answer = item.get("answer")
            for key, name in (
                ("result", item.get("result")),
                ("index", item.get("index")),
                ("answer", answer.get("name") if isinstance(answer, dict) else None),
            ):
                if isinstance(name, str):
                    line = self.line((*step_loc, key))
                    self.bindable.setdefault(name, (step_label(item, path), line))
            for child_loc, child, child_prefix in _nested(item, step_loc, path):
                self._collect_bindings(child, child_loc, child_prefix)

    # -- top level ------------------------------------------------------------------------

    def run(self) -> list[Problem]:
        scope = _Scope({}, {})
        for name, tag in self.tags.items():
            datatype = tag.datatype
            whole = datatype in INTEGER_TYPES and not tag.scaled
            scope.add(name, expr.kind_of(datatype), Span(-_INF, _INF, whole, known=False))
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
                scope.add(name, None, _ANY)
            else:
                span = Span.of(parameter.min, parameter.max, parameter.type == "int")
                scope.add(name, parameter.kind, span)
        self.block(self.data.get("steps"), ("steps",), "", scope)
        return self.problems

    def block(self, raw: object, loc: Loc, prefix: str, scope: _Scope) -> _Block:
        """Check a list of steps in order; names bound by a step are in scope after it."""
        result = _Block()
        for index, item, path in _items(raw, prefix):
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

    def recover(self, item: object, loc: Loc, path: str, scope: _Scope) -> None:
        """Check the blocks nested in a step that failed its own validation."""
        if not isinstance(item, dict):
            return
        for key in ("result", "index"):
            if isinstance(item.get(key), str):
                scope.add(item[key], None, _ANY)  # known, of unknown kind: not reported again
        for child_loc, child, prefix in _nested(item, loc, path):
            self.block(child, child_loc, prefix, scope.copy())

    def check_id(self, item: object, loc: Loc) -> None:
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

    # -- steps ----------------------------------------------------------------------------

    def step(self, step: AnyStep, loc: Loc, path: str, scope: _Scope) -> _Block:
        label = step.label(path)
        done = _Block()
        if step.if_ is not None:
            self.condition(step.if_, (*loc, "if"), f"{label}: if", scope)
        if isinstance(step, SetStep):
            for tag, value in step.set.items():
                write_loc = (*loc, "set", tag)
                self.write(tag, value, write_loc, label, scope)
                done.writes.setdefault(tag, _Write(label, write_loc, self.line(write_loc)))
        if isinstance(step, SetStep | WaitStep) and step.wait is not None:
            own = step.set.keys() if isinstance(step, SetStep) else set()
            self.wait(step.wait, (*loc, "wait"), label, scope, own)
            self.need_timeout(step, loc, "wait", label)
        if isinstance(step, CallStep):
            self.call(step, loc, label, scope, done)
        if isinstance(step, RepeatStep):
            self.repeat(step, loc, path, label, scope, done)
        if isinstance(step, ParallelStep):
            self.parallel(loc, path, label, scope, done)
        if isinstance(step, PromptStep) and step.answer is not None:
            answer = step.answer
            span = Span.of(answer.min, answer.max, answer.type == "int")
            if self.bind(answer.name, (*loc, "answer", "name"), label):
                done.exports[answer.name] = (answer.kind, span)
                self.ranges[answer.name] = (f"answer {answer.name}", answer.min, answer.max)
                if answer.choices is not None:
                    self.choices[answer.name] = answer.choices
        if step.on_error is not None and step.on_error.action == "retry":
            self.check_retry(step, loc, label)
        return done

    def wait(self, wait: Wait, loc: Loc, label: str, scope: _Scope, own: Collection[str]) -> None:
        """The condition, and each `changed` tag: a tag of the cell, not a heartbeat, not one
        of the step's `own` writes."""
        full = isinstance(self.raw(loc), dict)  # {until: ..., changed: [...]}
        self.condition(wait.until, (*loc, "until") if full else loc, f"{label}: wait", scope)
        if self.cell is None:
            return  # tags are checked once the cell file is valid
        for index, name in enumerate(wait.changed):
            subject = f"{label}: wait: changed {name}"
            tag_loc = (*loc, "changed", index)
            if name not in self.tags:
                hint = did_you_mean(name, self.tags)
                if not hint and name in self.parameter_names | set(self.bindable):
                    hint = " (it is not a tag: only a tag the devices report can change)"
                self.add(tag_loc, "unknown-tag", f"{subject}: unknown tag {name!r}{hint}")
            elif name in self.cell.heartbeat_tags:
                # Only the controller writes it, and it changes every period: it proves nothing.
                self.add(
                    tag_loc,
                    "heartbeat-tag",
                    f"{subject}: tag {name} is the controller's heartbeat to device "
                    f"{self.tags[name].device}; it changes on its own, so it proves nothing",
                )
            elif name in own:
                # The step's own write changes it: that says nothing of the machine's answer.
                self.add(
                    tag_loc,
                    "own-write",
                    f"{subject}: tag {name} is written by this step; its own write changes "
                    "it, so it proves nothing (list a tag the device changes in answer, such "
                    "as a cycle counter)",
                )

    def need_timeout(
        self, step: SetStep | WaitStep | CallStep, loc: Loc, key: str, label: str
    ) -> None:
        if step.timeout is None and not self.default_timeout:
            what = "a wait" if key == "wait" else "a call"
            self.add(
                (*loc, key),
                "missing-timeout",
                f"{label}: {what} needs a timeout (give 'timeout' on the step, or a default "
                "in 'defaults: {timeout: ...}')",
                key=True,
            )

    def write(self, name: str, value: expr.Expression, loc: Loc, label: str, scope: _Scope) -> None:
        if self.cell is None:
            return
        subject = f"{label}: set {name}"
        tag = self.cell.tags.get(name)
        if tag is None:
            hint = did_you_mean(name, self.cell.tags)
            self.add(loc, "unknown-tag", f"{subject}: unknown tag {name!r}{hint}", key=True)
            self.expression(value, loc, subject, scope)
            return
        if tag.access is not Access.RW:
            self.add(
                loc,
                "read-only",
                f"{subject}: tag {name} is read-only on device {tag.device}",
                key=True,
            )
        elif name in self.cell.heartbeat_tags:
            # A recipe's write could be "no change" to the device's watchdog: it would trip.
            self.add(
                loc,
                "heartbeat-tag",
                f"{subject}: tag {name} is the controller's heartbeat to device {tag.device}; "
                "only the controller writes it",
                key=True,
            )
        self.value(value, loc, subject, scope, _tag_target(name, tag))

    def call(self, step: CallStep, loc: Loc, label: str, scope: _Scope, done: _Block) -> None:
        self.need_timeout(step, loc, "call", label)
        name = step.call
        # Without a cell, the method and its args are checked once the cell file is valid.
        methods = self.cell.methods if self.cell is not None else {}
        method = methods.get(name)
        if method is None and self.cell is not None:
            hint = did_you_mean(name, methods)
            if not hint and name in self.tags:
                hint = " (it is a tag: write it with 'set', read it in an expression)"
            self.add((*loc, "call"), "unknown-method", f"{label}: unknown method {name!r}{hint}")
            for arg, value in step.args.items():
                self.expression(value, (*loc, "args", arg), f"{label}: arg {arg}", scope)
        elif method is not None:
            for arg, value in step.args.items():
                arg_loc = (*loc, "args", arg)
                subject = f"{label}: arg {arg}"
                datatype = method.args.get(arg)
                if datatype is None:
                    hint = did_you_mean(arg, method.args)
                    takes = ", ".join(method.args) or "no args"
                    self.add(
                        arg_loc,
                        "unknown-arg",
                        f"{subject}: method {name} has no arg {arg!r}{hint} (it takes {takes})",
                        key=True,
                    )
                    self.expression(value, arg_loc, subject, scope)
                else:
                    self.value(value, arg_loc, subject, scope, _arg_target(name, arg, datatype))
            missing = [arg for arg in method.args if arg not in step.args]
            if missing:
                where = (*loc, "args") if "args" in (self.raw(loc) or {}) else (*loc, "call")
                listed = ", ".join(f"{arg} ({method.args[arg].value})" for arg in missing)
                self.add(
                    where,
                    "missing-arg",
                    f"{label}: call {name} misses arg{'s' if len(missing) > 1 else ''} {listed}",
                    key=True,
                )
        if step.expect is not None:
            self.expect(step, step.expect, (*loc, "expect"), label, method, scope)
        if step.result is None:
            return
        result_loc = (*loc, "result")
        kind: expr.Kind | None = None
        span = _ANY
        if method is not None and method.result is None:
            self.add(
                result_loc,
                "no-result",
                f"{label}: method {name} returns nothing, so 'result' has nothing to bind",
            )
        elif method is not None and method.result is not None:
            kind = expr.kind_of(method.result)
            span = Span(-_INF, _INF, method.result in INTEGER_TYPES, known=False)
        if self.bind(step.result, result_loc, label):
            done.exports[step.result] = (kind, span)

    def expect(
        self,
        step: CallStep,
        value: expr.Expression,
        loc: Loc,
        label: str,
        method: Method | None,
        scope: _Scope,
    ) -> None:
        """`expect` judges the call's answer: a condition over `result` (or the step's own
        `result:` name), parameters and bound names; no tags (no device is read for it)."""
        subject = f"{label}: expect"
        if method is not None and method.result is None:
            self.add(
                loc,
                "no-result",
                f"{subject}: method {step.call} returns nothing, so there is no result to expect",
            )
            return
        raw = self.raw(loc)
        for name in sorted(value.names & self.tags.keys()):
            self.add(
                loc,
                "expect-reads-tag",
                f"{subject}: reads tag {name}, but expect judges the call's answer only "
                "(`result`, parameters, bound names); wait for a tag in a step after the call",
                col_offset=scalar_offset(raw, max(value.text.find(name), 0)),
            )
        own = scope.copy()
        kind = expr.kind_of(method.result) if method is not None and method.result else None
        whole = method is not None and method.result in INTEGER_TYPES
        for answer in ("result", step.result):
            if answer is not None:
                own.add(answer, kind, Span(-_INF, _INF, whole, known=False))
        self.condition(value, loc, subject, own)

    def repeat(
        self, step: RepeatStep, loc: Loc, path: str, label: str, scope: _Scope, done: _Block
    ) -> None:
        count = self.value(step.repeat, (*loc, "repeat"), f"{label}: repeat", scope, _COUNT)
        body = scope.copy()
        if step.index is not None and self.bind(step.index, (*loc, "index"), label):
            high = count.high if count is not None else _INF
            body.add(step.index, expr.Kind.NUMBER, Span(1, max(high, 1), True, count is not None))
            most = max(high, 1) if math.isfinite(high) else None
            self.ranges[step.index] = (f"index {step.index}", 1, most)
        inner = self.block(self.raw((*loc, "steps")), (*loc, "steps"), f"{path}.", body)
        done.writes.update(inner.writes)  # a repeat body's names end with the loop

    def parallel(self, loc: Loc, path: str, label: str, scope: _Scope, done: _Block) -> None:
        for index, branch, branch_path in _items(self.raw((*loc, "parallel")), f"{path}."):
            inner = self.block(branch, (*loc, "parallel", index), f"{branch_path}.", scope.copy())
            for tag, write in inner.writes.items():
                first = done.writes.setdefault(tag, write)
                if first is not write:
                    self.add(
                        write.loc,
                        "parallel-conflict",
                        f"{write.label}: set {tag}: another branch of parallel {label} also "
                        f"writes it ({first.label}, line {first.line}); parallel branches must "
                        "not write the same tag",
                        key=True,
                    )
            done.exports.update(inner.exports)

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

    def check_retry(self, step: AnyStep, loc: Loc, label: str) -> None:
        """Retry only where repeating is harmless: idempotent writes, no calls.

        A set step alone is judged by its own marks (SetStep.idempotent_writes). A retried
        block (repeat, parallel) runs again from its start, after its steps have written:
        a value in it that reads any tag written anywhere in the block may read the block's
        own result, so it is not idempotent there.
        """
        inner_steps = [inner for inner, _ in iter_steps([step])]
        written = {tag for inner in inner_steps if isinstance(inner, SetStep) for tag in inner.set}
        for inner in inner_steps:
            culprit: str | None = None
            if isinstance(inner, SetStep):
                culprit = _unrepeatable_write(inner, None if inner is step else written)
            elif isinstance(inner, CallStep):
                culprit = f"the call {inner.call}, and a call is not known to be idempotent"
            if culprit is not None:
                where = f" in step {inner.id!r}" if inner is not step else ""
                self.add(
                    (*loc, "on_error"),
                    "retry-not-idempotent",
                    f"{label}: on_error retry would repeat {culprit}{where}; use hold, abort "
                    "or skip",
                )
                return

    # -- expressions ----------------------------------------------------------------------

    def expression(
        self, value: expr.Expression, loc: Loc, subject: str, scope: _Scope
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
        for error in errors:
            self.add(
                loc,
                "expression",
                f"{subject}: {error.message}",
                col_offset=scalar_offset(raw, error.col),
            )
        if errors or hidden:
            return None
        self.check_choices(value, loc, subject)
        return expr.infer(value, kinds)

    def check_choices(self, value: expr.Expression, loc: Loc, subject: str) -> None:
        """A text compared with an enum must be one of its choices: 'A21' is a typo of 'A12'."""
        for node in ast.walk(value.tree):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            for left, right in itertools.pairwise(operands):
                for name_node, text_node in ((left, right), (right, left)):
                    name = ast.unparse(name_node)
                    choices = self.choices.get(name)
                    if (
                        choices is None
                        or not isinstance(text_node, ast.Constant)
                        or not isinstance(text_node.value, str)
                        or text_node.value in choices
                    ):
                        continue
                    listed = ", ".join(repr(choice) for choice in choices)
                    hint = did_you_mean(text_node.value, choices)
                    self.add(
                        loc,
                        "bad-choice",
                        f"{subject}: {text_node.value!r} is not a choice of {name}{hint} "
                        f"(one of {listed})",
                        col_offset=scalar_offset(self.raw(loc), value.offset(text_node)),
                    )

    def condition(self, value: expr.Expression, loc: Loc, subject: str, scope: _Scope) -> None:
        kind = self.expression(value, loc, subject, scope)
        if kind is not None and kind is not expr.Kind.BOOL:
            self.add(
                loc,
                "type-mismatch",
                f"{subject}: must be a condition (true or false), but {value.text!r} is {_A[kind]}",
            )

    def value(
        self, value: expr.Expression, loc: Loc, subject: str, scope: _Scope, target: _Target
    ) -> Span | None:
        """Check a value for its target: kind, whole numbers, range. Its span when known."""
        kind = self.expression(value, loc, subject, scope)
        if kind is None:
            return None
        if kind is not target.kind:
            hint = _TEXT_HINT if target.kind is expr.Kind.STRING else ""
            self.add(
                loc,
                "type-mismatch",
                f"{subject}: {target.what} takes {_A[target.kind]}, but {value.text!r} is "
                f"{_A[kind]}{hint}",
            )
            return None
        if not value.names:
            return self.constant(value, loc, subject, target)
        if kind is not expr.Kind.NUMBER:
            return None
        span = span_of(value, scope.spans)
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
        self, value: expr.Expression, loc: Loc, subject: str, target: _Target
    ) -> Span | None:
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
        self, value: expr.Expression, span: Span, loc: Loc, subject: str, target: _Target
    ) -> None:
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
                target.check(_whole(end) if span.whole else end)
            except BadValue as err:
                sources = ", ".join(what for what, *_ in ranged)
                source = f"its {which}" if single else f"from the range of {sources}"
                what = single[0] if single else repr(value.text)
                self.add(
                    loc,
                    "out-of-range",
                    f"{subject}: {what} may be {_show(end)} ({source}), but {target.what}: {err}",
                )
                return


def _unrepeatable_write(step: SetStep, block_writes: set[str] | None) -> str | None:
    """The first write of a set step that a retry must not repeat, in words, else None.

    Alone, the step is judged by its own marks; in a retried block (`block_writes`: every tag
    the block writes), a value that reads any of the block's tags is not repeated.
    """
    for tag, value in step.set.items():
        if block_writes is None:
            if step.idempotent(tag):
                continue
            why = "its value depends on a tag the step writes"
        else:
            reads = value.names & block_writes
            if not reads:
                continue
            why = f"its value reads {', '.join(sorted(reads))}, which the block writes"
        return f"the write {tag}: {value.text!r}, which is not idempotent ({why})"
    return None


def _items(raw: object, prefix: str) -> Iterator[tuple[int, Any, str]]:
    """(index, item, path) of a raw list; paths count from 1 after `prefix`."""
    if isinstance(raw, list):
        for index, item in enumerate(raw):
            yield index, item, f"{prefix}{index + 1}"


def _nested(item: dict[Any, Any], loc: Loc, path: str) -> Iterator[tuple[Loc, Any, str]]:
    """The raw blocks nested in a raw step: (loc, list of steps, path prefix)."""
    if isinstance(item.get("steps"), list):
        yield (*loc, "steps"), item["steps"], f"{path}."
    for index, branch, prefix in _items(item.get("parallel"), f"{path}."):
        yield (*loc, "parallel", index), branch, f"{prefix}."
