"""One subscriber of a polled Modbus device: its points, its callback, what it was told."""

from __future__ import annotations

import asyncio
import logging

from drivers.base import Reading, ReadingsCallback
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
        self.last: dict[str, Reading] = {}
        self.failing = False
        #: Points a fresh read saw differ from what this subscriber was last told, each with
        #: the number of the poll cycle under way (or last run) when that read ended.
        self.recheck: dict[str, int] = {}
        self._members = frozenset(points)

    def heard_fresh(self, readings: dict[ModbusPoint, Reading], cycle: int) -> None:
        """Note the points where a fresh read differs from what this subscriber was told.

        A value that the read caught in a short pulse may be back before the next poll, which
        would then see no change and report nothing: whoever took the read as its newest value
        (a wait) would never hear it go back. So the next cycle that starts after this read
        reports these points whatever it reads.
        """
        for point, reading in readings.items():
            if point in self._members:
                told = self.last.get(point.name)
                if told is not None and not same_reading(told, reading):
                    self.recheck[point.name] = cycle

    def deliver(self, readings: dict[ModbusPoint, Reading], cycle: int) -> None:
        """Call back with the readings whose value or quality changed since it was last told,
        and those of points a fresh read saw differ before this cycle (`cycle`) started.

        A callback that raises is logged (once until it succeeds again) and told the same
        changes on the next cycle; it never stops the poller or the other subscribers.
        """
        if any(point not in readings for point in self.points):
            return  # subscribed while this cycle was reading: the next cycle serves it
        due = {n for n, mark in self.recheck.items() if cycle > mark} if self.recheck else set()
        changed: dict[str, Reading] = {}
        for point in self.points:
            reading = readings[point]
            previous = self.last.get(point.name)
            if previous is None or not same_reading(previous, reading) or point.name in due:
                changed[point.name] = reading
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
        self.last.update(changed)
        for name in due:
            del self.recheck[name]
