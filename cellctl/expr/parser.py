"""`parse`: expression text to a tree of cellctl.expr.nodes, through Python's `ast` and a whitelist.

The text is never given to eval, exec or compile. `ast.parse` reads it; the builder below walks
the raw `ast` once, refuses every node type outside the whitelist or past a bound, and builds
the node tree that every other walk uses. This is the only module that sees `ast` nodes.
"""

from __future__ import annotations

import ast
import math
import warnings
from typing import TypeGuard

from cellctl.expr.language import FUNCTIONS, ExpressionError, shorten
from cellctl.expr.nodes import (
    BinaryOp,
    BinOp,
    BoolOp,
    BoolOperator,
    Call,
    Compare,
    CompareOp,
    Constant,
    Expression,
    Name,
    Node,
    Unary,
    UnaryOp,
)
from cellctl.expr.queries import names_of

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

#: Line breaks and tabs as spaces: a text folded over lines, on one line of the same length.
BLANKS = str.maketrans("\n\r\t", "   ")
LITERALS = {"true": True, "false": False}
_ARITY = {"abs": (1, 1), "round": (1, 2), "min": (2, 16), "max": (2, 16)}

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
_BINOPS: dict[type[ast.operator], BinaryOp] = {
    ast.Add: "+",
    ast.Sub: "-",
    ast.Mult: "*",
    ast.Div: "/",
    ast.FloorDiv: "//",
    ast.Mod: "%",
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
_COMPARE: dict[type[ast.cmpop], CompareOp] = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_REFUSED_COMPARE: dict[type[ast.cmpop], str] = {
    ast.In: "in",
    ast.NotIn: "not in",
    ast.Is: "is",
    ast.IsNot: "is not",
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
    parsed = _ast_of(source, lead)  # first: the builder needs text that encodes as UTF-8
    tree = _Builder(source, lead).build(parsed, 0)
    return Expression(text, names_of(tree), tree)


def _ast_of(source: str, lead: int) -> ast.expr:
    """Python's parse of the text; every way it can fail as an ExpressionError."""
    try:
        with warnings.catch_warnings():
            # An invalid escape ('\d') only warns; as an error it is refused, not guessed at.
            warnings.simplefilter("error")
            return ast.parse(source, mode="eval").body
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


def whole_digits(value: object) -> TypeGuard[int]:
    """True when `value` may be round()'s number of digits."""
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_ROUND_DIGITS


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


class _Builder:
    """Walks a freshly parsed `ast` tree: refuses anything outside the whitelist or its bounds,
    and builds the node tree of what it allows."""

    def __init__(self, source: str, lead: int) -> None:
        self.source = source
        self.encoded = source.encode("utf-8")  # ast counts UTF-8 bytes, not characters
        self.lead = lead
        self.nodes = 0

    def at(self, node: ast.AST) -> int:
        """The character offset of `node` in the expression text."""
        byte_col = getattr(node, "col_offset", 0)
        return self.lead + len(self.encoded[:byte_col].decode("utf-8", errors="ignore"))

    def written(self, node: ast.expr) -> str:
        """The text of a node as written.

        Taken from the source rather than ast.unparse, which recurses and so could fail on a
        deep tree that the whitelist is about to refuse.
        """
        if node.lineno == node.end_lineno == 1:
            # The usual case, one line: a slice, rather than splitting the text per node.
            return self.encoded[node.col_offset : node.end_col_offset].decode("utf-8")
        return ast.get_source_segment(self.source, node) or type(node).__name__

    def fail(self, node: ast.AST, message: str) -> ExpressionError:
        return ExpressionError(message, self.at(node))

    def count(self, node: ast.AST, added: int, level: int) -> None:
        """Add `added` parts reaching nesting `level`; refuse past the bounds."""
        self.nodes += added
        if self.nodes > MAX_NODES:
            raise self.fail(node, f"expression has more than {MAX_NODES} parts")
        if level > MAX_DEPTH:
            raise self.fail(node, f"expression is nested more than {MAX_DEPTH} deep")

    def build(self, node: ast.expr, depth: int) -> Node:
        """The node for `node`, its operands built (and checked) at the next level."""
        self.count(node, 1, depth)
        nested = depth + 1
        at, text = self.at(node), self.written(node)
        if isinstance(node, ast.BoolOp):
            word: BoolOperator = "and" if isinstance(node.op, ast.And) else "or"
            return BoolOp(word, tuple(self.build(v, nested) for v in node.values), at, text)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node, nested, at, text)
        if isinstance(node, ast.BinOp):
            refused = _REFUSED_BINOPS.get(type(node.op))
            if refused is not None:
                raise self.fail(node, f"{refused} is not allowed in an expression")
            left, right = self.build(node.left, nested), self.build(node.right, nested)
            return BinOp(_BINOPS[type(node.op)], left, right, at, text)
        if isinstance(node, ast.Compare):
            return self.compare(node, nested, at, text)
        if isinstance(node, ast.Constant):
            return Constant(self.constant(node), at, text)
        if isinstance(node, ast.Name | ast.Attribute):
            name = self.name(node, depth)
            if name in LITERALS:
                return Constant(LITERALS[name], at, text)
            return Name(name, at, text)
        if isinstance(node, ast.Call):
            return self.call(node, nested, at, text)
        what = _REFUSED.get(type(node), type(node).__name__)
        raise self.fail(node, f"{what} not allowed in an expression")

    def unary(self, node: ast.UnaryOp, depth: int, at: int, text: str) -> Unary:
        if isinstance(node.op, ast.Invert):
            raise self.fail(node, "'~' is not allowed (write 'not')")
        op: UnaryOp = "-" if isinstance(node.op, ast.USub) else "+"
        if isinstance(node.op, ast.Not):
            op = "not"
        return Unary(op, self.build(node.operand, depth), at, text)

    def compare(self, node: ast.Compare, depth: int, at: int, text: str) -> Compare:
        ops: list[CompareOp] = []
        for op in node.ops:
            if type(op) not in _COMPARE:
                word = _REFUSED_COMPARE.get(type(op), type(op).__name__)
                raise self.fail(node, f"'{word}' is not allowed")
            ops.append(_COMPARE[type(op)])
        left = self.build(node.left, depth)
        comparators = tuple(self.build(c, depth) for c in node.comparators)
        return Compare(left, tuple(ops), comparators, at, text)

    def constant(self, node: ast.Constant) -> int | float | str:
        value = node.value
        written = shorten(self.written(node))
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
        return value

    def require_ascii(self, node: ast.expr) -> None:
        """Refuse a name written with other than ASCII characters.

        Python's parser folds names by NFKC: 'ｐｒｅｓｓ' and 'ᵖress' would read 'press', so the
        text would name something other than what it shows.
        """
        written = ast.get_source_segment(self.source, node) or ""
        bad = next((i for i, c in enumerate(written) if not c.isascii()), None)
        if bad is not None:
            raise ExpressionError(
                f"name {shorten(self.written(node))!r}: {written[bad]!r} is not an ASCII "
                "letter; names are ASCII letters, digits and '_' (e.g. press.force_kN)",
                self.at(node) + bad,
            )

    def name(self, node: ast.Name | ast.Attribute, depth: int) -> str:
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
        return name

    def call(self, node: ast.Call, depth: int, at: int, text: str) -> Call:
        func = node.func
        if isinstance(func, ast.Name):
            self.require_ascii(func)
        name = func.id if isinstance(func, ast.Name) else None
        if name not in FUNCTIONS:
            shown = name or shorten(self.written(func))
            raise self.fail(node, f"call to {shown!r} not allowed (only {', '.join(FUNCTIONS)})")
        if node.keywords:
            raise self.fail(node, f"{name}() takes no keyword arguments")
        low, high = _ARITY[name]
        if not low <= len(node.args) <= high:
            count = f"{low}" if low == high else f"{low} to {high}"
            raise self.fail(node, f"{name}() takes {count} arguments, got {len(node.args)}")
        args = tuple(self.build(arg, depth) for arg in node.args)
        if name == "round" and len(node.args) == 2:
            self.round_digits(node.args[1])
        return Call(name, args, at, text)

    def round_digits(self, digits: ast.expr) -> None:
        """Refuse a literal number of digits that round() could not take."""
        negative = isinstance(digits, ast.UnaryOp) and isinstance(digits.op, ast.USub)
        literal = digits.operand if isinstance(digits, ast.UnaryOp) else digits
        if isinstance(literal, ast.Constant) and not whole_digits(literal.value):
            raise self.fail(
                digits,
                f"round() digits must be a whole number in -{MAX_ROUND_DIGITS}.."
                f"{MAX_ROUND_DIGITS}, got {'-' if negative else ''}"
                f"{shorten(self.written(literal))}",
            )
