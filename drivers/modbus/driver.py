"""The Modbus driver: a device on a shared bus whose subscriptions one poller serves."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Sequence

from drivers.base import Quality, Reading, ReadingsCallback, Unsubscribe
from drivers.batching import ReadPlan
from drivers.config import RequestLimits
from drivers.errors import DriverError
from drivers.modbus.bus import AnyModbusConfig, ModbusBus
from drivers.modbus.device import ModbusDevice
from drivers.modbus.subscription import Subscription
from drivers.points import Point

log = logging.getLogger("drivers.modbus")

# The golden ratio's fraction: the phases of pollers started one after another, whatever
# their number, fall evenly over the period (each new one in the largest gap left).
_GOLDEN = (math.sqrt(5) - 1) / 2
# How many pollers this process has started: the next one's place in the sequence of phases.
_STARTED = itertools.count()


def poll_phase(index: int) -> float:
    """Where in its period the `index`-th poller started polls, as a fraction in (0, 1]: its
    second cycle is due that fraction of a period after its first (1.0 for the first poller)."""
    return 1.0 - (index * _GOLDEN) % 1.0


class ModbusDriver(ModbusDevice):
    """One Modbus device (a unit id) on a shared bus: batched reads, confirmed writes, polling."""

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Poll the points every config.poll s (one batched read for all subscribers)."""
        modbus_points = tuple(self._modbus_point(p) for p in points)
        self._plan(modbus_points)  # a point no request can read fails here, not in the poller
        subscription = Subscription(self.name, modbus_points, callback)
        self._subscriptions.append(subscription)
        self._poll_plan = None
        if self._poller is None:
            self._start_poller()

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)
                self._poll_plan = None
            if not self._subscriptions and self._poller is not None:
                # A shielded request in flight finishes on its own; close() awaits the task.
                self._poller.cancel()
                self._retired.add(self._poller)
                self._poller.add_done_callback(self._retired.discard)
                self._poller = None

        return unsubscribe

    def _start_poller(self) -> None:
        phase = poll_phase(next(_STARTED))
        task = asyncio.get_running_loop().create_task(
            self._poll(phase), name=f"modbus poll {self.name}"
        )
        task.add_done_callback(self._poller_ended)
        self._poller = task

    def _poller_ended(self, task: asyncio.Task[None]) -> None:
        """A poller that ended while still wanted (its cycles catch every Exception, so only
        something else ends it) is reported and the device is LOST; the controller's watchdog
        sees its silence too."""
        if task is not self._poller:
            return  # stopped by unsubscribe() or close()
        self._poller = None
        if not self._subscriptions or task.cancelled():
            return  # cancelled from outside (the loop shutting down): not a failure
        error = task.exception()
        text = f"{self.name} ({self.endpoint}): polling stopped: {error!r}"
        log.error("device %s: %s", self.name, text, exc_info=error)
        self._poll_error = text
        self._update_health(text)

    async def _poll(self, phase: float) -> None:
        """Poll until no subscription is left; a cycle that raises is reported, not fatal.

        The first cycle runs at once (subscribers hear every value without waiting); the
        second is due `phase` of a period later, then one every period. Devices polled at the
        same rate thus poll at different moments of the period, as SCADA pollers stagger
        them, instead of all waking on the same tick and queueing behind each other's work.
        """
        loop = asyncio.get_running_loop()
        # The schedule's origin, moved back so that the next cycle is due `phase` from now.
        due = loop.time() - (1.0 - phase) * self.config.poll
        while self._subscriptions:
            try:
                await self._poll_once()
            except Exception as err:
                self._poll_failed(err)
            now = loop.time()
            # Fixed rate; after an overrun (a cycle longer than the period: a slow or silent
            # unit) a whole period of rest, so that one unit cannot hold a shared line.
            due += self.config.poll
            if due <= now:
                due = now + self.config.poll
            await asyncio.sleep(due - now)

    async def _poll_once(self) -> None:
        """One cycle: read every subscribed block, tell each subscriber what changed."""
        self._cycle += 1
        cycle = self._cycle
        if self._poll_plan is None:
            self._poll_plan = self._plan([p for s in self._subscriptions for p in s.points])
        plan = self._poll_plan
        answered = True
        try:
            # In plan order: the blocks' points one after another.
            readings: list[Reading] = []
            for block in plan.blocks:
                readings += await self._read_block(block)
        except DriverError as err:
            answered = False
            failed = Reading(None, time.time(), Quality.BAD, str(err))
            readings = [failed] * len(plan.points)
        if answered:
            # A whole cycle answered: what the controller's watchdog looks for (only the
            # poller's own cycles, so other requests cannot hide a stalled poller). Before the
            # readings go out: a listener that judges them sees the device answering.
            self._tracker.answered()
        self._deliver(plan, readings, cycle)
        if answered and self._poll_error is not None:
            # Only a whole cycle without an exception shows the fault has gone.
            log.info("device %s: polling works again", self.name)
            self._poll_error = None
            self._update_health()

    def _deliver(self, plan: ReadPlan, readings: list[Reading], cycle: int) -> None:
        """Tell each subscriber of a cycle of `plan`; one that subscribed after the cycle was
        planned waits for the next."""
        for subscription in list(self._subscriptions):
            places = subscription.places_in(plan)
            if places is not None:
                subscription.deliver(readings, places, cycle)

    def _poll_failed(self, err: Exception) -> None:
        """A cycle raised (a bug, a codec error): LOST, logged, subscribers told BAD."""
        text = f"{self.name} ({self.endpoint}): polling failed: {err!r}"
        if text != self._poll_error:
            # Once per distinct error: the cycle is retried every period.
            log.error("device %s: a poll cycle failed; polling goes on", self.name, exc_info=err)
        self._poll_error = text
        self._update_health(text)
        failed = Reading(None, time.time(), Quality.BAD, text)
        for subscription in list(self._subscriptions):
            subscription.deliver_all(failed, self._cycle)


def make_modbus_drivers(configs: Sequence[AnyModbusConfig]) -> dict[str, ModbusDriver]:
    """One driver per device; devices with the same bus_key share one ModbusBus.

    A shared bus uses the line settings of its first device and the largest timeout and
    retries of its devices (pymodbus sets the timeout per client, and one worst case per bus
    bounds how long a request waits for the bus).
    """
    groups: dict[str, list[AnyModbusConfig]] = {}
    for config in configs:
        groups.setdefault(config.bus_key, []).append(config)
    drivers: dict[str, ModbusDriver] = {}
    for members in groups.values():
        limits = RequestLimits(
            timeout=max(m.limits.timeout for m in members),
            retries=max(m.limits.retries for m in members),
        )
        bus = ModbusBus(members[0], limits)
        for member in members:
            if member.name in drivers:
                raise ValueError(f"two Modbus devices are named {member.name!r}")
            drivers[member.name] = ModbusDriver(member, bus)
    return drivers
