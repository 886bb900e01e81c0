"""The robot: Pick and Place methods that take time, with busy and position signals."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

from drivers.points import DataType
from drivers.sim.plant.base import MethodHandler, PlantModel


class Robot(PlantModel):
    """A one-axis handling robot; slot n sits at n × SLOT_PITCH_MM along its axis.

    A move is refused (returns False) when the robot is faulted or already busy, and a fault
    raised during a move makes it fail where it stands; a slot outside 0..MAX_SLOT is a
    ValueError (the OPC UA simulator answers BadInvalidArgument).
    """

    model: ClassVar[str] = "robot"
    signals: ClassVar[dict[str, DataType]] = {
        "busy": DataType.BOOL,
        "fault": DataType.BOOL,
        "position": DataType.FLOAT64,
    }
    #: Model seconds one move takes.
    MOVE_TIME: ClassVar[float] = 0.8
    SLOT_PITCH_MM: ClassVar[float] = 100.0
    MAX_SLOT: ClassVar[int] = 15

    async def _move(self, slot: int) -> bool:
        """Move to a slot over MOVE_TIME model seconds; True when the robot got there."""
        if not 0 <= slot <= self.MAX_SLOT:
            raise ValueError(f"{self.image.device}: no slot {slot} (slots 0..{self.MAX_SLOT})")
        if self.get("fault") or self.get("busy"):
            return False
        self.set("busy", True)
        try:
            await self.clock.sleep(self.MOVE_TIME)
            if self.get("fault"):
                return False
            self.set("position", slot * self.SLOT_PITCH_MM)
            return True
        finally:
            # Also when the caller gives up (cancelled): the robot must not stay busy forever.
            self.set("busy", False)

    def methods(self) -> dict[str, MethodHandler]:
        """'Pick' and 'Place', each (slot: int) -> bool."""
        return {"Pick": self._move, "Place": self._move}

    def faults(self) -> dict[str, Callable[[bool], None]]:
        """'fault' raises the fault bit: moves fail."""
        return {"fault": lambda on: self.set("fault", on)}
