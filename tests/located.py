"""What the broken-file tests share: an expected located problem and where its column is."""

from __future__ import annotations

from dataclasses import dataclass


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
