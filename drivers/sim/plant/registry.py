"""The plant models by the name a cell file's `sim:` gives them."""

from __future__ import annotations

from collections.abc import Mapping

from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantError, PlantModel, SimClock
from drivers.sim.plant.conveyor import Conveyor
from drivers.sim.plant.inspection import Inspection
from drivers.sim.plant.press import Press
from drivers.sim.plant.robot import Robot

MODELS: dict[str, type[PlantModel]] = {
    model.model: model for model in (Conveyor, Press, Robot, Inspection)
}


def create_model(
    name: str,
    image: ProcessImage,
    clock: SimClock,
    signal_map: Mapping[str, str] | None = None,
) -> PlantModel:
    """Build the named model on a device's image; PlantError for an unknown name or signal."""
    model = MODELS.get(name)
    if model is None:
        known = ", ".join(sorted(MODELS))
        raise PlantError(
            f"device {image.device!r}: unknown plant model {name!r} (known models: {known})"
        )
    return model(image, clock, signal_map)
