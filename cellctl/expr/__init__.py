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

The rooms: `language` (kinds, functions, errors), `nodes` (the tree, Expression), `parser`
(text to tree, the one module that sees `ast`), `visitor` (the base of every walk), `typecheck`
(kinds), `ranges` (interval arithmetic), `evaluator`, `render` (values and trees back to text),
`explain` (why a condition is false), `queries` (names read, texts compared), `names`
(validators of the names files give). Import the public names from this package, not from its
modules.
"""

from __future__ import annotations

from cellctl.expr.evaluator import evaluate
from cellctl.expr.explain import conjuncts, false_parts
from cellctl.expr.language import FUNCTIONS, EvaluationError, ExpressionError, Kind, kind_of
from cellctl.expr.nodes import BinOp, BoolOp, Call, Compare, Constant, Expression, Name, Node, Unary
from cellctl.expr.parser import (
    BLANKS,
    MAX_DEPTH,
    MAX_INT,
    MAX_LENGTH,
    MAX_NODES,
    MAX_ROUND_DIGITS,
    MAX_STRING,
    parse,
)
from cellctl.expr.queries import compared_texts, names_of
from cellctl.expr.ranges import UNKNOWN_SPAN, Span, span_of
from cellctl.expr.render import render, show, show_values
from cellctl.expr.typecheck import check, infer
from cellctl.expr.visitor import Visitor, Walker

__all__ = [
    "BLANKS",
    "FUNCTIONS",
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_LENGTH",
    "MAX_NODES",
    "MAX_ROUND_DIGITS",
    "MAX_STRING",
    "UNKNOWN_SPAN",
    "BinOp",
    "BoolOp",
    "Call",
    "Compare",
    "Constant",
    "EvaluationError",
    "Expression",
    "ExpressionError",
    "Kind",
    "Name",
    "Node",
    "Span",
    "Unary",
    "Visitor",
    "Walker",
    "check",
    "compared_texts",
    "conjuncts",
    "evaluate",
    "false_parts",
    "infer",
    "kind_of",
    "names_of",
    "parse",
    "render",
    "show",
    "show_values",
    "span_of",
]
