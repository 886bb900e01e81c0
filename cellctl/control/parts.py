"""Parts made by a batch: the recipe's counter tag (`parts: {counter: TAG}`) read fresh from its
device before Start (after Resetting) and after the batch ended; parts made = end - start,
modulo the tag's raw range when the counter wrapped (a uint16 from 65535 to 2 made 3).

A counter that went back (reset on its device mid-batch) cannot be told from one that wrapped:
it reads as a wrap. The start is recorded (a `notice` row with `parts_counter` and `start`),
so that `cellctl resume` counts from the batch's own start.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cellctl.control.journal.rows import JournalRow, Kind
from drivers.codecs import INT_RANGES
from drivers.points import DataType

if TYPE_CHECKING:  # the summary's view imports this module: no session for it
    from cellctl.io.session import TagIO
    from cellctl.values import TagValue

__all__ = ["PartsCount", "count_of", "read_count", "recorded_start"]


def count_of(value: TagValue) -> tuple[int | None, str | None]:
    """A reading as a count, or None and why it is none."""
    if value.error is not None:
        return None, value.error
    count = value.value
    if isinstance(count, bool) or not isinstance(count, int):
        return None, f"read {count!r}, not a whole number"
    return count, None


async def read_count(io: TagIO, counter: str) -> tuple[int | None, str | None]:
    """The counter read from its device now (not the last value polled), or None and why."""
    try:
        value = (await io.read([counter]))[counter]
    except Exception as error:  # a read that fails in any way leaves the count unknown
        return None, f"{type(error).__name__}: {error}"
    return count_of(value)


def recorded_start(rows: Iterable[JournalRow], counter: str) -> tuple[int | None, str | None]:
    """The counter's start a batch recorded (its `notice` row), or None and why there is none."""
    start: int | None = None
    why = "none on record (the batch stopped before Start)"
    for row in rows:
        if row.kind != Kind.NOTICE:
            continue
        body = row.data()
        if not isinstance(body, dict) or body.get("parts_counter") != counter:
            continue
        value = body.get("start")
        if isinstance(value, int) and not isinstance(value, bool):
            start, why = value, ""
        else:
            start = None
            why = str(body.get("error") or "no value")
    return start, (why or None)


@dataclass
class PartsCount:
    """The count of one batch: the counter, its type, its start and end (or why unknown)."""

    counter: str
    datatype: DataType
    start: int | None = None
    end: int | None = None
    #: Why the start, or the end, is unknown.
    start_error: str | None = None
    end_error: str | None = None

    def made(self) -> int | None:
        """end - start, modulo the type's range (a wrap); None when either is unknown."""
        if self.start is None or self.end is None:
            return None
        low, high = INT_RANGES.get(self.datatype, (0, 2**64 - 1))
        return (self.end - self.start) % (high - low + 1)

    def why(self) -> str | None:
        """Why parts made are unknown, or None when they are known."""
        if self.start is None:
            if self.start_error is None:
                return f"{self.counter} was not read: the batch did not reach Start"
            return f"{self.counter} could not be read at the start: {self.start_error}"
        if self.end is None:
            return f"{self.counter} could not be read at the end: {self.end_error or 'not read'}"
        return None

    def start_body(self) -> dict[str, Any]:
        """The body of the `notice` row that records the start (resume counts from it)."""
        if self.start is None:
            text = f"parts counter {self.counter} could not be read at the start: "
            text += self.start_error or "no value"
            return {
                "text": text,
                "level": "warning",
                "parts_counter": self.counter,
                "start": None,
                "error": self.start_error,
            }
        return {
            "text": f"parts counter {self.counter} = {self.start} at the start",
            "level": "info",
            "parts_counter": self.counter,
            "start": self.start,
        }

    def ended_fields(self) -> dict[str, Any]:
        """The batch_ended row's fields: parts, the counter, its start and end, why unknown."""
        return {
            "parts": self.made(),
            "parts_counter": self.counter,
            "parts_start": self.start,
            "parts_end": self.end,
            "parts_unknown": self.why(),
        }
