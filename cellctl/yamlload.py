"""Load a YAML file keeping line numbers and refuse what is unsafe: too large, not UTF-8, nested
too deeply, alias bombs, numbers too long.

Shared by the cell file and the recipe file: every problem comes out as a `Problem` with the
1-based line and column of the offending key or value. A plain file is parsed by libyaml
(cellctl.yamlfast) into the data ruamel's round-trip parser would build; any other, and every
file with a problem the parser sees, by the round-trip parser, which locates each problem.
The document type lives in cellctl.yamldoc and pydantic's errors are translated in
cellctl.modelerrors; both are re-exported here, the one module loaders import.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from cellctl.errors import Problem, ValidationFailed
from cellctl.files import read_regular
from cellctl.modelerrors import Describe, Where, validation_problems
from cellctl.yamldoc import Alias, DuplicateKey, KeyPath, Loc, YamlDocument, scalar_offset
from cellctl.yamlfast import fast_data

__all__ = [
    "MAX_BYTES",
    "MAX_FLOW_DEPTH",
    "MAX_NODES",
    "MAX_NUMBER_CHARS",
    "Alias",
    "Describe",
    "DuplicateKey",
    "KeyPath",
    "Loc",
    "Where",
    "YamlDocument",
    "load_yaml",
    "parse_yaml",
    "plain",
    "read_file",
    "scalar_offset",
    "validation_problems",
]

#: Files larger than this are refused unread: cell and recipe files are a few kilobytes.
MAX_BYTES = 1024 * 1024
#: Nodes a document may expand to through aliases; more is an alias bomb ("billion laughs").
MAX_NODES = 200_000
#: Deepest nesting of flow collections ([...] and {...}) accepted.
MAX_FLOW_DEPTH = 64
#: Longest number (characters as written) accepted: far more than any value a cell or a
#: recipe holds, and far fewer than the 4300 digits past which Python refuses to read an int.
MAX_NUMBER_CHARS = 100
_NUMBER_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
_BRACKETS = re.compile(r"[\[\]{}]")


def load_yaml(path: Path, *, max_bytes: int = MAX_BYTES) -> YamlDocument:
    """Read and parse a YAML file; raises ValidationFailed for a file that cannot be used at all.

    Non-fatal problems (duplicate keys) are returned in the document's `problems`.
    """
    return parse_yaml(read_file(path, max_bytes=max_bytes), str(path), max_bytes=max_bytes)


def read_file(path: Path, *, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of a cell file or recipe (one more than `max_bytes` at most, for parse_yaml
    to refuse); ValidationFailed naming the file when it is not a readable regular file."""
    try:
        return read_regular(path, max_bytes + 1)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValidationFailed(
            [Problem(str(path), 1, 1, "unreadable", f"cannot read: {reason}")]
        ) from err


def _fail(name: str, line: int, col: int, code: str, message: str) -> ValidationFailed:
    return ValidationFailed([Problem(name, line, col, code, message)])


def parse_yaml(
    raw: bytes, name: str, *, max_bytes: int = MAX_BYTES, round_trip: bool = False
) -> YamlDocument:
    """Parse YAML bytes from a file called `name`; see load_yaml.

    A plain document is parsed by libyaml (cellctl.yamlfast); anything else, every problem
    included, by ruamel's round-trip parser. `round_trip` takes that parser for every file:
    the data and positions are the same either way (tests/test_yaml_fast.py checks it).
    """
    if len(raw) > max_bytes:
        raise _fail(name, 1, 1, "too-large", f"file is larger than {max_bytes} bytes; refused")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line, col = _line_col(raw, err.start)
        raise _fail(
            name, line, col, "encoding", "file is not UTF-8 text (save it as UTF-8)"
        ) from None
    deep = _too_deep_flow(text)
    if deep is not None:
        line, col = _line_col(text.encode("utf-8"), len(text[:deep].encode("utf-8")))
        raise _fail(name, line, col, "too-deep", "YAML is nested too deeply; refused")
    try:
        return _parse_text(text, name, round_trip=round_trip)
    except RecursionError:
        raise _fail(name, 1, 1, "too-deep", "YAML is nested too deeply; refused") from None


def _too_deep_flow(text: str) -> int | None:
    """Offset of a '[' or '{' nested more than MAX_FLOW_DEPTH deep, else None.

    ruamel's scanner takes quadratic time on deeply nested flow collections (3000 levels: ~20 s),
    so they are refused before parsing. Brackets in strings count too: no real file nests 64.
    """
    if text.count("[") + text.count("{") <= MAX_FLOW_DEPTH:
        return None
    depth = 0
    for match in _BRACKETS.finditer(text):  # the brackets only, not every character
        if match.group() in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                return match.start()
        else:
            depth = max(0, depth - 1)
    return None


