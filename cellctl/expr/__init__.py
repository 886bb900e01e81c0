"""Safe expressions over tags and parameters: parsed with `ast`, checked and walked by a whitelist.

The text is never given to eval, exec or compile: `parse` refuses every node type outside the
whitelist, and `evaluate` walks the tree itself. Booleans are not numbers here: `and`, `or`,
`not` take conditions, arithmetic and ordering take numbers, so a typo is found by `check`.

The language, in short:

- conditions `true` and `false` (lower case, as in YAML; Python's `True`, `False` and `None`
  are refused with a hint), `and`, `or`, `not`, comparisons `== != < <= > >=` (chained too);
- numbers (whole numbers up to 2**64 - 1, finite floats), `+ - * / // %`, unary minus,
  parentheses and the functions `abs(x)`, `min(a, b, ...)`, `max(a, b, ...)`, `round(x[, n])`;
- strings in quotes, `'LOT-42'` or `"LOT-42"`: they can only be compared, never added or
  repeated (in a recipe, a fixed text is such a quoted string inside the YAML value:
  `batch.lot: "'LOT-42'"`, see cellctl.recipe);
- names: parameters, bound results and dotted tag names (`press.force_kN`); no part may start
  with `_`.

Nothing else: no other calls, no `**`, no bit operators, no `is`/`in`, no `a if c else b`,
no subscripts, lambdas, comprehensions, f-strings, `:=` or `*`. Hostile text is refused
before anything runs: the text, its nesting, its number of parts, every number and string
literal and `round`'s digits are bounded, and evaluation refuses a result beyond the float
range. Every failure is an ExpressionError (parse, check) or an EvaluationError (evaluate).
"""

from __future__ import annotations

import ast
import enum
import math
import operator
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from cellctl.errors import CellctlError, did_you_mean
from drivers.base import Value
from drivers.codecs import format_value
from drivers.points import DataType

#: Longest expression text accepted.
MAX_LENGTH = 500
#: Deepest nesting of operations accepted (each part of a dotted name counts as a level).
MAX_DEPTH = 50
#: Most parts (names, constants, operations) an expression may have.
MAX_NODES = 200
#: Longest string literal accepted.
MAX_STRING = 256
#: Largest whole-number literal accepted: the top of uint64.
MAX_INT = 2**64 - 1
#: Largest number of digits `round` may be asked for, either side of the point.
MAX_ROUND_DIGITS = 15

FUNCTIONS = ("abs", "min", "max", "round")
_ARITY = {"abs": (1, 1), "round": (1, 2), "min": (2, 16), "max": (2, 16)}
#: Line breaks and tabs as spaces: a text folded over lines, on one line of the same length.
BLANKS = str.maketrans("\n\r\t", "   ")
_LITERALS = {"true": True, "false": False}
_SHOWN = 60  # longest piece of expression text quoted in a message


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


def _segment(source: str, node: ast.AST) -> str:
    """The text of a node as written, shortened for a message.

    Taken from the source rather than ast.unparse, which recurses and so could fail on a
    deep tree that the whitelist is about to refuse.
    """
    text = ast.get_source_segment(source, node) or type(node).__name__
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


def _dotted(node: ast.expr) -> list[str] | None:
    """The parts of a dotted name (`press.force_kN`), or None when it is not one."""
    parts: list[str] = []
    current = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        return None
    parts.append(current.id)
    parts.reverse()
    return parts


