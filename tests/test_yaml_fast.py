"""The fast YAML path (libyaml) builds the data and positions the round-trip parser builds, and
leaves every document it does not take, every problem included, to the round-trip parser."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from cellctl.errors import Problem, ValidationFailed
from cellctl.yamlfast import fast_data
from cellctl.yamlload import MAX_NODES, MAX_NUMBER_CHARS, YamlDocument, parse_yaml

ROOT = Path(__file__).resolve().parent.parent
#: Every cell file and recipe the project ships or tests with.
FILES = sorted(
    path
    for folder in ("recipes", "tests", "hil_tests", "cellctl")
    for path in (ROOT / folder).rglob("*.yaml")
)


def _same(fast: Any, slow: Any, where: str = "root") -> None:
    """Equal data of equal types, with equal positions of every key, value and item."""
    assert type(fast) is type(slow), f"{where}: {type(fast)} != {type(slow)}"
    if isinstance(slow, CommentedMap | CommentedSeq):
        assert (fast.lc.line, fast.lc.col) == (slow.lc.line, slow.lc.col), where
        expected = dict(slow.lc.data or {})
        if isinstance(slow, CommentedMap):
            # A null value is located at its key (cellctl.yamldoc): where ruamel placed an
            # empty one (a token nearby) is never read, and the fast path puts the key's.
            for key, value in slow.items():
                if value is None and fast.lc.data[key][2:] == fast.lc.data[key][:2]:
                    expected[key] = [*expected[key][:2], *expected[key][:2]]
        assert (fast.lc.data or {}) == expected, where
    if isinstance(slow, dict):
        assert list(fast) == list(slow), where
        assert [type(key) for key in fast] == [type(key) for key in slow], where
        for key in slow:
            _same(fast[key], slow[key], f"{where}.{key}")
    elif isinstance(slow, list):
        assert len(fast) == len(slow), where
        for index, (one, other) in enumerate(zip(fast, slow, strict=True)):
            _same(one, other, f"{where}[{index}]")
    elif isinstance(slow, float) and math.isnan(slow):
        assert math.isnan(fast), where
    else:  # a TaggedScalar (of the round-trip parser on both sides) compares by identity
        assert fast == slow or repr(fast) == repr(slow), where


def _outcome(text: str, *, round_trip: bool) -> YamlDocument | list[Problem]:
    try:
        return parse_yaml(text.encode("utf-8"), "f.yaml", round_trip=round_trip)
    except ValidationFailed as err:
        return err.problems


def _agree(text: str) -> bool:
    """Both paths give the same document, or the same problems; True when libyaml took it."""
    fast, slow = _outcome(text, round_trip=False), _outcome(text, round_trip=True)
    if isinstance(slow, list):
        assert fast == slow
        return False
    assert isinstance(fast, YamlDocument)
    assert (fast.problems, fast.duplicates, fast.aliases) == (
        slow.problems,
        slow.duplicates,
        slow.aliases,
    )
    _same(fast.data, slow.data)
    return fast_data(text, MAX_NODES, MAX_NUMBER_CHARS) is not None


@pytest.mark.parametrize("path", FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_shipped_file_is_parsed_fast_as_the_round_trip_parser_does(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    taken = _agree(text)
    if "&" not in text and "<<" not in text and "*" not in text.replace(" * ", ""):
        assert taken, "a plain file takes the fast path"


STYLES = """\
plain: text with spaces   # a comment
"double": "with \\"escapes\\" \\t \\u00e9 \\x41 \\/ and: colon"
'single': 'it''s'
literal: |
  line one
    indented
  line three

folded: >-
  folded
  text

  kept paragraph
keep: |+
  kept

strip: >
  a
multi: plain
  over lines
unicode: "°C, µm, 温度, \U0001f600"
numbers: [0, 00, 07, 010, 1_000, +5, -3, 0x1F, 0xff, 0o17, 0b101, 1.5, -0.0, 1e3, 1.5e-3, .5,
  .inf, -.Inf, .nan, 6.02E+23, 12:30, 0.1_1]
words: [yes, no, on, off, y, n, True, FALSE, Null, ~, null, '', "", -, --, a-b]
dates: [2024-01-02, 2024-01-02T03:04:05Z, 2024-1-2 3:04:05.5 +01:00]
empty:
list:
  -
  - - nested
    - {inner: map, other: [1, 2]}
  - key: value
    second: 2
