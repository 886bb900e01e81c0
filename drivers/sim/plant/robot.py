"""The robot: Pick and Place methods that start a timed move, with busy and position signals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from drivers.points import DataType
from drivers.sim.plant.base import MethodHandler, PlantModel


class Robot(PlantModel):
    """A one-axis handling robot; slot n sits at n × SLOT_PITCH_MM along its axis.

    Pick and Place start a move and return True at once; `busy` is true until it ends. A move
    is refused (returns False) when the robot is faulted or already busy, and a fault raised
    during a move stops it where it stands; a slot outside 0..MAX_SLOT is a
    ValueError (the OPC UA simulator answers BadInvalidArgument). With the gripper faulted
    (no vacuum, a jaw sensor that disagrees), Pick is refused while Place still moves, and
    the robot's fault bit stays off: the only sign is Pick's answer.

    `counts`: pick_calls and place_calls answered, picks and places (moves) started.
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

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._target: int | None = None
        self._remaining = 0.0
        self._gripper_fault = False

    def _start_move(self, slot: int, *, pick: bool = False) -> bool:
        """Accept a move to a slot; False when faulted or busy, or for a `pick` with the gripper
        faulted. The move runs in tick().

        Like most robot controllers' OPC UA interfaces, the call only starts the motion and
        `busy` shows it: a method that blocked for the whole move would stall every other
        request on the client's session (OPC UA servers answer a session's requests in turn).
        """
        if not 0 <= slot <= self.MAX_SLOT:
            raise ValueError(f"{self.image.device}: no slot {slot} (slots 0..{self.MAX_SLOT})")
        self.counts["pick_calls" if pick else "place_calls"] += 1
        if self.get("fault") or self.get("busy") or (pick and self._gripper_fault):
            return False
        self.counts["picks" if pick else "places"] += 1
        self._target = slot
        self._remaining = self.MOVE_TIME
        self.set("busy", True)
        return True

    def advance(self, dt: float) -> None:
        """Advance a move; a fault stops it where it stands."""
        if self._target is None:
            return
        if self.get("fault"):
            self._target = None
            self.set("busy", False)
            return
        self._remaining -= dt
        if self._remaining <= 0:
            self.set("position", self._target * self.SLOT_PITCH_MM)
            self._target = None
            self.set("busy", False)

    async def _move(self, slot: int) -> bool:
        return self._start_move(slot)

    async def _pick(self, slot: int) -> bool:
        return self._start_move(slot, pick=True)

    def _set_gripper_fault(self, on: bool) -> None:
        self._gripper_fault = on

    def methods(self) -> dict[str, MethodHandler]:
        """'Pick' and 'Place', each (slot: int) -> bool."""
        return {"Pick": self._pick, "Place": self._move}

    def faults(self) -> dict[str, Callable[[bool], None]]:
        """'fault' raises the fault bit: moves fail; 'gripper': Pick is refused, no fault bit."""
        return {"fault": lambda on: self.set("fault", on), "gripper": self._set_gripper_fault}
