"""One measured figure: ours, the reference from the same run, the ratio, the goal, the verdict."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Figure:
    """A benchmark figure as printed and written to JSON.

    `ratio` is how ours compares with the reference, oriented so that higher is better for us
    (a rate: ours / reference; a time: reference / ours) unless the goal says otherwise; `goal`
    says in words what passes; `passed` is None where no goal applies (a figure shown for
    context).
    """

    number: int
    name: str
    ours: float
    unit: str
    reference: float | None = None
    reference_name: str = ""
    ratio: float | None = None
    goal: str = ""
    passed: bool | None = None
    detail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The figure as a JSON object."""
        return asdict(self)


def rate_figure(
    number: int,
    name: str,
    ours: float,
    reference: float,
    reference_name: str,
    at_least: float,
    unit: str = "steps/s",
    detail: str = "",
) -> Figure:
    """A rate (higher is better) that must reach `at_least` × the reference."""
    ratio = ours / reference if reference else None
    return Figure(
        number,
        name,
        ours,
        unit,
        reference,
        reference_name,
        ratio,
        f">= {at_least:g} x {reference_name}",
        None if ratio is None else ratio >= at_least,
        detail,
    )


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100) of the samples, by linear interpolation between ranks."""
    if not samples:
        return float("nan")
    ordered = sorted(samples)
    rank = (len(ordered) - 1) * min(100.0, max(0.0, p)) / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


class Stopwatch:
    """Wall and CPU time of a block (`with Stopwatch() as sw: ...; sw.wall, sw.cpu`)."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self._wall0 = 0.0
        self._cpu0 = 0.0

    def __enter__(self) -> Stopwatch:
        self._wall0 = time.perf_counter()
        self._cpu0 = time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0


#: A benchmark module's entry: measure(quick) -> the figures it produced.
Measure = Callable[[bool], list[Figure]]
