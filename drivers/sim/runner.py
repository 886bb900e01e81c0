"""The simulation loop: ticks every plant model and publishes what changed to its server."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from drivers.sim.plant.base import PlantModel, SimClock
from drivers.sim.server import SimServer

log = logging.getLogger("drivers.sim")


@dataclass
class _Entry:
    model: PlantModel
    server: SimServer
    failing: bool = False  # tick or publish failed last time: log once per streak


class SimRunner:
    """Every `tick` real seconds, advance each model by the elapsed model time and publish.

    A model (or server) that raises is logged once and skipped for that tick: one broken
    model never stops the others.
    """

    def __init__(self, clock: SimClock, tick: float = 0.01) -> None:
        if tick <= 0:
            raise ValueError("tick must be positive")
        self.clock = clock
        self.tick = tick
        self._entries: list[_Entry] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, model: PlantModel, server: SimServer) -> None:
        """Run a model and publish its image's changes to a server (also while running)."""
        self._entries.append(_Entry(model, server))

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the loop task (no-op when it already runs)."""
        if not self.running:
            self._task = asyncio.create_task(self._run(), name="sim-runner")

    async def stop(self) -> None:
        """Cancel the loop and wait for it to end."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick)  # pacing, not synchronisation
            now = loop.time()
            dt = (now - last) * self.clock.speed
            last = now
            for entry in list(self._entries):
                await self._step(entry, dt)

    async def _step(self, entry: _Entry, dt: float) -> None:
        device = entry.model.image.device
        ok = True
        try:
            entry.model.tick(dt)
        except Exception:
            ok = self._failed(entry, "tick")
        # Published even after a failed tick, and values set outside tick (method calls,
        # faults) go out here too.
        changed = entry.model.image.take_dirty()
        if changed:
            try:
                await entry.server.publish(device, changed)
            except Exception:
                ok = self._failed(entry, f"publish to {entry.server.endpoint}")
        if ok and entry.failing:
            log.info("simulator %s: plant model %r runs again", device, entry.model.model)
            entry.failing = False

    @staticmethod
    def _failed(entry: _Entry, what: str) -> bool:
        """Log the current exception, once per streak of failures; returns False."""
        if not entry.failing:
            log.exception(
                "simulator %s: plant model %r: %s failed (logged once until it recovers)",
                entry.model.image.device,
                entry.model.model,
                what,
            )
        entry.failing = True
        return False