indentless:
- a
- b: c
flow: {a: 1, b: [x, y], c: {d: e}, "q": 'r', empty: , last}
long key with spaces: value
"key: with colon": "x"
? simple explicit key
: its value
windows: no
non-specific: [! x, ! 5, ! "5"]
"""


def test_every_scalar_style_and_number_form_gives_the_same_data_and_positions() -> None:
    assert _agree(STYLES)
    assert _agree(STYLES.replace("\n", "\r\n"))


@pytest.mark.parametrize(
    "text",
    [
        "a: &x 1\nb: *x\n",  # an alias
        "a: &x 1\n",  # an anchor alone: ruamel keeps it on the value
        "a: &x [1]\nb: *x\n",
        "a: !!int 3\n",  # tags
        "a: !!str 3\n",
        "a: !custom x\n",
        "a: !!map {b: 1}\n",
        "a: ! [1]\n",
        "base: {x: 1}\nb:\n  <<: {x: 2}\n",  # a merge key
        "a: 1\na: 2\n",  # a duplicate key
        "? [a, b]\n: c\n",  # a complex key
        "1: one\n",  # keys that are not text
        "true: yes\n",
        "~: x\n",
        "%YAML 1.1\n---\na: yes\n",  # a directive changes what a plain scalar is
        "%TAG !e! tag:example.com,2000:\n---\na: !e!x 1\n",
        f"a: {'9' * (MAX_NUMBER_CHARS + 1)}\n",  # a number too long
        f"a: 1.{'5' * MAX_NUMBER_CHARS}\n",
        "a: 1\x85b: 2\n",  # characters the two YAML versions break lines at differently
        "a: x\u2028y\n",
        "a: \ufeffx\n",
        "a: 1\rb: 2\n",
        "a: \x07\n",
        "tab\tinside: a key\n",  # libyaml takes it, ruamel refuses it
        "a: b\tc\n",
        "",  # nothing, or no mapping to speak of
        "~\n",
        "a: 1\n---\nb: 2\n",  # two documents
        "a: [1\n",  # broken syntax
        "a: b: c\n",
        "\t- tab\n",
        "a: *nowhere\n",
    ],
)
def test_what_the_fast_path_does_not_take_is_left_to_the_round_trip_parser(text: str) -> None:
    assert fast_data(text, MAX_NODES, MAX_NUMBER_CHARS) is None
    _agree(text)


def test_a_document_past_the_node_limit_is_left_to_the_round_trip_parser() -> None:
    text = "a: [" + ", ".join(["1"] * 10) + "]\n"
    # The mapping, its key, the list and its 10 items: as many nodes as the round-trip
    # loader counts (cellctl.yamlload._refuse_bombs).
    assert fast_data(text, 13, MAX_NUMBER_CHARS) is not None
    assert fast_data(text, 12, MAX_NUMBER_CHARS) is None


@pytest.mark.extended  # 10-20 s: the default suite keeps the limit's check above
@pytest.mark.timeout(180)  # a 200,000-item document through ruamel: slow on a loaded machine
def test_a_document_past_the_node_limit_is_refused_by_the_round_trip_parser() -> None:
    many = "a: [" + ",".join(["1"] * MAX_NODES) + "]\n"
    assert fast_data(many, MAX_NODES, MAX_NUMBER_CHARS) is None
    # Left to the round-trip parser, which refuses it as past the limit: parsed once (the
    # round-trip parse of MAX_NODES items is the slow part; `_agree` would do it twice).
    problems = _outcome(many, round_trip=False)
    assert isinstance(problems, list)
    assert [p.message for p in problems] == [
        f"aliases expand this document past {MAX_NODES} nodes; refused"
    ]


# Pieces of YAML, assembled into documents: indentation, flow and block, every scalar form.
KEYS = st.sampled_from(["a", "b", "id", "set", "x.y", "'q'", '"d"', "k k", "a:b", "-x", "é", "1"])
SCALARS = st.one_of(
    st.sampled_from(
        [
            "", "~", "null", "true", "False", "yes", "0", "007", "-1", "+2", "1_0", "0x1F",
            "0o7", "1.5", ".5", "1e3", ".inf", "-.nan", "2024-01-02", "12:30", "'s'", '"d"',
            '"a\\tb"', "'it''s'", "a b", "a#b", "a #c", "[1, 2]", "{a: 1}", "[]", "{}",
            "|\n  lit\n", ">-\n  fold\n  ed\n", "&a 1", "*a", "!!str 1", "<<", "- x", "°C",
        ]
    ),
    st.text(st.characters(codec="utf-8"), max_size=6),
)  # fmt: skip


@st.composite
def documents(draw: st.DrawFn) -> str:
    """A few lines of YAML at a few indentations, often valid, sometimes not."""
    lines = []
    for _ in range(draw(st.integers(1, 8))):
        indent = " " * draw(st.sampled_from([0, 0, 2, 4, 1]))
        lead = draw(st.sampled_from(["", "", "- ", "? ", ": "]))
        form = draw(st.sampled_from(["pair", "pair", "item", "flow", "scalar"]))
        key, value = draw(KEYS), draw(SCALARS)
        if form == "pair":
            lines.append(f"{indent}{lead}{key}: {value}")
        elif form == "item":
            lines.append(f"{indent}- {value}")
        elif form == "flow":
            lines.append(f"{indent}{key}: {{{key}: {value}, z: [{value}]}}")
        else:
            lines.append(f"{indent}{value}")
        if draw(st.booleans()):
            lines.append(f"{indent}  # a comment")
    return "\n".join(lines) + draw(st.sampled_from(["\n", "", "\n\n", "\r\n"]))


LEAVES = st.one_of(SCALARS.filter(lambda text: "\n" not in text), st.sampled_from(["", "# c"]))
TREES = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3),
        st.dictionaries(KEYS, children, min_size=1, max_size=3),
    ),
    max_leaves=12,
)


def _block(tree: Any, indent: int, flow: bool) -> list[str]:
    """A tree as block YAML, its innermost collections in flow style when `flow`."""
    pad = " " * indent
    is_map = isinstance(tree, dict)
    children = list(tree.values()) if is_map else list(tree)
    if flow and not any(isinstance(child, dict | list) for child in children):
        if is_map:
            return [pad + "{" + ", ".join(f"{k}: {v}" for k, v in tree.items()) + "}"]
        return [pad + "[" + ", ".join(tree) + "]"]
    lines: list[str] = []
    heads = [f"{pad}{key}:" for key in tree] if is_map else [f"{pad}-"] * len(tree)
    for head, child in zip(heads, children, strict=True):
        if isinstance(child, dict | list):
            lines.append(head)
            lines.extend(_block(child, indent + 2, flow))
        else:
            lines.append(f"{head} {child}")
    return lines


@st.composite
def nested_documents(draw: st.DrawFn) -> str:
    """A document of nested mappings and lists, mostly valid, with every scalar form."""
    tree = draw(st.dictionaries(KEYS, TREES, min_size=1, max_size=4))
    return "\n".join(_block(tree, 0, draw(st.booleans()))) + "\n"


@settings(max_examples=100, deadline=None)
@given(documents())
def test_assembled_documents_give_the_same_data_positions_and_problems(text: str) -> None:
    _agree(text)


@settings(max_examples=100, deadline=None)
@given(nested_documents())
def test_nested_documents_give_the_same_data_positions_and_problems(text: str) -> None:
    _agree(text)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_shipped_files_cut_and_spliced_give_the_same_outcome(data: st.DataObject) -> None:
    texts = [path.read_text(encoding="utf-8") for path in FILES[:12]]
    lines = data.draw(st.sampled_from(texts)).splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["delete", "duplicate", "cut", "indent", "insert"]))
        if action == "delete":
            del lines[at]
        elif action == "duplicate":
            lines.insert(data.draw(st.integers(0, len(lines))), lines[at])
        elif action == "cut":
            lines[at] = lines[at][: data.draw(st.integers(0, len(lines[at])))]
        elif action == "indent":
            lines[at] = " " + lines[at]
        else:
            lines.insert(at, data.draw(documents()))
        if not lines:
            lines = ["a: 1\n"]
    _agree("".join(lines))
