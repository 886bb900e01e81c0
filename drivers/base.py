"""The Driver protocol and the value types every driver returns."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from drivers.points import MethodSpec, Point

Value = bool | int | float | str


class Quality(enum.StrEnum):
    """OPC-style quality of a reading."""

    GOOD = "good"
    UNCERTAIN = "uncertain"
    BAD = "bad"


@dataclass(frozen=True)
class Reading:
    """One value read from a device, with the time it was taken (time.time()) and its quality.

    `device_time` is the device's own time of the value (OPC UA SourceTimestamp, else
    ServerTimestamp; None where the protocol has none): on the device's clock, so it orders
    two samples of one device even when that clock differs from ours.
    """

    value: Value | None
    timestamp: float
    quality: Quality = Quality.GOOD
    error: str | None = None
    device_time: float | None = None

    def __init__(
        self,
        value: Value | None,
        timestamp: float,
        quality: Quality = Quality.GOOD,
        error: str | None = None,
        device_time: float | None = None,
    ) -> None:
        # Written out (dataclass keeps an __init__ the class defines): every poll cycle builds
        # one per point, and the frozen dataclass's own __init__, an object.__setattr__ per
        # field, costs twice as much. The fields, in order, are the dataclass's.
        fields = self.__dict__
        fields["value"] = value
        fields["timestamp"] = timestamp
        fields["quality"] = quality
        fields["error"] = error
        fields["device_time"] = device_time

    def not_older_than(self, other: Reading) -> bool:
        """True when this sample is at least as new as `other` (see `sample_not_older`)."""
        return sample_not_older(self, other)


class Sample(Protocol):
    """Anything stamped as a reading is: our time of taking it, and the device's own."""

    @property
    def timestamp(self) -> float:
        """Our time of taking the sample (time.time())."""
        ...

    @property
    def device_time(self) -> float | None:
        """The device's own time of the sample, if it has one."""
        ...


def sample_not_older(sample: Sample, other: Sample) -> bool:
    """True when `sample` is at least as new as `other`: by the device's clock where both carry
    it (one device, one clock), else by ours (when each was taken)."""
    if sample.device_time is not None and other.device_time is not None:
        return sample.device_time >= other.device_time
    return sample.timestamp >= other.timestamp


class HealthState(enum.StrEnum):
    """Connection health of a device."""

    DISCONNECTED = "disconnected"
    CONNECTED = "connected"
    DEGRADED = "degraded"
    LOST = "lost"


@dataclass(frozen=True)
class Health:
    """A device's connection health, the last error and since when (time.time())."""

    state: HealthState = HealthState.DISCONNECTED
    last_error: str | None = None
    since: float = field(default_factory=time.time)


@dataclass(frozen=True)
class ConnectTry:
    """A try of a driver's connect loop, told as it starts: the operator sees who is being
    reached and how it goes instead of a blank screen until the connect gives up."""

    device: str
    endpoint: str
    #: 1 for the first try.
    number: int
    #: When this connect gives up, on time.monotonic() (asyncio's loop.time()): a try may
    #: last the whole connect, and the time left is told while it lasts.
    gives_up_at: float
    #: Why the previous try failed (None before the first).
    error: str | None = None

    @property
    def left(self) -> float:
        """Seconds until this connect gives up, from now."""
        return max(0.0, self.gives_up_at - time.monotonic())


ReadingsCallback = Callable[[dict[str, Reading]], None]
HealthCallback = Callable[[str, Health], None]
ConnectProgress = Callable[[ConnectTry], None]
Unsubscribe = Callable[[], None]


@runtime_checkable
class Driver(Protocol):
    """What every driver offers: connect, batched reads, confirmed writes, calls, subscriptions."""

    name: str

    @property
    def health(self) -> Health:
        """The device's current connection health."""
        ...

    async def connect(self, progress: ConnectProgress | None = None) -> None:
        """Connect, retrying with backoff until the connect deadline; raises ConnectFailed.
        `progress` hears of each try as it starts."""
        ...

    async def close(self) -> None:
        """Stop every background task and close the connection."""
        ...

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """Read the points in as few requests as the device allows; one Reading per point."""
        ...

    async def write(self, point: Point, value: Value) -> None:
        """Write one value; returns once the device confirmed it, raises DriverError otherwise."""
        ...

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Call a device method (OPC UA); NotSupported elsewhere."""
        ...

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Call back with {point name: Reading} on every change (polling or monitored items).

        A `read` of a subscribed point that differs from what the subscriber was last told is
        followed by a reading taken after it, even if the value went back before the device
        was next polled or sampled: otherwise whoever took the read as the newest value
        (a wait) would never hear the end of a pulse that only the read caught.
        """
        ...

    def on_health(self, callback: HealthCallback) -> Unsubscribe:
        """Call back with (device name, Health) once per health transition."""
        ...

    @property
    def answered_at(self) -> float | None:
        """time.monotonic() of the last poll cycle or keep-alive answered; None: cannot tell."""
        ...
