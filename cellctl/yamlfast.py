"""Parse a plain YAML file fast: libyaml (PyYAML's C parser) composes the nodes, with the line
and column of each, and they are built into the very data ruamel's round-trip loader makes.

The data: ruamel's CommentedMap and CommentedSeq with every key's, value's and item's position,
quoted and block strings as ruamel's string types, numbers built by ruamel's own constructor;
so every position and value a problem is told with is the one the round-trip loader gives.

Only documents where nothing needs the round-trip loader's eye are built here: `fast_data`
returns None for an anchor, an alias, a tag, a merge key, a duplicate key, a key that is not
text, a directive, a number too long, too many nodes, an unusual character, any parse error,
and the caller parses the file with the round-trip loader, which locates and words every
problem (cellctl.yamlload). Parsing is most of the cost of loading: ruamel's pure-Python parser
takes about 1 ms per recipe step, libyaml a twentieth of it.
"""

from __future__ import annotations

import gc
import re
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.nodes import ScalarNode as RuamelScalar
from ruamel.yaml.resolver import VersionedResolver
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    FoldedScalarString,
    LiteralScalarString,
    SingleQuotedScalarString,
)
from ruamel.yaml.tag import Tag
from yaml import MappingNode, ScalarNode, SequenceNode
from yaml._yaml import CParser

__all__ = ["fast_data"]

_STR = "tag:yaml.org,2002:str"
_NULL = "tag:yaml.org,2002:null"
_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
#: Plain scalars ruamel's constructor builds (ScalarInt, ScalarFloat, TimeStamp, ...).
_BUILT_BY_RUAMEL = frozenset({_INT, _FLOAT, "tag:yaml.org,2002:timestamp"})
#: Characters both parsers read alike: printable text without NEL, LS, PS or a BOM, whose
#: handling as line breaks differs between YAML 1.1 (libyaml) and 1.2 (ruamel), and without
#: tabs (libyaml takes 'a\tb: c' as a key, ruamel refuses it).
_UNUSUAL = re.compile(
    "[^\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufefe\uff00-\ufffd\U00010000-\U0010ffff]"
)
#: A directive (%YAML 1.1 changes how ruamel resolves plain scalars, %TAG adds tag handles).
_DIRECTIVE = re.compile(r"^%", re.MULTILINE)


#: ruamel's string type of each scalar style but '>' (FoldedScalarString).
_STRING_TYPES: dict[str, type[str]] = {
    '"': DoubleQuotedScalarString,
    "'": SingleQuotedScalarString,
    "|": LiteralScalarString,
}


class _Implicit(str):
    """A tag the parser resolved from a scalar's text, not one written in the file."""

    __slots__ = ()


_MAP = _Implicit("tag:yaml.org,2002:map")
_SEQ = _Implicit("tag:yaml.org,2002:seq")
#: A scalar with a non-specific tag ('! x'): the round-trip loader decides what it is.
_EXPLICIT = "!"


def _resolvers() -> dict[str | None, list[tuple[_Implicit, re.Pattern[str]]]]:
    """ruamel's YAML 1.2 implicit resolvers, by a scalar's first character (what `rt` uses)."""
    table: dict[Any, Any] = VersionedResolver(version=(1, 2)).versioned_resolver
    return {
        first: [(_Implicit(tag), regexp) for tag, regexp in entries]
        for first, entries in table.items()
    }


_RESOLVERS = _resolvers()
_ANY_FIRST = _RESOLVERS.get(None, [])
_PLAIN_STR = _Implicit(_STR)


class _Refused(Exception):
    """The document needs the round-trip loader."""


class _Parser(CParser):  # type: ignore[misc]  # PyYAML ships no type hints
    """libyaml's parser resolving plain scalars as ruamel's round-trip loader does."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.plain: dict[str, _Implicit] = {}

    def descend_resolver(self, parent: Any, index: Any) -> None:
        """No path resolvers: a node's tag depends on its text only."""

    def ascend_resolver(self) -> None:
        """No path resolvers (see descend_resolver)."""

    def resolve(self, kind: type, value: str | None, implicit: Any) -> str:
        """The tag of a node written without one (PyYAML's composer asks for each)."""
        if kind is ScalarNode:
            assert value is not None
            if implicit[0]:
                tag = self.plain.get(value)
                if tag is None:
                    tag = self.plain[value] = _resolve_plain(value)
                return tag
            return _PLAIN_STR if implicit[1] else _EXPLICIT
        if not implicit:
            return _EXPLICIT
        return _MAP if kind is MappingNode else _SEQ


def _resolve_plain(value: str) -> _Implicit:
    for tag, regexp in _RESOLVERS.get(value[:1], []) + _ANY_FIRST:
        if regexp.match(value):
            return tag
    return _PLAIN_STR


def fast_data(text: str, max_nodes: int, max_number_chars: int) -> Any:
    """The data of a plain YAML document as the round-trip loader builds it, or None when the
    document needs the round-trip loader (see the module's docstring)."""
    if _UNUSUAL.search(text) or _DIRECTIVE.search(text) or "\r" in text.replace("\r\n", ""):
        return None
    collecting = gc.isenabled()
    # The cyclic collector would walk the growing heap again and again while tens of thousands
    # of nodes are made (half the time); the nodes are freed by reference counting.
    gc.disable()
    try:
        return _built(text, max_nodes, max_number_chars)
    finally:
        if collecting:
            gc.enable()


