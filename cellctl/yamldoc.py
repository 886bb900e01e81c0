"""A parsed YAML document: its data with every key's and value's position, and problems
located in it (1-based line and column of the offending key or value)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ruamel.yaml.comments import CommentedBase
from ruamel.yaml.scalarstring import (
    DoubleQuotedScalarString,
    ScalarString,
    SingleQuotedScalarString,
)

from cellctl.errors import Problem, Subject

__all__ = [
    "Alias",
    "DuplicateKey",
    "KeyPath",
    "Loc",
    "SubjectOf",
    "YamlDocument",
    "no_subject",
    "scalar_offset",
]

#: A path into a document's data as pydantic gives it: keys, list indices, union tags.
Loc = Sequence[str | int]
#: A path from the document's root: mapping keys (as text) and list indices.
KeyPath = tuple[str | int, ...]
#: What the thing at a path is, for one kind of file (a cell's tag, a recipe's step), or None.
SubjectOf = Callable[[Loc], Subject | None]


def no_subject(loc: Loc) -> None:
    """A document not yet read as a kind of file: no path names a subject."""
    return None


@dataclass(frozen=True)
class DuplicateKey:
    """A key given twice in one mapping: the mapping's path, the key, its first line.

    `problem` is the report in `YamlDocument.problems`, at the second occurrence; a loader
    that can name the thing at `loc` better (a recipe's step) may say it its own way.
    """

    loc: KeyPath
    key: str
    first_line: int
    problem: Problem


@dataclass(frozen=True)
class Alias:
    """A YAML alias (`*name`): the path where it is used, its name, its own 1-based position.

    The data at `loc` is the anchored node itself, whose positions are the anchor's: a loader
    that must locate every problem honestly can refuse aliases, or not look inside them.
    """

    loc: KeyPath
    name: str
    line: int
    col: int


@dataclass
class YamlDocument:
    """A parsed YAML file: its data (ruamel round-trip objects) and problems found while loading."""

    file: str
    data: Any
    problems: list[Problem] = field(default_factory=list)
    #: The duplicate keys among `problems`, with where they are.
    duplicates: list[DuplicateKey] = field(default_factory=list)
    #: Every alias, in the order written.
    aliases: list[Alias] = field(default_factory=list)
    #: Names what a problem at a path is about; set by the loader of the file's kind.
    subject_of: SubjectOf = no_subject

    def about(self, subject_of: SubjectOf) -> YamlDocument:
        """This document read as one kind of file: every problem located in it, the duplicate
        keys found while parsing too, names what `subject_of` finds at its path.

        A copy, so that one parsed file can be read as either kind.
        """
        duplicates = [
            replace(dup, problem=replace(dup.problem, subject=subject_of((*dup.loc, dup.key))))
            for dup in self.duplicates
        ]
        # A problem's subject is not part of its identity: the old one finds the new one.
        again = {dup.problem: dup.problem for dup in duplicates}
        problems = [again.get(problem, problem) for problem in self.problems]
        return replace(self, problems=problems, duplicates=duplicates, subject_of=subject_of)

    def position(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """The 1-based (line, col) of the value at `loc`, or of its key when `key` is true.

        Elements of `loc` not found in the data (pydantic's union tags) are skipped; when the
        path ends early, the position of the deepest node reached is returned.
        """
        node: Any = self.data
        line, col = 0, 0
        if isinstance(node, CommentedBase):
            # A document that is one tagged scalar (`!foo x`) carries no position: line 1.
            line, col = node.lc.line or 0, node.lc.col or 0
        for index, part in enumerate(loc):
            last = index == len(loc) - 1
            found = _child_position(node, part, key=key and last)
            if found is None:
                continue
            (line, col), node = found
        return line + 1, col + 1

    def problem(
        self,
        loc: Loc,
        code: str,
        message: str,
        *,
        key: bool = False,
        col_offset: int = 0,
        subject: Subject | None = None,
    ) -> Problem:
        """A Problem located at `loc` (see `position`), `col_offset` characters further right,
        about `subject`, else about what the file's kind names at `loc` (see `about`)."""
        line, col = self.position(loc, key=key)
        if subject is None:
            subject = self.subject_of(loc)
        return Problem(self.file, line, col + col_offset, code, message, subject)

    def has(self, loc: Loc) -> bool:
        """True when every element of `loc` exists in the data."""
        node: Any = self.data
        for part in loc:
            in_map = isinstance(node, dict) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if not (in_map or in_list):
                return False
            node = node[part]
        return True


def _child_position(node: Any, part: str | int, *, key: bool) -> tuple[tuple[int, int], Any] | None:
    """((line, col), child) of one step into a mapping or sequence, or None if not there."""
    if isinstance(node, dict):
        match = _find_key(node, part)
        if match is None:
            return None
        pos: tuple[int, int] | None = None
        # An empty value has no text: ruamel places it at the next token, maybe lines on.
        at_key = key or node[match] is None
        if isinstance(node, CommentedBase):
            try:
                pos = node.lc.key(match) if at_key else node.lc.value(match)
            except (KeyError, TypeError):  # a key merged in with '<<' has no position of its own
                pos = None
        if pos is None:
            pos = _own_position(node)
        return pos, node[match]
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        item_pos: tuple[int, int] | None = None
        if isinstance(node, CommentedBase):
            try:
                item_pos = node.lc.item(part)
            except (KeyError, TypeError):
                item_pos = None
        return item_pos or _own_position(node), node[part]
    return None


def _find_key(mapping: dict[Any, Any], part: str | int) -> Any:
    if part in mapping:
        return part
    for candidate in mapping:  # pydantic reports keys as text; YAML may hold 1 or true
        if str(candidate) == str(part):
            return candidate
    return None


def _own_position(node: Any) -> tuple[int, int]:
    if isinstance(node, CommentedBase):
        return node.lc.line, node.lc.col
    return 0, 0


def scalar_offset(value: object, col: int) -> int:
    """Columns from a YAML scalar's start to character `col` of its text (0 when unknowable).

    Lets a problem inside an expression point at its column: plain scalars start with their
    text, quoted ones one character later; block scalars and multi-line text give 0.
    """
    if not isinstance(value, str) or "\n" in value:
        return 0
    if isinstance(value, DoubleQuotedScalarString | SingleQuotedScalarString):
        return col + 1
    if isinstance(value, ScalarString):  # literal or folded block: the text starts a line below
        return 0
    return col