def _refuse_reused_anchors(name: str, composer: _Composer) -> None:
    """An anchor defined twice is a located problem, not a warning on the console."""
    if composer.reused:
        first, again = composer.reused[0]
        raise _fail(
            name,
            again.line + 1,
            again.column + 1,
            "duplicate-anchor",
            f"anchor defined twice (first at line {first.line + 1}): rename one",
        )


def _parse_text(text: str, name: str, *, round_trip: bool) -> YamlDocument:
    # libyaml builds a plain document twenty times faster; anything else (and every problem
    # the parser finds) goes through the round-trip parser, which locates it in its own words.
    data = None if round_trip else fast_data(text, MAX_NODES, MAX_NUMBER_CHARS)
    if data is not None:
        return YamlDocument(name, data)
    yaml = _yaml()
    try:
        node = yaml.compose(text)
        _refuse_reused_anchors(name, yaml.composer)
    except ReaderError as err:
        line, col = _line_col(text.encode("utf-8"), len(text[: err.position].encode("utf-8")))
        raise _fail(
            name, line, col, "yaml-syntax", f"character {err.character!r} is not allowed"
        ) from None
    except MarkedYAMLError as err:
        raise _syntax_failure(name, err) from None
    except YAMLError as err:  # any other parser complaint, still without a traceback
        raise _fail(name, 1, 1, "yaml-syntax", f"YAML error: {err}") from None
    if node is None:
        raise _fail(name, 1, 1, "empty", "file is empty")
    paths = _paths(name, node)
    duplicates = _duplicate_keys(name, node, paths)
    _refuse_bombs(name, node)
    aliases = _aliases(yaml.composer, paths)
    try:
        # Built from the nodes already composed: parsing is most of the cost of loading.
        data = yaml.constructor.construct_document(node)
    except MarkedYAMLError as err:
        raise _syntax_failure(name, err) from None
    except Exception as err:  # ruamel raises anything for a tag like '!!map x' or '!!int x'
        raise _fail(name, 1, 1, "yaml-syntax", f"YAML error: {err}") from None
    return YamlDocument(name, data, [d.problem for d in duplicates], duplicates, aliases)


