"""The conveyor: carries parts to the pick station at a rate set by its speed."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar

from drivers.points import DataType
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantModel, SimClock


class Conveyor(PlantModel):
    """Parts travel while running at speed without a fault; one waits at the station at a time.

    Nothing tells the conveyor that the robot (another device) took the part, so a waiting
    part is taken after `PICK_DWELL` model seconds; the next one starts travelling then.
    `counts`: parts_delivered to the station, parts_taken from it.
    """

    model: ClassVar[str] = "conveyor"
    signals: ClassVar[dict[str, DataType]] = {
        "run": DataType.BOOL,
        "speed_rpm": DataType.UINT16,
        "part_at_station": DataType.BOOL,
        "parts_delivered": DataType.UINT16,
        "light_curtain_ok": DataType.BOOL,
        "fault": DataType.BOOL,
    }
    #: Model seconds between parts at REFERENCE_RPM; the interval scales inversely with speed.
    PART_INTERVAL: ClassVar[float] = 1.5
    REFERENCE_RPM: ClassVar[float] = 1200.0
    #: Model seconds a part waits at the station before it counts as taken.
    PICK_DWELL: ClassVar[float] = 1.0

    def __init__(
        self, image: ProcessImage, clock: SimClock, signal_map: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(image, clock, signal_map)
        self._travel = 0.0  # fraction of the way the next part has come
        self._waited = 0.0  # model seconds the current part has waited at the station
        self.set("light_curtain_ok", True)

    def advance(self, dt: float) -> None:
        """Move the belt by dt model seconds: parts arrive, and waiting ones are taken."""
        if self.get("part_at_station"):
            self._waited += dt
            if self._waited >= self.PICK_DWELL:
                self.set("part_at_station", False)
                self._waited = 0.0
                self.counts["parts_taken"] += 1
            return
        speed = float(self.get("speed_rpm"))
        if not self.get("run") or speed <= 0 or self.get("fault"):
            return
        self._travel += dt * speed / (self.REFERENCE_RPM * self.PART_INTERVAL)
        if self._travel >= 1.0:
            self._travel = 0.0  # parts do not queue up behind one waiting at the station
            self.set("part_at_station", True)
            self.counts["parts_delivered"] += 1
            # A 16-bit counter, wrapping like a device register.
            self.set("parts_delivered", (int(self.get("parts_delivered")) + 1) % 0x10000)

    def make_safe(self) -> None:
        """The controller's heartbeat stopped: the belt stops (run false, speed 0)."""
        self.set("run", False)
        self.set("speed_rpm", 0)

    def faults(self) -> dict[str, Callable[[bool], None]]:
        """'light-curtain' breaks the light curtain; 'fault' raises the fault bit."""
        return {
            "light-curtain": lambda on: self.set("light_curtain_ok", not on),
            "fault": lambda on: self.set("fault", on),
        }
