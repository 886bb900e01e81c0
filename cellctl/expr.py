"""Safe expressions over tags and parameters: parsed with `ast`, checked and walked by a whitelist.

The text is never given to eval, exec or compile: `parse` refuses every node type outside the
whitelist, and `evaluate` walks the tree itself. Booleans are not numbers here: `and`, `or`,
`not` take conditions, arithmetic and ordering take numbers, so a typo is found by `check`.
"""

from __future__ import annotations

import ast
import enum
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cellctl.errors import CellctlError, did_you_mean
from drivers.base import Value
from drivers.points import DataType

#: Longest expression text accepted.
MAX_LENGTH = 500
#: Deepest nesting of operations accepted.
MAX_DEPTH = 50

FUNCTIONS = ("abs", "min", "max", "round")
_BLANKS = str.maketrans("\n\r\t", "   ")
_LITERALS = {"true": True, "false": False}


class Kind(enum.StrEnum):
    """What an expression or a name yields: a condition, a number or a text."""

    BOOL = "bool"
    NUMBER = "number"
    STRING = "string"


def kind_of(datatype: DataType) -> Kind:
    """The expression kind of a tag's data type."""
    if datatype is DataType.BOOL:
        return Kind.BOOL
    if datatype is DataType.STRING:
        return Kind.STRING
    return Kind.NUMBER


class ExpressionError(CellctlError):
    """An expression that is refused; `col` is the 0-based offset of the fault in the text."""

    def __init__(self, message: str, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.col = col


class EvaluationError(CellctlError):
    """An expression that cannot be evaluated with the values at hand (missing value, ÷0)."""


@dataclass(frozen=True)
class Expression:
    """A parsed, whitelisted expression; `names` are the dotted names it reads."""

    text: str
    names: frozenset[str]
    tree: ast.expr = field(repr=False, compare=False)
    # What ast parsed: the text on one line without its leading blanks, and how many there were.
    _source: str = field(repr=False, compare=False, default="")
    _lead: int = field(repr=False, compare=False, default=0)

    def offset(self, node: ast.AST) -> int:
        """The 0-based character offset of a node in the text."""
        return _offset(self._source, self._lead, node)

    def __str__(self) -> str:
        return self.text


def _offset(source: str, lead: int, node: ast.AST) -> int:
    byte_col = getattr(node, "col_offset", 0)  # ast counts UTF-8 bytes, not characters
    return lead + len(source.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))


_REFUSED: dict[type[ast.AST], str] = {
    ast.Subscript: "subscripts ('x[...]')",
    ast.Lambda: "lambda",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "generator expressions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Set: "sets",
    ast.Dict: "dicts",
    ast.IfExp: "'a if c else b'",
    ast.NamedExpr: "':='",
    ast.JoinedStr: "f-strings",
    ast.Starred: "'*' unpacking",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
    ast.Slice: "slices",
}

_BINOPS: dict[type[ast.operator], tuple[str, Callable[[float, float], float]]] = {
    ast.Add: ("+", operator.add),
    ast.Sub: ("-", operator.sub),
    ast.Mult: ("*", operator.mul),
    ast.Div: ("/", operator.truediv),
    ast.FloorDiv: ("//", operator.floordiv),
    ast.Mod: ("%", operator.mod),
}
_REFUSED_BINOPS: dict[type[ast.operator], str] = {
    ast.Pow: "'**'",
    ast.BitAnd: "'&' (write 'and')",
    ast.BitOr: "'|' (write 'or')",
    ast.BitXor: "'^'",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.MatMult: "'@'",
}
_COMPARE: dict[type[ast.cmpop], tuple[str, Callable[[Any, Any], bool]]] = {
    ast.Eq: ("==", operator.eq),
    ast.NotEq: ("!=", operator.ne),
    ast.Lt: ("<", operator.lt),
    ast.LtE: ("<=", operator.le),
    ast.Gt: (">", operator.gt),
    ast.GtE: (">=", operator.ge),
}


def parse(text: str) -> Expression:
    """Parse and whitelist an expression; raises ExpressionError naming the refused construct."""
    if not isinstance(text, str):
        raise ExpressionError(f"expected an expression text, got {text!r}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters, more than {MAX_LENGTH}")
    # One line, same length: a condition may be folded over lines in YAML, and offsets into
    # the parsed text stay offsets into `text`.
    source = text.translate(_BLANKS).lstrip()
    lead = len(text) - len(source)
    if not source.strip():
        raise ExpressionError("empty expression")
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        col = lead + max((err.offset or 1) - 1, 0)
        raise ExpressionError(f"syntax error: {err.msg}", col) from None
    except (ValueError, RecursionError, MemoryError) as err:
        raise ExpressionError(f"cannot parse expression: {err}", lead) from None
    names: set[str] = set()
    _Whitelist(source, lead, names).visit_expr(tree.body, 0)
    return Expression(text, frozenset(names), tree.body, source, lead)


