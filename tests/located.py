"""What the broken-file tests share: an expected located problem and where its column is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cellctl.errors import Problem


@dataclass(frozen=True)
class Expect:
    """One expected problem: its line, the text its column points at, its code, words it says."""

    line: int
    at: str  # the problem's column is where this text first occurs on that line
    code: str
    says: tuple[str, ...]


def expect(line: int, at: str, code: str, *says: str) -> Expect:
    """An expected problem at `line`, its column where `at` starts, saying each of `says`."""
    return Expect(line, at, code, says)


def col_of(text: str, line: int, at: str) -> int:
    """The 1-based column where `at` first occurs on a 1-based line of text."""
    found = text.splitlines()[line - 1].find(at)
    assert found >= 0, f"{at!r} is not on line {line}"
    return found + 1


def assert_located(
    path: Path, text: str, problems: Sequence[Problem], expected: Sequence[Expect]
) -> None:
    """Assert `problems` of the file `path` (holding `text`) are just `expected`: as many, and
    each expected one at its line and column with its code, saying all of its words."""
    shown = "\n".join(str(p) for p in problems)
    assert len(problems) == len(expected), shown
    for want in expected:
        prefix = f"{path}:{want.line}:{col_of(text, want.line, want.at)}: "
        matching = [p for p in problems if str(p).startswith(prefix) and p.code == want.code]
        assert matching, f"nothing at {prefix} with code {want.code}:\n{shown}"
        assert any(all(word in p.message for word in want.says) for p in matching), shown
