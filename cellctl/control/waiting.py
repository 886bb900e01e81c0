"""Waiting on the tag board: a condition judged on a fresh read and then on every update of
its tags, never polled. The executor's waits and Resetting's `ready` share it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cellctl import expr
from cellctl.io.session import TagIO
from cellctl.values import TagValue
from drivers.base import Quality, Value

__all__ = ["Judged", "judge", "newest_sample", "until_met"]


def newest_sample(sample: TagValue | None, baseline: TagValue) -> TagValue:
    """The newest sample heard, when it is not older than the baseline read, else the baseline.

    The baseline is a fresh read made after the last confirmed write or call, stamped once its
    reply came: a sample not older than it was taken after that write or call. Where the device
    stamps its values (OPC UA), its own clock decides: a notification that arrives after the
    baseline read but was sampled before it (published late) is older than the baseline,
    whatever our clock says when it arrives.
    """
    return sample if sample is not None and sample.not_older_than(baseline) else baseline


def judge(
    condition: expr.Expression, current: Mapping[str, TagValue], names: Mapping[str, Value]
) -> tuple[bool, dict[str, Value | None]]:
    """(met, the tag values used) of a condition on these samples and other `names`
    (parameters); a tag without a good value leaves it unmet. Raises EvaluationError."""
    good = {
        t: v.value
        for t, v in current.items()
        if v.quality is not Quality.BAD and v.value is not None
    }
    shown: dict[str, Value | None] = {t: good.get(t) for t in current}
    if len(good) < len(current):
        return False, shown
    return expr.evaluate(condition, {**names, **good}) is True, shown


@dataclass(frozen=True)
class Judged:
    """A wait's last judgement: met or not, the samples judged and the tag values it used."""

    met: bool
    current: dict[str, TagValue]
    shown: dict[str, Value | None]


async def until_met(
    io: TagIO,
    tags: Sequence[str],
    waker: asyncio.Event,
    judged: Callable[[dict[str, TagValue]], tuple[bool, dict[str, Value | None]]],
    deadline: Callable[[], float | None],
    go_on: Callable[[], bool] = lambda: True,
) -> Judged | None:
    """Judge `tags` on a fresh read and then on every update of them (never polled) until
    `judged(samples)` says (met, values used) is met, or `deadline()` (monotonic, None: never;
    asked once that read is in) passes. The executor's waits and Resetting's `ready` share it.

    Listening starts before the read, so no update is missed; the read, made after the
    caller's last confirmed write or call, stands in for a tag until a sample not older than it
    comes (newest_sample): older news never counts. `waker` is set by every update (and by
    whoever wants a look now); `go_on()` runs before each judgement: False calls the wait off
    (None), and it may raise to cut it. Returns the last judgement: met, or not by the deadline.
    """
    heard: dict[str, TagValue] = {}

    def listener(sample: TagValue) -> None:
        old = heard.get(sample.tag)
        if old is None or sample.not_older_than(old):
            heard[sample.tag] = sample
        waker.set()

    unlisten = io.board.listen(tags, listener)  # first, so no update is missed
    try:
        baseline = await io.read(tags) if tags else {}
        until = deadline()
        while go_on():
            waker.clear()
            current = {t: newest_sample(heard.get(t), baseline[t]) for t in tags}
            met, shown = judged(current)
            if met:
                return Judged(True, current, shown)
            remaining = None if until is None else until - time.monotonic()
            try:
                if remaining is not None and remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(remaining):
                    await waker.wait()
            except TimeoutError:
                return Judged(False, current, shown)
        return None
    finally:
        unlisten()
