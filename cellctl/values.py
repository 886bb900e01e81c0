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

    def not_older_than(self, other: TagValue) -> bool:
        """True when this sample is at least as new as `other` (drivers' `sample_not_older`)."""
        return sample_not_older(self, other)

    @property
    def age(self) -> float:
        """Seconds since the value was read."""
        return max(0.0, time.time() - self.timestamp)