class _Composer(Composer):
    """ruamel's composer, noting each alias where it is used (the composed node keeps only the
    anchor's position) and each anchor defined again (ruamel only warns, in text)."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        #: (parent node, key node or index, alias name, its mark) of every alias.
        self.uses: list[tuple[Node, Any, str, Any]] = []
        #: (first mark, second mark) of every anchor defined a second time.
        self.reused: list[tuple[Any, Any]] = []
        self.warn_double_anchors = False  # noted in `reused` instead

    def compose_node(self, parent: Any, index: Any) -> Any:
        upcoming = self.parser.peek_event()
        event = upcoming if isinstance(upcoming, AliasEvent) else None
        if event is None and upcoming.anchor in self.anchors:
            self.reused.append((self.anchors[upcoming.anchor].start_mark, upcoming.start_mark))
        node = super().compose_node(parent, index)
        if event is not None:
            # A mapping's value is composed with its key node as `index`, a key with None: an
            # aliased key is then named by itself. A list's item has its position.
            where = node if index is None else index
            self.uses.append((parent, where, str(event.anchor), event.start_mark))
        return node


def _yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Composer = _Composer
    yaml.preserve_quotes = True  # lets a problem inside a quoted expression point at its column
    yaml.allow_duplicate_keys = True  # duplicates are found, all of them, in the composed nodes
    return yaml


def _line_col(data: bytes, offset: int) -> tuple[int, int]:
    line_start = data.rfind(b"\n", 0, offset) + 1
    return data.count(b"\n", 0, offset) + 1, offset - line_start + 1


def _syntax_failure(name: str, err: MarkedYAMLError) -> ValidationFailed:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    what = err.problem or err.context or "invalid YAML"
    if err.context and err.problem:
        what = f"{err.problem} ({err.context})"
    return ValidationFailed([Problem(name, line, col, "yaml-syntax", f"YAML syntax error: {what}")])


def _paths(name: str, root: Node) -> dict[int, KeyPath]:
    """The path of every node (by id) where it is first written: a node reached again is an
    alias, and an alias always follows its anchor, so the walk goes in the order written.
    """
    paths: dict[int, KeyPath] = {}
    stack: list[tuple[Node, KeyPath]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in paths:
            continue
        paths[id(node)] = path
        children: list[tuple[Node, KeyPath]] = []
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    # A '?' complex key: never needed here, and ruamel cannot always build it.
                    mark = key_node.start_mark
                    raise _fail(
                        name,
                        mark.line + 1,
                        mark.column + 1,
                        "yaml-syntax",
                        "a key must be a plain value, not a list or mapping",
                    )
                children.append((value_node, (*path, str(key_node.value))))
        elif isinstance(node, SequenceNode):
            children = [(item, (*path, index)) for index, item in enumerate(node.value)]
        stack.extend(reversed(children))
    return paths


def _duplicate_keys(name: str, root: Node, paths: dict[int, KeyPath]) -> list[DuplicateKey]:
    """Every duplicate key in every mapping, reported at its second occurrence."""
    found: list[DuplicateKey] = []
    for node in _mappings(root):
        loc = paths[id(node)]
        first: dict[str, int] = {}
        for key_node, _ in node.value:
            key = str(key_node.value)
            if key not in first:
                first[key] = key_node.start_mark.line + 1
                continue
            mark = key_node.start_mark
            where = ".".join(part for part in loc if isinstance(part, str))
            inside = f" in {where}" if where else ""
            message = f"duplicate key {key!r}{inside} (first at line {first[key]})"
            problem = Problem(name, mark.line + 1, mark.column + 1, "duplicate-key", message)
            found.append(DuplicateKey(loc, key, first[key], problem))
    return sorted(found, key=lambda d: (d.problem.line, d.problem.col))


def _mappings(root: Node) -> list[MappingNode]:
    """Every mapping node once (an aliased one is the same node)."""
    seen: set[int] = set()
    found: list[MappingNode] = []
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, MappingNode):
            found.append(node)
            stack.extend(value for _, value in node.value)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return found


def _aliases(composer: _Composer, paths: dict[int, KeyPath]) -> list[Alias]:
    """Every alias the composer met, at the path where it is used."""
    aliases: list[Alias] = []
    for parent, index, alias, mark in composer.uses:
        if parent is None:  # the whole document is an alias: YAML has no anchor for it
            continue
        loc = paths.get(id(parent), ())
        if isinstance(index, ScalarNode):  # a mapping's value, or an aliased key: the entry
            loc = (*loc, str(index.value))
        elif isinstance(index, int):  # a list's item
            loc = (*loc, index)
        aliases.append(Alias(loc, alias, mark.line + 1, mark.column + 1))
    return aliases


def _refuse_bombs(name: str, root: Node) -> None:
    """Refuse alias cycles, documents whose aliases expand to more than MAX_NODES nodes, and
    numbers longer than MAX_NUMBER_CHARS (each a located problem: building one would fail
    unlocated, int() of 5000 digits, or silently become inf). One walk, every node once."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    long_numbers: list[Problem] = []

    def size(node: Node) -> int:
        ident = id(node)
        if ident in sizes:
            return sizes[ident]
        if ident in on_path:
            mark = node.start_mark
            raise ValidationFailed(
                [Problem(name, mark.line + 1, mark.column + 1, "alias", "recursive alias refused")]
            )
        on_path.add(ident)
        total = 1
        children: list[Node] = []
        if isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        elif isinstance(node, SequenceNode):
            children = list(node.value)
        elif str(node.tag) in _NUMBER_TAGS and len(str(node.value)) > MAX_NUMBER_CHARS:
            length = len(str(node.value))
            message = f"number too long: {length} characters (at most {MAX_NUMBER_CHARS})"
            mark = node.start_mark
            long_numbers.append(Problem(name, mark.line + 1, mark.column + 1, "too-long", message))
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                mark = node.start_mark
                raise ValidationFailed(
                    [
                        Problem(
                            name,
                            mark.line + 1,
                            mark.column + 1,
                            "alias",
                            f"aliases expand this document past {MAX_NODES} nodes; refused",
                        )
                    ]
                )
        on_path.discard(ident)
        sizes[ident] = total
        return total

    size(root)
    if long_numbers:
        raise ValidationFailed(long_numbers)


def plain(value: Any) -> Any:
    """A YAML scalar as the builtin it stands for (ruamel's ScalarInt, ScalarFloat → int, float).

    Fields typed `Any` keep what the loader made; this keeps `type(v) is int` checks honest.
    """
    if isinstance(value, ScalarBoolean):  # an anchored true/false: an int subclass, not bool
        return bool(value)
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            return kind(value)
    return value
