"""The expression tree and its visitors: rendering, ranges, the questions asked of a tree."""

from __future__ import annotations

import ast
import math
import re
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellctl import expr
from cellctl.expr import Span
from drivers.base import Value
from tests.test_expr_fuzz import GOOD_BINARY, GOOD_LEAVES, expressions

NODE_KINDS = (
    expr.Constant,
    expr.Name,
    expr.Unary,
    expr.BoolOp,
    expr.BinOp,
    expr.Compare,
    expr.Call,
)


class _Substitute(ast.NodeTransformer):
    """The reference: parameter names replaced in Python's own tree, for ast.unparse."""

    def __init__(self, values: Mapping[str, Value]) -> None:
        self.values = values

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        return node

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id not in self.values:
            return node
        value = self.values[node.id]
        if isinstance(value, bool):
            return ast.Name("true" if value else "false", ast.Load())
        return ast.Constant(value)


def _reference(text: str, values: Mapping[str, Value]) -> str:
    parsed = expr.parse(text)
    if not parsed.names & values.keys():
        return text.strip()
    tree = ast.parse(text.translate(expr.BLANKS).strip(), mode="eval").body
    return ast.unparse(_Substitute(values).visit(tree))


PARAMETER_VALUES: st.SearchStrategy[Value] = st.one_of(
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=8),
)


@st.composite
def chains(draw: st.DrawFn) -> str:
    """Operands joined by operators without parentheses, so that precedence decides the tree."""
    leaves = draw(st.lists(st.one_of(GOOD_LEAVES, expressions(bad=False, depth=2)), min_size=1))
    text = leaves[0]
    for leaf in leaves[1:]:
        prefix = draw(st.sampled_from(["", "", "not ", "-", "+"]))
        text += f" {draw(st.sampled_from(GOOD_BINARY))} {prefix}{leaf}"
    return text


@given(
    text=st.one_of(expressions(bad=False), chains()),
    values=st.dictionaries(st.sampled_from(["count", "force", "ok", "lot"]), PARAMETER_VALUES),
)
@settings(max_examples=250)
def test_render_writes_what_ast_unparse_writes(text: str, values: dict[str, Value]) -> None:
    try:
        parsed = expr.parse(text)
    except expr.ExpressionError:
        return
    rendered = expr.render(parsed, values)
    assert rendered == _reference(text, values)


@pytest.mark.parametrize(
    ("text", "values", "rendered"),
    [
        ("a and b and c == d", {"a": True}, "true and b and (c == d)"),
        ("-p", {"p": -5}, "--5"),
        ("x * p", {"p": -2}, "x * -2"),
        ("(x + p) * 2", {"p": 1.5}, "(x + 1.5) * 2"),
        ("x - (p - 1)", {"p": 3}, "x - (3 - 1)"),
        ("not (ok or p)", {"p": False}, "not (ok or false)"),
        ("press.force_kN >= force * 0.95", {"force": 12.0}, "press.force_kN >= 12.0 * 0.95"),
        ("press.force >= 1", {"press": 2, "force": 3, "press.force": 4}, "press.force >= 1"),
        ("lot == 'A'", {"lot": "B"}, "'B' == 'A'"),
        ("  x  >  1 ", {"y": 1}, "x  >  1"),
        ("x > p", {"p": math.inf}, "x > 1e309"),
    ],
)
def test_render_examples(text: str, values: dict[str, Value], rendered: str) -> None:
    assert expr.render(expr.parse(text), values) == rendered


class _Kinds(expr.Walker):
    def __init__(self) -> None:
        self.seen: list[type] = []

    def visit(self, node: expr.Node) -> None:
        self.seen.append(type(node))
        super().visit(node)


@given(text=expressions(bad=False))
@settings(max_examples=200)
def test_the_tree_holds_only_expression_nodes(text: str) -> None:
    try:
        parsed = expr.parse(text)
    except expr.ExpressionError:
        return
    walker = _Kinds()
    walker.visit(parsed.tree)
    assert walker.seen
    assert all(kind in NODE_KINDS for kind in walker.seen), walker.seen


