"""The interlocks' watchdog: a device whose poll cycles or keep-alives stop answering is lost
once it has been silent longer than its bound, even though no sample says so (a stopped poller
or keep-alive must not leave its interlocks unwatched)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable

from cellctl.cell import Cell, MemoryDevice, OpcuaDevice
from cellctl.cell.tags import device_config
from cellctl.io.session import TagIO
from drivers.base import HealthState
from drivers.config import ModbusRtuConfig, ModbusTcpConfig

#: An in-process device has no request timeout: the watchdog counts this one instead.
MEMORY_TIMEOUT = 1.0
#: Seconds added to a network device's silence bound: a loaded controller schedules its poller
#: or keep-alive late, which must not look like a silent device.
WATCHDOG_SLACK = 0.5
#: Bounds of the watchdog's look period, seconds.
WATCHDOG_LOOK = (0.02, 0.5)

log = logging.getLogger("cellctl.control.interlocks")


def silence_limit(cell: Cell, device: str) -> float:
    """How long a device may stay silent before the watchdog calls it lost: its worst-case
    request, timeout × (retries + 1), plus two poll periods, plus the worst case of every other
    device on its bus (a poll may wait behind each of their requests), plus WATCHDOG_SLACK.
    It applies to drivers that report their poll cycles (Driver.answered_at), which the
    memory driver does not."""
    config = cell.devices[device]
    if isinstance(config, MemoryDevice):
        return MEMORY_TIMEOUT + 2 * config.poll
    if isinstance(config, OpcuaDevice):
        worst = config.timeout * (config.retries + 1)
        return worst + 2 * config.publishing_interval + WATCHDOG_SLACK
    mine = device_config(cell, device)
    assert isinstance(mine, ModbusTcpConfig | ModbusRtuConfig)
    waits = 0.0
    for name, other in cell.devices.items():
        if name != device and not isinstance(other, OpcuaDevice | MemoryDevice):
            theirs = device_config(cell, name)
            assert isinstance(theirs, ModbusTcpConfig | ModbusRtuConfig)
            if theirs.bus_key == mine.bus_key:
                waits += theirs.limits.worst_case
    return mine.limits.worst_case + 2 * mine.poll + waits + WATCHDOG_SLACK


class Watchdog:
    """Looks at the devices' last answers: `on_silent(device, detail)` for one silent beyond its
    bound (or for every device when the watchdog itself fails), `on_answering(device)` else."""

    def __init__(
        self,
        cell: Cell,
        io: TagIO,
        devices: Iterable[str],
        *,
        on_silent: Callable[[str, str], None],
        on_answering: Callable[[str], None],
    ) -> None:
        self.io = io
        self.limits = {d: silence_limit(cell, d) for d in devices}
        self.on_silent = on_silent
        self.on_answering = on_answering
        self.started = time.monotonic()  # silence is counted from here at most
        self._task: asyncio.Task[None] | None = None
        self._watching = False

    def start(self) -> None:
        """Count silence from now, and look every look period (when any device is watched)."""
        self.started = time.monotonic()
        self._watching = True
        if self.limits:
            self._start_task()

    def stop(self) -> None:
        """Stop looking."""
        self._watching = False
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def silent_for(self, device: str, now: float) -> float | None:
        """How long a watched device has been silent beyond its bound, or None when it is not
        (or the watchdog does not look at it)."""
        limit = self.limits.get(device)
        driver = self.io.drivers.get(device)
        if limit is None or driver is None or driver.answered_at is None:
            return None  # not watched, not connected, or a driver that cannot tell
        health = driver.health.state
        if health in (HealthState.LOST, HealthState.DISCONNECTED):
            return None  # its health speaks for it (lost, reconnecting)
        silent = now - max(driver.answered_at, self.started)
        return silent if silent > limit else None

    async def _watch(self) -> None:
        look = min(max(min(self.limits.values()) / 4, WATCHDOG_LOOK[0]), WATCHDOG_LOOK[1])
        while True:
            await asyncio.sleep(look)
            now = time.monotonic()
            for device, limit in self.limits.items():
                silent = self.silent_for(device, now)
                if silent is not None:
                    self.on_silent(
                        device,
                        f"no poll cycle or keep-alive answered for {silent:.1f} s "
                        f"(watchdog bound {limit:g} s)",
                    )
                else:
                    # Answering again: a trip that a good sample could not clear while the
                    # device still looked silent clears now (no new sample need come).
                    self.on_answering(device)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task.exception() is None:
            return
        error = task.exception()
        log.error("the interlock watchdog failed", exc_info=error)
        try:
            for device in self.limits:
                self.on_silent(device, f"the interlock watchdog failed: {error!r}")
        finally:
            if self._watching:  # still watching: it goes on (it sleeps a look period first)
                self._start_task()

    def _start_task(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._watch(), name="interlock watchdog"
        )
        self._task.add_done_callback(self._ended)
