"""The process image: one device's current values by tag name, shared by a model and a server."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TypeVar

from drivers.base import Value
from drivers.codecs import zero_value
from drivers.points import Point

P = TypeVar("P", bound=Point)

#: Client writes an image remembers (the oldest go first): enough for many batches.
WRITE_LOG = 4096


@dataclass(frozen=True)
class ClientWrite:
    """One value a protocol client wrote, as the device took it: the nth write (from 1),
    the tag, the value, and when (time.monotonic())."""

    seq: int
    tag: str
    value: Value
    at: float


class ProcessImage:
    """Values by tag name; the model sets them (marking them dirty), the server publishes them.

    The protocol server copies client writes in with `accept_client_write` (not dirty: the
    server already holds them) and, after each model tick, publishes `take_dirty()`.
    """

    def __init__(self, device: str, points: Iterable[Point]) -> None:
        self.device = device
        self.points: dict[str, Point] = {p.name: p for p in points}
        self._values: dict[str, Value] = {
            name: zero_value(p.datatype) for name, p in self.points.items()
        }
        self._dirty: set[str] = set()
        #: The last WRITE_LOG client writes, in the order the device took them.
        self.writes: deque[ClientWrite] = deque(maxlen=WRITE_LOG)
        #: How many client writes the device has taken in all (the last one's seq).
        self.write_count = 0

    def points_of(self, kind: type[P], what: str) -> dict[str, P]:
        """The points by tag, each a `kind` (`what` names it); TypeError for one that is not."""
        points: dict[str, P] = {}
        for tag, point in self.points.items():
            if not isinstance(point, kind):
                raise TypeError(f"{self.device}: tag {tag} is not {what}")
            points[tag] = point
        return points

    def get(self, tag: str) -> Value:
        """The current value of a tag."""
        return self._values[tag]

    def set(self, tag: str, value: Value) -> None:
        """Set a value from the model side; the server publishes it after the tick."""
        if tag not in self._values:
            raise KeyError(f"{self.device}: no tag {tag!r} in the simulator's image")
        if self._values[tag] != value or type(self._values[tag]) is not type(value):
            self._values[tag] = value
            self._dirty.add(tag)

    def accept_client_write(self, tag: str, value: Value) -> None:
        """Record a value a protocol client wrote (already in the server's own store), and
        log it: the device's own witness of what reached it, in order."""
        self._values[tag] = value
        self.write_count += 1
        self.writes.append(ClientWrite(self.write_count, tag, value, time.monotonic()))

    def writes_since(self, seq: int) -> list[ClientWrite]:
        """The logged client writes after the `seq`th (ValueError if some were forgotten)."""
        found = [w for w in self.writes if w.seq > seq]
        if self.write_count > seq and (not found or found[0].seq != seq + 1):
            raise ValueError(f"{self.device}: writes after #{seq} are no longer in the log")
        return found

    def take_dirty(self) -> dict[str, Value]:
        """The values the model changed since the last call, for the server to publish."""
        dirty = {tag: self._values[tag] for tag in self._dirty}
        self._dirty.clear()
        return dirty

    def snapshot(self) -> dict[str, Value]:
        """A copy of every value."""
        return dict(self._values)
