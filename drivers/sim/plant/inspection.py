"""The inspection station: measures a part on a trigger edge or a Measure call."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import ClassVar

from drivers.points import DataType
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import MethodHandler, PlantModel, SimClock


class Inspection(PlantModel):
    """A gauge: MEASURE_TIME after a rising trigger edge, measured_mm, passed and done are set.

    Measurements are pseudo-random but repeatable (seeded with SEED) and lie within half the
    tolerance of nominal; with the fault raised they lie outside the tolerance, so parts fail.
    trigger false resets done (and abandons a measurement in progress). `counts`: measures.
    """

    model: ClassVar[str] = "inspection"
    signals: ClassVar[dict[str, DataType]] = {
        "trigger": DataType.BOOL,
        "done": DataType.BOOL,
        "passed": DataType.BOOL,
        "measured_mm": DataType.FLOAT64,
    }
    NOMINAL_MM: ClassVar[float] = 25.0
    TOLERANCE_MM: ClassVar[float] = 0.05
    #: Model seconds one measurement takes.
    MEASURE_TIME: ClassVar[float] = 0.3
    SEED: ClassVar[int] = 20261125

    def __init__(
        self, image: ProcessImage, clock: SimClock, signal_map: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(image, clock, signal_map)
        self._random = random.Random(self.SEED)
        self._faulted = False
        self._last_trigger = False
        self._pending: float | None = None  # model seconds left of a triggered measurement

    def advance(self, dt: float) -> None:
        """Advance a triggered measurement by dt model seconds."""
        trigger = bool(self.get("trigger"))
        rising = trigger and not self._last_trigger
        self._last_trigger = trigger
        if not trigger:
            self._pending = None
            self.set("done", False)
            return
        if rising:
            self._pending = self.MEASURE_TIME
            self.set("done", False)
        if self._pending is not None:
            self._pending -= dt
            if self._pending <= 0:
                self._pending = None
                self._measure()
                self.set("done", True)

    def _measure(self) -> float:
        """Take one measurement and publish it with its verdict."""
        if self._faulted:
            # Beyond the tolerance, on either side.
            offset = self.TOLERANCE_MM * (1.5 + self._random.random())
            offset *= self._random.choice((-1.0, 1.0))
        else:
            offset = self.TOLERANCE_MM * self._random.uniform(-0.5, 0.5)
        value = self.NOMINAL_MM + offset
        self.counts["measures"] += 1
        self.set("measured_mm", value)
        self.set("passed", abs(offset) <= self.TOLERANCE_MM)
        return value

    async def _measure_call(self) -> float:
        await self.clock.sleep(self.MEASURE_TIME)
        return self._measure()

    def methods(self) -> dict[str, MethodHandler]:
        """'Measure' () -> float: measure after MEASURE_TIME, also setting measured_mm/passed."""
        return {"Measure": self._measure_call}

    def faults(self) -> dict[str, Callable[[bool], None]]:
        """'fault' makes every following measurement fall outside the tolerance."""
        return {"fault": self._set_fault}

    def _set_fault(self, on: bool) -> None:
        self._faulted = on