def _name(node: ast.expr) -> str:
    return ".".join(_dotted(node) or ())


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
_REFUSED_COMPARE: dict[type[ast.cmpop], str] = {
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
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
        raise ExpressionError(f"expected an expression text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression is {len(text)} characters, more than {MAX_LENGTH}")
    # One line, same length: a condition may be folded over lines in YAML, and offsets into
    # the parsed text stay offsets into `text`.
    source = text.translate(BLANKS).lstrip()
    lead = len(text) - len(source)
    if not source.strip():
        raise ExpressionError("empty expression")
    if "\0" in text:
        raise ExpressionError("NUL character is not allowed", text.index("\0"))
    try:
        with warnings.catch_warnings():
            # An invalid escape ('\d') only warns; as an error it is refused, not guessed at.
            warnings.simplefilter("error")
            tree = ast.parse(source, mode="eval")
    except SyntaxError as err:
        col = lead + max((err.offset or 1) - 1, 0)
        raise ExpressionError(f"syntax error: {err.msg}", col) from None
    except (RecursionError, MemoryError):
        raise ExpressionError("expression is too complex to parse", lead) from None
    except UnicodeEncodeError as err:  # a lone surrogate: the parser reads UTF-8
        bad = source[err.start : err.start + 1]
        raise ExpressionError(f"character {bad!r} is not allowed", lead + err.start) from None
    except (ValueError, Warning) as err:  # anything else the parser refuses or warns about
        raise ExpressionError(f"cannot parse expression: {err}", lead) from None
    names: set[str] = set()
    _Whitelist(source, lead, names).visit_expr(tree.body, 0)
    return Expression(text, frozenset(names), tree.body, source, lead)


def _whole_digits(value: object) -> TypeGuard[int]:
    """True when `value` may be round()'s number of digits."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ROUND_DIGITS


class _Whitelist:
    """Walks a freshly parsed tree and refuses anything outside the whitelist or its bounds."""

    def __init__(self, source: str, lead: int, names: set[str]) -> None:
        self.source = source
        self.lead = lead
        self.names = names
        self.nodes = 0

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, _offset(self.source, self.lead, node))

    def count(self, node: ast.AST, added: int, level: int) -> None:
        """Add `added` parts reaching nesting `level`; refuse past the bounds."""
        self.nodes += added
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"expression has more than {MAX_NODES} parts")
        if level > MAX_DEPTH:
            raise self.fail(node, f"expression is nested more than {MAX_DEPTH} deep")

    def visit_expr(self, node: ast.expr, depth: int) -> None:
        self.count(node, 1, depth)
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
                    word = _REFUSED_COMPARE.get(type(op), type(op).__name__)
                    raise self.fail(node, f"'{word}' is not allowed")
            self.visit_expr(node.left, nested)
            for comparator in node.comparators:
                self.visit_expr(comparator, nested)
        elif isinstance(node, ast.Constant):
            self.visit_constant(node)
        elif isinstance(node, ast.Name | ast.Attribute):
            self.visit_name(node, depth)
        elif isinstance(node, ast.Call):
            self.visit_call(node, nested)
        else:
            what = _REFUSED.get(type(node), type(node).__name__)
            raise self.fail(node, f"{what} not allowed in an expression")

    def visit_constant(self, node: ast.Constant) -> None:
        value = node.value
        written = _segment(self.source, node)
        if isinstance(value, bool):
            raise self.fail(node, f"{written} is not allowed: write '{str(value).lower()}'")
        if isinstance(value, str):
            if len(value) > MAX_STRING:
                raise self.fail(node, f"string of {len(value)} characters, more than {MAX_STRING}")
        elif isinstance(value, int):
            if value > MAX_INT:  # a literal is never negative: '-5' is a unary minus
                raise self.fail(node, f"number {written} is too large (at most 2**64 - 1)")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise self.fail(node, f"number {written} is too large for a float")
        elif value is None:
            raise self.fail(node, "None is not allowed: an expression has no empty value")
        else:
            raise self.fail(node, f"{type(value).__name__} {written} is not allowed")

    def require_ascii(self, node: ast.expr) -> None:
        """Refuse a name written with other than ASCII characters.

        Python's parser folds names by NFKC: 'ｐｒｅｓｓ' and 'ᵖress' would read 'press', so the
        text would name something other than what it shows.
        """
        written = ast.get_source_segment(self.source, node) or ""
        bad = next((i for i, c in enumerate(written) if not c.isascii()), None)
        if bad is not None:
            raise ExpressionError(
                f"name {_segment(self.source, node)!r}: {written[bad]!r} is not an ASCII "
                "letter; names are ASCII letters, digits and '_' (e.g. press.force_kN)",
                _offset(self.source, self.lead, node) + bad,
            )

    def visit_name(self, node: ast.Name | ast.Attribute, depth: int) -> None:
        parts = _dotted(node)
        if parts is None:
            raise self.fail(node, "attributes are allowed only on names ('press.force_kN')")
        self.require_ascii(node)
        # A dotted name is one node per part: 'a.b.c' nests three deep.
        self.count(node, len(parts) - 1, depth + len(parts) - 1)
        for part in parts:
            if part.startswith("_"):
                raise self.fail(node, f"names starting with '_' are not allowed ({part!r})")
        name = ".".join(parts)
        if name in FUNCTIONS:
            raise self.fail(node, f"{name} is a function: call it as {name}(...)")
        if name not in _LITERALS:
            self.names.add(name)

    def visit_call(self, node: ast.Call, depth: int) -> None:
        func = node.func
        if isinstance(func, ast.Name):
            self.require_ascii(func)
        name = func.id if isinstance(func, ast.Name) else None
        if name not in FUNCTIONS:
            shown = name or _segment(self.source, func)
            raise self.fail(node, f"call to {shown!r} not allowed (only {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise self.fail(node, f"{name}() takes no keyword arguments")
        low, high = _ARITY[name]
        if not low <= len(node.args) <= high:
            count = f"{low}" if low == high else f"{low} to {high}"
            raise self.fail(node, f"{name}() takes {count} arguments, got {len(node.args)}")
        for arg in node.args:
            self.visit_expr(arg, depth)
        if name == "round" and len(node.args) == 2:
            digits = node.args[1]
            negative = isinstance(digits, ast.UnaryOp) and isinstance(digits.op, ast.USub)
            literal = digits.operand if isinstance(digits, ast.UnaryOp) else digits
            if isinstance(literal, ast.Constant) and not _whole_digits(literal.value):
                raise self.fail(
                    digits,
                    f"round() digits must be a whole number in -{MAX_ROUND_DIGITS}.."
                    f"{MAX_ROUND_DIGITS}, got {'-' if negative else ''}"
                    f"{_segment(self.source, literal)}",
                )


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

    def text(self, node: ast.AST) -> str:
        return _segment(self.expr._source, node)

    def infer(self, node: ast.expr) -> Kind | None:
        if isinstance(node, ast.Constant):
            return Kind.STRING if isinstance(node.value, str) else Kind.NUMBER
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
            return self.number([node.operand], f"unary '{sign}'")
        if isinstance(node, ast.BinOp):
            return self.number([node.left, node.right], f"'{_BINOPS[type(node.op)][0]}'")
        if isinstance(node, ast.Compare):
            self.compare(node)
            return Kind.BOOL
        if isinstance(node, ast.Call):
            return self.number(node.args, f"{_name(node.func)}()")
        return None  # unreachable after parse's whitelist

    def name(self, node: ast.expr) -> Kind | None:
        name = _name(node)
        if name in _LITERALS:
            return Kind.BOOL
        if name not in self.types:
            self.problem(node, f"unknown name {name!r}{did_you_mean(name, self.types)}")
            return None
        return self.types[name]

    def want(self, node: ast.expr, kind: Kind, where: str) -> bool:
        """Report an operand that is not of `kind`; False when it was reported."""
        found = self.infer(node)
        if found is not None and found is not kind:
            # Strings only compare: adding or repeating them could build any text at run time.
            hint = " (strings can only be compared)" if found is Kind.STRING else ""
            self.problem(
                node, f"{where} needs {_a(kind)}, but {self.text(node)!r} is {_a(found)}{hint}"
            )
            return False
        return True

    def number(self, operands: list[ast.expr], where: str) -> Kind | None:
        """A number from `operands`; None when one was wrong, so one fault is reported once."""
        fits = [self.want(operand, Kind.NUMBER, where) for operand in operands]
        return Kind.NUMBER if all(fits) else None

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
                        f"cannot compare {_a(left)} ({self.text(left_node)!r}) with "
                        f"{_a(right)} ({self.text(right_node)!r})",
                    )
                elif left is Kind.BOOL and symbol not in ("==", "!="):
                    self.problem(node, f"'{symbol}' does not apply to conditions")
            left, left_node = right, right_node


def evaluate(expr: Expression, values: Mapping[str, Value]) -> Value:
    """The value of an expression, reading names from `values`; raises EvaluationError."""
    return _Evaluator(expr, values).eval(expr.tree)


def _value_kind(value: object) -> Kind | None:
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, int | float):
        return Kind.NUMBER
    return Kind.STRING if isinstance(value, str) else None


def _beyond_float(value: float) -> bool:
    """True for a result no float can hold: an infinity, or a whole number past the float range."""
    if isinstance(value, float):
        return math.isinf(value)
    return abs(value) > sys.float_info.max


class _Evaluator:
    def __init__(self, expr: Expression, values: Mapping[str, Value]) -> None:
        self.expr = expr
        self.values = values

    def fail(self, message: str) -> EvaluationError:
        return EvaluationError(f"{message} in {self.expr.text!r}")

    def text(self, node: ast.AST) -> str:
        return _segment(self.expr._source, node)

    def eval(self, node: ast.expr) -> Value:
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float | str):
            return node.value
        if isinstance(node, ast.Name | ast.Attribute):
            name = _name(node)
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
            return self.arithmetic(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(f"{type(node).__name__} cannot be evaluated")  # unreachable

    def arithmetic(self, node: ast.BinOp) -> Value:
        function = _BINOPS[type(node.op)][1]
        left, right = self.number(node.left), self.number(node.right)
        try:
            result = function(left, right)
        except ZeroDivisionError:
            raise self.fail(f"division by zero ({self.text(node)!r})") from None
        except OverflowError:
            result = math.inf
        if _beyond_float(result):
            raise self.fail(f"number too large ({self.text(node)!r})")
        return result

    def condition(self, node: ast.expr) -> bool:
        value = self.eval(node)
        if not isinstance(value, bool):
            raise self.fail(f"{self.text(node)!r} is {value!r}, not true or false")
        return value

    def number(self, node: ast.expr) -> int | float:
        value = self.eval(node)
        if _value_kind(value) is not Kind.NUMBER:
            raise self.fail(f"{self.text(node)!r} is {value!r}, not a number")
        assert isinstance(value, int | float)
        return value

    def compare(self, node: ast.Compare) -> bool:
        left = self.eval(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            right = self.eval(right_node)
            symbol, function = _COMPARE[type(op)]
            kind = _value_kind(left)
            if kind is None or kind is not _value_kind(right):
                raise self.fail(f"cannot compare {left!r} {symbol} {right!r}")
            if kind is Kind.BOOL and symbol not in ("==", "!="):
                raise self.fail(f"cannot compare {left!r} {symbol} {right!r}")
            if not function(left, right):
                return False
            left = right
        return True

    def call(self, node: ast.Call) -> Value:
        name = _name(node.func)
        args = [self.number(arg) for arg in node.args]
        if name == "abs":
            return abs(args[0])
        if name == "min":
            return min(args)
        if name == "max":
            return max(args)
        digits = args[1] if len(args) == 2 else None
        if digits is not None and not _whole_digits(digits):
            raise self.fail(
                f"round() needs whole digits in -{MAX_ROUND_DIGITS}..{MAX_ROUND_DIGITS}, "
                f"got {digits!r}"
            )
        try:
            return round(args[0], digits)
        except (OverflowError, ValueError):  # round(inf) or round(nan)
            raise self.fail(f"cannot round {args[0]!r}") from None


def show(value: Value | None) -> str:
    """A value as an expression writes it: true, 12.0, 'A12'; '—' for no value."""
    return repr(value) if isinstance(value, str) else format_value(value)


def show_values(values: Mapping[str, Value | None]) -> str:
    """'press.force_kN = 12.0, safety.ok = false': tags (or names) and their values."""
    return ", ".join(f"{name} = {show(value)}" for name, value in values.items())


def conjuncts(expression: Expression) -> list[Expression]:
    """The parts of a top-level `and` (nested ones flattened), else the expression itself."""
    tree = expression.tree
    if not (isinstance(tree, ast.BoolOp) and isinstance(tree.op, ast.And)):
        return [expression]
    parts: list[Expression] = []
    for node in tree.values:
        # Parsed again from its own text: a part of a checked expression parses as one.
        text = ast.get_source_segment(expression._source, node) or expression.text
        parts.extend(conjuncts(parse(text)))
    return parts


def false_parts(expression: Expression, values: Mapping[str, Value | None]) -> list[str]:
    """Each part of a top-level `and` that is not true on `values`, with the values it read:
    'press.cycle_done is true (press.cycle_done = true)'; a tag without a value (None) is
    named as such."""
    known = {name: value for name, value in values.items() if value is not None}
    found: list[str] = []
    for part in conjuncts(expression):
        read = {name: value for name, value in values.items() if name in part.names}
        missing = [name for name in read if name not in known]
        if missing:
            found.append(f"{part.text}: no value for {', '.join(missing)}")
            continue
        try:
            if evaluate(part, known) is True:
                continue
        except EvaluationError as err:
            found.append(f"{part.text} cannot be evaluated: {err}")
            continue
        tree = part.tree
        negated = isinstance(tree, ast.UnaryOp) and isinstance(tree.op, ast.Not)
        if isinstance(tree, ast.UnaryOp) and negated and _name(tree.operand) in read:
            said = f"{_name(tree.operand)} is true"
        elif _name(tree) in read:
            said = f"{_name(tree)} is false"
        elif isinstance(tree, ast.BoolOp):
            said = f"({part.text}) is false"
        else:
            said = f"{part.text} is false"
        found.append(f"{said} ({show_values(read)})" if read else said)
    return found