def test_a_walker_reaches_every_node_and_a_visitor_refuses_kinds_it_lacks() -> None:
    parsed = expr.parse("not (a < 1 <= max(b, -2)) or c.d == 'x' and true")
    walker = _Kinds()
    walker.visit(parsed.tree)
    assert walker.seen == [
        expr.BoolOp,
        expr.Unary,
        expr.Compare,
        expr.Name,
        expr.Constant,
        expr.Call,
        expr.Name,
        expr.Unary,
        expr.Constant,
        expr.BoolOp,
        expr.Compare,
        expr.Name,
        expr.Constant,
        expr.Constant,
    ]

    class OnlyNames(expr.Visitor[str]):
        def visit_name(self, node: expr.Name) -> str:
            return node.name

    assert OnlyNames().visit(expr.parse("c.d").tree) == "c.d"
    with pytest.raises(NotImplementedError, match="OnlyNames cannot visit Compare"):
        OnlyNames().visit(expr.parse("c.d == 1").tree)


def test_nodes_keep_their_text_and_offset() -> None:
    parsed = expr.parse("  press . force_kN >= max(1,2)")
    tree = parsed.tree
    assert isinstance(tree, expr.Compare)
    assert (tree.left.text, tree.left.at) == ("press . force_kN", 2)
    assert tree.left == expr.Name("press.force_kN", 2, "press . force_kN")
    (call,) = tree.comparators
    assert (call.text, parsed.offset(call)) == ("max(1,2)", 22)


def test_compared_texts_are_the_strings_compared_directly_with_a_name() -> None:
    parsed = expr.parse("'a' == mode != 'b' or (other < 'c' and mode == x) or mode + 1 == 'd'")
    found = [(name, text.value, text.at) for name, text in expr.compared_texts(parsed)]
    assert found == [("mode", "a", 0), ("mode", "b", 15), ("other", "c", 31)]


@pytest.mark.parametrize(
    ("text", "span"),
    [
        ("p * 2 + 1", Span(3, 11, True)),
        ("p / 2", Span(0.5, 2.5, False)),
        ("p // 2", Span(0, 2, True)),
        ("10 // (p - 3)", Span(-math.inf, math.inf, True)),
        ("q % p", Span(0, 5, True)),
        ("-p", Span(-5, -1, True)),
        ("+p", Span(1, 5, True)),
        ("abs(p - 3)", Span(0, 2, True)),
        ("abs(-p)", Span(1, 5, True)),
        ("min(p, 3)", Span(1, 3, True)),
        ("max(p, f)", Span(1, 5, False)),
        ("round(f)", Span(0, 1, True)),
        ("round(f, 1)", Span(0, 1, False)),
        ("round(f, -1)", Span(-math.inf, math.inf, False)),
        ("round(f, p)", Span(-math.inf, math.inf, False)),
        ("p * tag", Span(-math.inf, math.inf, False, False)),
        ("0 * tag", Span(0, 0, False, False)),
        ("p > 1", None),
        ("'x'", None),
        ("true", None),
        ("p * 1e308 * 10", Span(math.inf, math.inf, False)),
    ],
)
def test_span_of(text: str, span: Span | None) -> None:
    spans = {"p": Span(1, 5, True), "q": Span(-3, 30, True), "f": Span(0.25, 0.75, False)}
    assert expr.span_of(expr.parse(text), spans) == span


def test_only_the_parser_reads_python_ast() -> None:
    # Every other walk goes over the expression's own tree, through the one visitor base.
    package = Path(expr.__file__).resolve().parents[1]
    readers = sorted(
        str(path.relative_to(package.parent))
        for path in package.rglob("*.py")
        if re.search(r"^\s*(import ast\b|from ast import)", path.read_text(), re.MULTILINE)
    )
    assert readers == ["cellctl/expr/parser.py"]
