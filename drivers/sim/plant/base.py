"""What every plant model offers, and the clock that lets the simulators run faster than life."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

from drivers.base import Value
from drivers.points import DataType
from drivers.sim.image import ProcessImage

log = logging.getLogger("drivers.sim")


class PlantError(Exception):
    """A plant model cannot be bound to its device (a missing signal, an unknown model)."""


class SimClock:
    """Model time: `speed` model seconds pass per real second."""

    def __init__(self, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed

    async def sleep(self, model_seconds: float) -> None:
        """Wait for a span of model time."""
        await asyncio.sleep(max(0.0, model_seconds) / self.speed)


MethodHandler = Callable[..., Awaitable[Value | None]]


@dataclass
class _Watchdog:
    """The device PLC's watch on the controller's heartbeat."""

    tag: str
    timeout: float  # real seconds
    last: Value
    quiet: float = 0.0  # real seconds since the value last changed
    armed: bool = False  # a change was seen since the start or the last trip


class PlantModel:
    """A machine's behaviour over time, reading and writing named signals of its device.

    Subclasses declare `signals` (signal name → type). Each signal is bound to one of the
    device's tags: by an explicit map, else to the tag named `signal` or ending in `.signal`.
    """

    #: The model's name as written in a cell file's `sim:`.
    model: ClassVar[str] = ""
    #: Signals the model reads or writes, with their types.
    signals: ClassVar[dict[str, DataType]] = {}

    def __init__(
        self,
        image: ProcessImage,
        clock: SimClock,
        signal_map: Mapping[str, str] | None = None,
    ) -> None:
        self.image = image
        self.clock = clock
        self._tags = bind_signals(self.model, self.signals, image, signal_map or {})
        self._watchdog: _Watchdog | None = None
        #: What the machine did, by what (the model says: 'cycles_started', 'picks', ...):
        #: its own witness, apart from any counter a client can read or write.
        self.counts: Counter[str] = Counter()

    def get(self, signal: str) -> Value:
        """The current value of a signal."""
        return self.image.get(self._tags[signal])

    def set(self, signal: str, value: Value) -> None:
        """Set a signal; the server publishes it after the tick."""
        self.image.set(self._tags[signal], value)

    def tick(self, dt: float) -> None:
        """Advance by dt model seconds: the heartbeat watchdog, then the model's behaviour."""
        self._watch(dt)
        self.advance(dt)

    def advance(self, dt: float) -> None:
        """The model's behaviour over dt model seconds (subclasses)."""

    def watch_heartbeat(self, tag: str, timeout: float) -> None:
        """Play the device PLC's watchdog on the controller's heartbeat `tag`.

        Armed by the first change of the value; when armed and the value has not changed for
        `timeout` real seconds, `make_safe()` runs once and the watchdog waits for the next
        change to arm again. Never armed, it never acts: writes by hand (`cellctl write`) with
        no controller running are not overridden.
        """
        if tag not in self.image.points:
            raise PlantError(
                f"plant model {self.model!r}: heartbeat {tag!r} is not a tag of device "
                f"{self.image.device!r}"
            )
        self._watchdog = _Watchdog(tag, timeout, self.image.get(tag))

    @property
    def heartbeat_armed(self) -> bool:
        """True while the watchdog has seen the heartbeat change and not yet tripped."""
        return self._watchdog is not None and self._watchdog.armed

    def make_safe(self) -> None:
        """What the device's PLC does when the heartbeat stops: outputs to their safe state.

        It never starts motion. Models without outputs that move keep the default: nothing.
        """

    def _watch(self, dt: float) -> None:
        watchdog = self._watchdog
        if watchdog is None:
            return
        value = self.image.get(watchdog.tag)
        if value != watchdog.last:
            watchdog.last, watchdog.quiet, watchdog.armed = value, 0.0, True
            return
        # The runner's dt is model time measured on the loop's monotonic clock: real time is
        # dt / speed, so the timeout holds whatever speed the simulators run at.
        watchdog.quiet += dt / self.clock.speed
        if watchdog.armed and watchdog.quiet >= watchdog.timeout:
            watchdog.armed = False
            log.warning(
                "simulator %s: heartbeat %s unchanged for %g s: outputs to their safe state",
                self.image.device,
                watchdog.tag,
                watchdog.timeout,
            )
            self.make_safe()

    def methods(self) -> dict[str, MethodHandler]:
        """Method handlers by browse name without namespace (e.g. 'Pick'), for OPC UA devices."""
        return {}

    def faults(self) -> dict[str, Callable[[bool], None]]:
        """Named device faults that tests and the sim wiring can raise (True) or clear (False)."""
        return {}


def bind_signals(
    model: str,
    signals: Mapping[str, DataType],
    image: ProcessImage,
    signal_map: Mapping[str, str],
) -> dict[str, str]:
    """Map each signal to a tag of the device; raise PlantError naming what is missing."""
    bound: dict[str, str] = {}
    problems: list[str] = []
    for signal in signals:
        tag = signal_map.get(signal)
        if tag is None:
            candidates = [t for t in image.points if t == signal or t.endswith("." + signal)]
            tag = candidates[0] if len(candidates) == 1 else None
            if len(candidates) > 1:
                problems.append(f"signal {signal!r} matches several tags: {', '.join(candidates)}")
                continue
        if tag is None or tag not in image.points:
            problems.append(f"signal {signal!r} has no tag on device {image.device!r}")
            continue
        bound[signal] = tag
    if problems:
        raise PlantError(f"plant model {model!r}: " + "; ".join(problems))
    return bound
