"""One subscriber of a polled Modbus device: its points, its callback, what it was told."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from drivers.base import Reading, ReadingsCallback
from drivers.batching import ReadPlan
from drivers.codecs import same_reading
from drivers.points import ModbusPoint

log = logging.getLogger("drivers.modbus")


class Subscription:
    """One subscriber: its points, its callback and what it was last told."""

    def __init__(
        self, device: str, points: tuple[ModbusPoint, ...], callback: ReadingsCallback
    ) -> None:
        self.device = device
        self.points = points
        self.callback = callback
        self._names = tuple(point.name for point in points)
        #: What it was last told of each of its points (by position in `points`).
        self.last: list[Reading | None] = [None] * len(points)
        self.failing = False
        #: Points a fresh read saw differ from what this subscriber was last told, each with
        #: the number of the poll cycle under way (or last run) when that read ended.
        self.recheck: dict[str, int] = {}
        self._position = {point: place for place, point in reversed(list(enumerate(points)))}
        self._plan: ReadPlan | None = None
        self._places: tuple[int, ...] | None = None

    def forget(self) -> None:
        """Forget what it was told: the next cycle tells it every value again."""
        self.last = [None] * len(self.points)

    def places_in(self, plan: ReadPlan) -> tuple[int, ...] | None:
        """Where its points are in the readings of a cycle of `plan` (worked out once per
        plan); None when the plan lacks one (it subscribed after the cycle was planned)."""
        if plan is not self._plan:
            self._plan, self._places = plan, plan.places(self.points)
        return self._places

    def heard_fresh(self, readings: dict[ModbusPoint, Reading], cycle: int) -> None:
        """Note the points where a fresh read differs from what this subscriber was told.

        A value that the read caught in a short pulse may be back before the next poll, which
        would then see no change and report nothing: whoever took the read as its newest value
        (a wait) would never hear it go back. So the next cycle that starts after this read
        reports these points whatever it reads.
        """
        for point, reading in readings.items():
            place = self._position.get(point)
            if place is not None:
                told = self.last[place]
                if told is not None and not same_reading(told, reading):
                    self.recheck[point.name] = cycle

    def deliver_all(self, reading: Reading, cycle: int) -> None:
        """Deliver one reading (a failure) for every point; see deliver."""
        self.deliver([reading], (0,) * len(self.points), cycle)

    def deliver(self, readings: Sequence[Reading], places: Sequence[int], cycle: int) -> None:
        """Call back with the readings whose value or quality changed since it was last told,
        and those of points a fresh read saw differ before this cycle (`cycle`) started.

        A callback that raises is logged (once until it succeeds again) and told the same
        changes on the next cycle; it never stops the poller or the other subscribers.
        The readings are a cycle's, in plan order: this subscriber's point i reads
        readings[places[i]].
        """
        due = {n for n, mark in self.recheck.items() if cycle > mark} if self.recheck else set()
        changed: dict[str, Reading] = {}
        told: list[int] = []  # the positions of `changed`, in the same order
        last, names = self.last, self._names
        for position, place in enumerate(places):
            reading = readings[place]
            previous = last[position]
            # same_reading, spelt out (same_value too, but for NaN): this runs for every
            # point of every poll cycle.
            if (
                previous is None
                or previous.quality is not reading.quality
                or type(old := previous.value) is not type(new := reading.value)
                or (old != new and not (old != old and new != new))  # NaN equals NaN
                or (due and names[position] in due)
            ):
                changed[names[position]] = reading
                told.append(position)
        if not changed:
            return
        try:
            self.callback(changed)
        except (Exception, asyncio.CancelledError) as err:
            task = asyncio.current_task()
            if isinstance(err, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # the poller itself is being stopped
            # A CancelledError from a callback that is not our cancellation (a cancelled
            # future's result(), say) is the callback's failure like any other.
            if not self.failing:
                log.error(
                    "device %s: a subscriber callback failed on %s; it is offered the same "
                    "changes every poll until it succeeds",
                    self.device,
                    ", ".join(changed),
                    exc_info=err,
                )
            self.failing = True
            return
        if self.failing:
            log.info(
                "device %s: the subscriber callback on %s works again",
                self.device,
                ", ".join(changed),
            )
            self.failing = False
        last = self.last  # the list held now (a callback may have led to forget())
        for position in told:
            last[position] = readings[places[position]]
        for name in due:
            del self.recheck[name]
