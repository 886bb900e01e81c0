"""The value of a tag as every layer sees it: engineering units, quality, age."""

from __future__ import annotations

import time
from dataclasses import dataclass

from drivers.base import Quality, Value, sample_not_older


@dataclass(frozen=True)
class TagValue:
    """A tag's value in engineering units, with the reading's quality and age."""

    tag: str
    device: str
    value: Value | None
    quality: Quality
    timestamp: float
    error: str | None = None
    #: The device's own time of the value (see drivers.base.Reading.device_time).
    device_time: float | None = None

    def __init__(
        self,
        tag: str,
        device: str,
        value: Value | None,
        quality: Quality,
        timestamp: float,
        error: str | None = None,
        device_time: float | None = None,
    ) -> None:
        # Written out (dataclass keeps an __init__ the class defines): every changed value of
        # every poll cycle builds one, and the frozen dataclass's own __init__, an
        # object.__setattr__ per field, costs twice as much. The fields, in order, are the
        # dataclass's.
        fields = self.__dict__
        fields["tag"] = tag
        fields["device"] = device
        fields["value"] = value
        fields["quality"] = quality
        fields["timestamp"] = timestamp
        fields["error"] = error
        fields["device_time"] = device_time

    def not_older_than(self, other: TagValue) -> bool:
        """True when this sample is at least as new as `other` (drivers' `sample_not_older`)."""
        return sample_not_older(self, other)

    @property
    def age(self) -> float:
        """Seconds since the value was read."""
        return max(0.0, time.time() - self.timestamp)
