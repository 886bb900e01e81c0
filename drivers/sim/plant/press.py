"""The press: a rising edge of cycle_start ramps force to the setpoint, holds, reports done."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from typing import ClassVar

from drivers.points import DataType
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantModel, SimClock


class _Phase(enum.Enum):
    IDLE = "idle"
    RAMP = "ramp"
    HOLD = "hold"
    DONE = "done"


class Press(PlantModel):
    """A press cycle: ramp over RAMP_TIME, hold for HOLD_TIME, then cycle_done and cycles+1.

    `counts`: rising_edges of cycle_start seen, cycles_started, cycles_done.

    cycle_start false ends the cycle at any phase (done false, force 0); a fault ends it too,
    and the press then waits for the next rising edge of cycle_start.
    """

    model: ClassVar[str] = "press"
    signals: ClassVar[dict[str, DataType]] = {
        "setpoint_kN": DataType.FLOAT32,
        "force_kN": DataType.FLOAT32,
        "cycle_start": DataType.BOOL,
        "cycle_done": DataType.BOOL,
        "fault": DataType.BOOL,
        "cycles": DataType.UINT32,
    }
    #: Model seconds from zero to the setpoint.
    RAMP_TIME: ClassVar[float] = 1.0
    #: Model seconds the force is held before the cycle is done.
    HOLD_TIME: ClassVar[float] = 0.2

    def __init__(
        self, image: ProcessImage, clock: SimClock, signal_map: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(image, clock, signal_map)
        self._phase = _Phase.IDLE
        self._held = 0.0  # model seconds the force has been held
        self._last_start = False

    def advance(self, dt: float) -> None:
        """Advance the cycle by dt model seconds."""
        start = bool(self.get("cycle_start"))
        rising = start and not self._last_start
        self._last_start = start
        if not start or self.get("fault"):
            self._end_cycle()
            return
        if rising:
            self.counts["rising_edges"] += 1
        if rising and self._phase is _Phase.IDLE:
            self._phase = _Phase.RAMP
            self.counts["cycles_started"] += 1
        target = self._target()
        if self._phase is _Phase.RAMP:
            force = float(self.get("force_kN")) + target / self.RAMP_TIME * dt
            if force >= target:
                force = target
                self._phase = _Phase.HOLD
                self._held = 0.0
            self.set("force_kN", force)
        elif self._phase is _Phase.HOLD:
            self.set("force_kN", target)
            self._held += dt
            if self._held >= self.HOLD_TIME:
                self._phase = _Phase.DONE
                self.set("cycle_done", True)
                self.counts["cycles_done"] += 1
                self.set("cycles", (int(self.get("cycles")) + 1) % 0x1_0000_0000)

    def _target(self) -> float:
        setpoint = float(self.get("setpoint_kN"))
        # A client can write NaN or a negative force to the register; the press then does not.
        return setpoint if math.isfinite(setpoint) and setpoint > 0 else 0.0

    def _end_cycle(self) -> None:
        self._phase = _Phase.IDLE
        self.set("cycle_done", False)
        self.set("force_kN", 0.0)

    def make_safe(self) -> None:
        """The controller's heartbeat stopped: the press is released (cycle_start false) and a
        cycle in progress is aborted; it waits for the next rising edge, as after a fault."""
        self.set("cycle_start", False)
        self._last_start = False
        self._end_cycle()

    def faults(self) -> dict[str, Callable[[bool], None]]:
        """'fault' raises the fault bit: the cycle ends, force stays 0, no done."""
        return {"fault": lambda on: self.set("fault", on)}