class _Whitelist:
    """Walks a freshly parsed tree and refuses anything outside the whitelist."""

    def __init__(self, source: str, lead: int, names: set[str]) -> None:
        self.source = source
        self.lead = lead
        self.names = names

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, _offset(self.source, self.lead, node))

    def visit_expr(self, node: ast.expr, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(node, f"expression is nested more than {MAX_DEPTH} deep")
        nested = depth + 1
        if isinstance(node, ast.BoolOp):
            for value in node.values:
                self.visit_expr(value, nested)
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Invert):
                raise self.fail(node, "'~' is not allowed (write 'not')")
            self.visit_expr(node.operand, nested)
        elif isinstance(node, ast.BinOp):
            refused = _REFUSED_BINOPS.get(type(node.op))
            if refused is not None:
                raise self.fail(node, f"{refused} is not allowed in an expression")
            self.visit_expr(node.left, nested)
            self.visit_expr(node.right, nested)
        elif isinstance(node, ast.Compare):
            for op in node.ops:
                if type(op) not in _COMPARE:
                    word = {ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
                    raise self.fail(node, f"'{word.get(type(op), 'this')}' is not allowed")
            self.visit_expr(node.left, nested)
            for comparator in node.comparators:
                self.visit_expr(comparator, nested)
        elif isinstance(node, ast.Constant):
            self.visit_constant(node)
        elif isinstance(node, ast.Name | ast.Attribute):
            name = self.dotted(node)
            if name in FUNCTIONS:
                raise self.fail(node, f"{name} is a function: call it as {name}(...)")
            if name not in _LITERALS:
                self.names.add(name)
        elif isinstance(node, ast.Call):
            self.visit_call(node, nested)
        else:
            what = _REFUSED.get(type(node), type(node).__name__)
            raise self.fail(node, f"{what} not allowed in an expression")

    def visit_constant(self, node: ast.Constant) -> None:
        value = node.value
        if isinstance(value, bool | int | str):
            return
        if isinstance(value, float) and math.isfinite(value):
            return
        what = "None" if value is None else type(value).__name__
        raise self.fail(node, f"{what} is not allowed in an expression")

    def dotted(self, node: ast.expr) -> str:
        parts: list[str] = []
        current = node
        while isinstance(current, ast.Attribute):
            parts.append(current.attr)
            current = current.value
        if not isinstance(current, ast.Name):
            raise self.fail(node, "attributes are allowed only on names ('press.force_kN')")
        parts.append(current.id)
        for part in parts:
            if part.startswith("_"):
                raise self.fail(node, f"names starting with '_' are not allowed ({part!r})")
        return ".".join(reversed(parts))

    def visit_call(self, node: ast.Call, depth: int) -> None:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else None
        if name not in FUNCTIONS:
            shown = name or ast.unparse(func)
            raise self.fail(node, f"call to {shown!r} not allowed (only {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise self.fail(node, f"{name}() takes no keyword arguments")
        low, high = {"abs": (1, 1), "round": (1, 2), "min": (2, 16), "max": (2, 16)}[name]
        if not low <= len(node.args) <= high:
            count = f"{low}" if low == high else f"{low} to {high}"
            raise self.fail(node, f"{name}() takes {count} arguments, got {len(node.args)}")
        for arg in node.args:
            self.visit_expr(arg, depth)


def check(
    expr: Expression, types: Mapping[str, Kind | None], expect: Kind | None = None
) -> list[ExpressionError]:
    """Problems of an expression against the kinds of the names it may use (unknown, mismatch).

    A name mapped to None is known but of unknown kind (its own definition is broken): it is
    not reported again here.
    """
    checker = _Checker(expr, types)
    kind = checker.infer(expr.tree)
    if expect is not None and kind is not None and kind is not expect:
        checker.problem(expr.tree, f"expression must be {_a(expect)}, but it is {_a(kind)}")
    return checker.problems


def infer(expr: Expression, types: Mapping[str, Kind | None]) -> Kind | None:
    """The kind an expression yields, or None when `check` finds a problem that hides it."""
    return _Checker(expr, types).infer(expr.tree)


def _a(kind: Kind) -> str:
    return {Kind.BOOL: "a condition", Kind.NUMBER: "a number", Kind.STRING: "a string"}[kind]


class _Checker:
    def __init__(self, expr: Expression, types: Mapping[str, Kind | None]) -> None:
        self.expr = expr
        self.types = types
        self.problems: list[ExpressionError] = []

    def problem(self, node: ast.AST, message: str) -> None:
        self.problems.append(ExpressionError(message, self.expr.offset(node)))

    def infer(self, node: ast.expr) -> Kind | None:
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                return Kind.BOOL
            return Kind.STRING if isinstance(value, str) else Kind.NUMBER
        if isinstance(node, ast.Name | ast.Attribute):
            return self.name(node)
        if isinstance(node, ast.BoolOp):
            word = "and" if isinstance(node.op, ast.And) else "or"
            for operand in node.values:
                self.want(operand, Kind.BOOL, f"'{word}'")
            return Kind.BOOL
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                self.want(node.operand, Kind.BOOL, "'not'")
                return Kind.BOOL
            sign = "-" if isinstance(node.op, ast.USub) else "+"
            self.want(node.operand, Kind.NUMBER, f"unary '{sign}'")
            return Kind.NUMBER
        if isinstance(node, ast.BinOp):
            symbol = _BINOPS[type(node.op)][0]
            self.want(node.left, Kind.NUMBER, f"'{symbol}'")
            self.want(node.right, Kind.NUMBER, f"'{symbol}'")
            return Kind.NUMBER
        if isinstance(node, ast.Compare):
            self.compare(node)
            return Kind.BOOL
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)
            for arg in node.args:
                self.want(arg, Kind.NUMBER, f"{node.func.id}()")
            return Kind.NUMBER
        return None  # unreachable after parse's whitelist

    def name(self, node: ast.expr) -> Kind | None:
        name = ast.unparse(node)
        if name in _LITERALS:
            return Kind.BOOL
        if name not in self.types:
            self.problem(node, f"unknown name {name!r}{did_you_mean(name, self.types)}")
            return None
        return self.types[name]

    def want(self, node: ast.expr, kind: Kind, where: str) -> None:
        found = self.infer(node)
        if found is not None and found is not kind:
            self.problem(
                node, f"{where} needs {_a(kind)}, but {ast.unparse(node)!r} is {_a(found)}"
            )

    def compare(self, node: ast.Compare) -> None:
        left = self.infer(node.left)
        left_node = node.left
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.infer(right_node)
            symbol = _COMPARE[type(op)][0]
            if left is not None and right is not None:
                if left is not right:
                    self.problem(
                        node,
                        f"cannot compare {_a(left)} ({ast.unparse(left_node)!r}) with "
                        f"{_a(right)} ({ast.unparse(right_node)!r})",
                    )
                elif left is Kind.BOOL and symbol not in ("==", "!="):
                    self.problem(node, f"'{symbol}' does not apply to conditions")
            left, left_node = right, right_node


def evaluate(expr: Expression, values: Mapping[str, Value]) -> Value:
    """The value of an expression, reading names from `values`; raises EvaluationError."""
    return _Evaluator(expr, values).eval(expr.tree)


def _is_number(value: Value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


class _Evaluator:
    def __init__(self, expr: Expression, values: Mapping[str, Value]) -> None:
        self.expr = expr
        self.values = values

    def fail(self, message: str) -> EvaluationError:
        return EvaluationError(f"{message} in {self.expr.text!r}")

    def eval(self, node: ast.expr) -> Value:
        if isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
            return node.value
        if isinstance(node, ast.Name | ast.Attribute):
            name = ast.unparse(node)
            if name in _LITERALS:
                return _LITERALS[name]
            if name not in self.values:
                raise self.fail(f"no value for {name!r}")
            return self.values[name]
        if isinstance(node, ast.BoolOp):
            stop = isinstance(node.op, ast.Or)  # 'or' stops at the first true, 'and' at a false
            for item in node.values:
                if self.condition(item) is stop:
                    return stop
            return not stop
        if isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.Not):
                return not self.condition(node.operand)
            number = self.number(node.operand)
            return -number if isinstance(node.op, ast.USub) else number
        if isinstance(node, ast.BinOp):
            function = _BINOPS[type(node.op)][1]
            left, right = self.number(node.left), self.number(node.right)
            try:
                return function(left, right)
            except ZeroDivisionError:
                raise self.fail(f"division by zero ({ast.unparse(node)!r})") from None
            except OverflowError:
                raise self.fail(f"number too large ({ast.unparse(node)!r})") from None
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"{type(node).__name__} cannot be evaluated")  # unreachable

    def condition(self, node: ast.expr) -> bool:
        value = self.eval(node)
        if not isinstance(value, bool):
            raise self.fail(f"{ast.unparse(node)!r} is {value!r}, not true or false")
        return value

    def number(self, node: ast.expr) -> int | float:
        value = self.eval(node)
        if not _is_number(value):
            raise self.fail(f"{ast.unparse(node)!r} is {value!r}, not a number")
        assert isinstance(value, int | float)
        return value

    def compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.eval(right_node)
            symbol, function = _COMPARE[type(op)]
            same = (_is_number(left) and _is_number(right)) or type(left) is type(right)
            if not same or (isinstance(left, bool) and symbol not in ("==", "!=")):
                raise self.fail(f"cannot compare {left!r} {symbol} {right!r}")
            if not function(left, right):
                return False
            left = right
        return True

    def call(self, node: ast.Call) -> Value:
        assert isinstance(node.func, ast.Name)
        name = node.func.id
        args = [self.number(arg) for arg in node.args]
        if name == "abs":
            return abs(args[0])
        if name == "min":
            return min(args)
        if name == "max":
            return max(args)
        digits = args[1] if len(args) == 2 else None
        if digits is not None and (not isinstance(digits, int) or abs(digits) > 15):
            raise self.fail(f"round() needs whole digits in -15..15, got {digits!r}")
        try:
            return round(args[0], digits)
        except (OverflowError, ValueError):  # round(inf) or round(nan)
            raise self.fail(f"cannot round {args[0]!r}") from None