def _built(text: str, max_nodes: int, max_number_chars: int) -> Any:
    try:
        root = _Parser(text).get_single_node()
        if root is None:
            return None
        builder = _Builder(text, max_nodes, max_number_chars)
        data = builder.build(root)
        if builder.starts is not None:
            # An anchor starts its node: refused (and an alias needs an anchor).
            ampersands = (match.start() for match in re.finditer("&", text))
            if not builder.starts.isdisjoint(ampersands):
                return None
    except Exception:  # any error at all: the round-trip loader words it and locates it
        return None
    return data


class _Builder:
    """Builds PyYAML's nodes into ruamel's round-trip data, refusing what it does not take."""

    def __init__(self, text: str, max_nodes: int, max_number_chars: int) -> None:
        self.left = max_nodes
        self.max_number_chars = max_number_chars
        #: The offset where each node starts, kept when the text may hold an anchor.
        self.starts: set[int] | None = set() if "&" in text else None
        self.seen: set[int] = set()
        self.numbers: dict[tuple[str, str], Any] = {}
        self._ruamel: YAML | None = None

    def build(self, node: Any) -> Any:
        """The data of one node and of everything under it."""
        self.left -= 1
        if self.left < 0:
            raise _Refused
        if self.starts is not None:
            if id(node) in self.seen:  # an alias: the node composed again
                raise _Refused
            self.seen.add(id(node))
            self.starts.add(node.start_mark.index)
        kind = type(node)
        if kind is ScalarNode:
            return self.scalar(node)
        if kind is MappingNode and node.tag is _MAP:
            return self.mapping(node)
        if kind is SequenceNode and node.tag is _SEQ:
            return self.sequence(node)
        raise _Refused

    def mapping(self, node: Any) -> CommentedMap:
        """A CommentedMap with each key's and value's position, as ruamel places them."""
        data = CommentedMap()
        mark = node.start_mark
        lines = data.lc
        lines.line, lines.col = mark.line, mark.column
        for key_node, value_node in node.value:
            if type(key_node) is not ScalarNode or key_node.tag is not _PLAIN_STR:
                raise _Refused  # a key that is a number, a list or tagged, or a merge key
            key = _text(key_node)
            if key in data:
                raise _Refused  # a duplicate key: the round-trip loader reports it
            self.left -= 1  # a key is a node too
            if self.starts is not None:
                self.starts.add(key_node.start_mark.index)
            value = self.build(value_node)
            key_mark, value_mark = key_node.start_mark, value_node.start_mark
            if value is None and not value_node.value and not value_node.style:
                # An empty value (`key:` and nothing): ruamel places it at a token nearby
                # (after the colon, or the next key's, lines on), libyaml elsewhere; no one
                # reads it (cellctl.yamldoc locates a null value at its key), so: the key's.
                value_mark = key_mark
            lines.add_kv_line_col(
                key, [key_mark.line, key_mark.column, value_mark.line, value_mark.column]
            )
            data[key] = value
        return data

    def sequence(self, node: Any) -> CommentedSeq:
        """A CommentedSeq with each item's position."""
        data = CommentedSeq()
        mark = node.start_mark
        lines = data.lc
        lines.line, lines.col = mark.line, mark.column
        for index, item in enumerate(node.value):
            data.append(self.build(item))
            item_mark = item.start_mark  # an empty item too: just after its '-', as ruamel's
            lines.add_idx_line_col(index, [item_mark.line, item_mark.column])
        return data

    def scalar(self, node: Any) -> Any:
        """A scalar as ruamel's round-trip constructor builds it (no anchor, no tag)."""
        tag = node.tag
        if tag is _PLAIN_STR:
            return _text(node)
        value: str = node.value
        if type(tag) is not _Implicit:
            raise _Refused  # written with a tag
        if tag == _NULL:
            return None
        if tag == _BOOL:
            return value[0] in "tT"  # 1.2 booleans: true, True, TRUE, false, False, FALSE
        if tag not in _BUILT_BY_RUAMEL:
            raise _Refused  # a merge key '<<', a value key '='
        if tag in (_INT, _FLOAT) and len(value) > self.max_number_chars:
            raise _Refused
        if tag == _INT and value[0] in "123456789" and value.isdigit():
            return int(value)  # what ruamel builds for a decimal without sign or underscore
        # ruamel's numbers (ScalarFloat, ScalarInt for 0 or 0x1F) are never changed in place:
        # one is built per text and reused.
        built = self.numbers.get((tag, value), self)
        if built is self:
            node = RuamelScalar(Tag(suffix=str(tag)), value, None, None, None)
            built = self.numbers[tag, value] = self.ruamel.constructor.construct_object(node)
        return built

    @property
    def ruamel(self) -> YAML:
        """A round-trip loader whose constructor builds the numbers (made once per file)."""
        if self._ruamel is None:
            self._ruamel = YAML(typ="rt")
            self._ruamel.preserve_quotes = True
        return self._ruamel


def _text(node: Any) -> str:
    """A text scalar as the round-trip loader keeps it: quoted and block styles remembered."""
    style = node.style
    value: str = node.value
    if not style:  # PyYAML's plain style is ''
        return value
    kind = _STRING_TYPES.get(style, FoldedScalarString)
    styled: str = kind(value)
    return styled
