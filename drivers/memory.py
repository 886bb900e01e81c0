"""The in-memory driver: the Driver protocol over values held in the process, for fast tests."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from drivers.base import (
    ConnectProgress,
    HealthState,
    Quality,
    Reading,
    ReadingsCallback,
    Unsubscribe,
    Value,
)
from drivers.codecs import check_value, check_write, same_value, zero_value
from drivers.config import MemoryConfig
from drivers.errors import (
    BadStatus,
    ConnectFailed,
    DriverError,
    NotConnected,
    NotSupported,
    PointMismatch,
    WriteRejected,
)
from drivers.health import HealthTracker, TracksHealth
from drivers.points import DataType, MemoryPoint, MethodSpec, Point

log = logging.getLogger("drivers")

MethodHandler = Callable[..., Awaitable[Any]]


#: How many confirmed writes a MemoryDriver keeps in `writes` (the latest ones): a long batch
#: must not grow without bound; tests look at a handful.
WRITES_KEPT = 1_000


class WriteLog(list[tuple[str, Value]]):
    """The latest confirmed writes, oldest first, at most `kept` of them (a list, so tests
    compare it with one); `total` is how many were ever appended."""

    def __init__(self, kept: int = WRITES_KEPT) -> None:
        super().__init__()
        self.kept = kept
        self.total = 0

    def append(self, write: tuple[str, Value], /) -> None:
        """Add the latest write, dropping the oldest beyond `kept`."""
        super().append(write)
        self.total += 1
        if len(self) > self.kept:
            del self[0]  # a memmove of `kept` pointers: cheaper than a write


class _Subscription:
    """One subscriber's points and callback."""

    def __init__(self, points: Sequence[MemoryPoint], callback: ReadingsCallback) -> None:
        self.points = tuple(points)
        self.callback = callback


class MemoryDriver(TracksHealth):
    """A device whose values live in memory; tests and plant models act as the device side.

    Values are kept by point key, starting at the zero value of the first point's type.
    Subscribers are called back synchronously with the changed readings.
    """

    def __init__(self, config: MemoryConfig) -> None:
        self.name = config.name
        self.config = config
        #: Confirmed writes, in order: (key, value), the latest WRITES_KEPT of them.
        self.writes = WriteLog()
        self._tracker = HealthTracker(config.name)
        self._values: dict[str, Value] = {}
        self._changed: dict[str, float] = {}  # time.time() of each key's last change
        self._types: dict[str, DataType] = {}
        self._methods: dict[str, MethodHandler] = {}
        self._subscriptions: list[_Subscription] = []
        self._connected = False
        self._failure: DriverError | None = None
        self._bad: dict[str, str] = {}  # keys the device reports BAD (a sensor fault), and why

    # --- Driver protocol ------------------------------------------------------------------

    async def connect(self, progress: ConnectProgress | None = None) -> None:
        """Connect (at once: no tries to tell of); raises ConnectFailed while a failure is
        injected."""
        if self._failure is not None:
            self._tracker.set(HealthState.LOST, str(self._failure))
            raise ConnectFailed(
                f"{self.name}: cannot connect to memory: {self._failure}"
            ) from self._failure
        self._connected = True
        self._tracker.set(HealthState.CONNECTED)
        self._notify_all()

    async def close(self) -> None:
        """Disconnect; subscriptions stay and hear again after the next connect."""
        self._connected = False
        self._tracker.set(HealthState.DISCONNECTED)

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """The current value of each point, GOOD, stamped now and with the time it changed."""
        memory_points = [self._bind(p) for p in points]
        self._check_available()
        now = time.time()
        return [self._reading(p.key, now) for p in memory_points]

    async def write(self, point: Point, value: Value) -> None:
        """Validate and store a value, log it in `writes` and tell subscribers if it changed."""
        memory_point = self._bind(point)
        self._check_available()
        where = f"{self.name} {memory_point.key}"
        checked = check_write(where, memory_point, value, read_only="point is read-only")
        self.writes.append((memory_point.key, checked))
        self._store(memory_point.key, checked)

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Call a handler registered with register_method; NotSupported if there is none."""
        self._check_available()
        handler = self._methods.get(method.browse_name)
        if handler is None:
            # Registered without a namespace prefix: '2:Pick' finds 'Pick'.
            handler = self._methods.get(method.browse_name.rpartition(":")[2])
        if handler is None:
            raise NotSupported(f"{self.name}: no method {method.browse_name} on memory")
        if len(args) != len(method.args):
            raise WriteRejected(
                f"{self.name} {method.browse_name}: expects {len(method.args)} arguments, "
                f"got {len(args)}"
            )
        checked: list[Value] = []
        for spec, arg in zip(method.args, args, strict=True):
            try:
                checked.append(check_value(spec.datatype, arg))
            except WriteRejected as err:
                raise WriteRejected(
                    f"{self.name} {method.browse_name} argument {spec.name}: {err}"
                ) from err
        try:
            return await handler(*checked)
        except DriverError:
            raise
        except Exception as err:
            # What an OPC UA client sees when a server method raises.
            raise BadStatus(
                f"{self.name} {method.browse_name}: method failed: {err}", "BadUnexpectedError"
            ) from err

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Call back now with every point's reading (if connected), then on every change."""
        subscription = _Subscription([self._bind(p) for p in points], callback)
        self._subscriptions.append(subscription)
        if self._connected:
            self._deliver(subscription, subscription.points)

        def unsubscribe() -> None:
            if subscription in self._subscriptions:
                self._subscriptions.remove(subscription)

        return unsubscribe

    # --- the device side ------------------------------------------------------------------

    def register_method(self, browse_name: str, handler: MethodHandler) -> None:
        """Serve `call` of a method ('2:Pick', or 'Pick' for any namespace) with a handler."""
        self._methods[browse_name] = handler

    def set_device_value(self, key: str, value: Value) -> None:
        """Change a value as the device would (no access check); subscribers hear of it."""
        datatype = self._types.get(key)
        if datatype is not None:
            try:
                value = check_value(datatype, value)
            except WriteRejected as err:
                raise ValueError(f"{self.name} {key}: device value refused: {err}") from err
        self._store(key, value)

    def set_bad(self, key: str, error: str | None) -> None:
        """The device reports `key` BAD with `error` (a broken sensor) while it still answers
        everything else; None makes it good again. Subscribers hear of it."""
        if error is None:
            self._bad.pop(key, None)
        else:
            self._bad[key] = error
        if self._connected and self._failure is None:
            for subscription in list(self._subscriptions):
                named = [p for p in subscription.points if p.key == key]
                if named:
                    self._deliver(subscription, named)

    def device_value(self, key: str) -> Value:
        """The value the device holds for a key (KeyError if it has none yet)."""
        return self._values[key]

    def fail(self, error: DriverError | None) -> None:
        """Inject a failure (requests raise it, health LOST) or clear it with None."""
        self._failure = error
        if error is not None:
            self._tracker.set(HealthState.LOST, str(error))
        else:
            self._tracker.set(
                HealthState.CONNECTED if self._connected else HealthState.DISCONNECTED
            )
        self._notify_all()

    # --- internals ------------------------------------------------------------------------

    def _bind(self, point: Point) -> MemoryPoint:
        """Check the point is a memory point and give its key a value of the point's type."""
        if not isinstance(point, MemoryPoint):
            raise NotSupported(
                f"{self.name}: memory driver cannot serve {point.describe()} ({point.name})"
            )
        known = self._types.get(point.key)
        if known is None:
            if point.key not in self._values:
                self._values[point.key] = zero_value(point.datatype)
            else:  # set by the device side before any point named it
                held = self._values[point.key]
                try:
                    self._values[point.key] = check_value(point.datatype, held)
                except WriteRejected as err:
                    raise PointMismatch(
                        f"{self.name} {point.key}: the device holds {held!r}, "
                        f"which does not fit {point.name}: {err}"
                    ) from err
            self._types[point.key] = point.datatype
        elif known is not point.datatype:
            raise PointMismatch(
                f"{self.name} {point.key}: {point.name} is {point.datatype.value}, "
                f"but the key holds {known.value}"
            )
        return point

    def _check_available(self) -> None:
        if not self._connected:
            raise NotConnected(f"{self.name}: not connected to memory")
        if self._failure is not None:
            raise self._failure

    def _reading(self, key: str, now: float) -> Reading:
        if key in self._bad:
            return Reading(None, now, Quality.BAD, f"{self.name} {key}: {self._bad[key]}")
        # device_time: when the value last changed, as an OPC UA SourceTimestamp says.
        return Reading(self._values[key], now, device_time=self._changed.get(key, now))

    def _store(self, key: str, value: Value) -> None:
        old = self._values.get(key)
        self._values[key] = value
        if old is not None and same_value(old, value):
            return
        self._changed[key] = time.time()
        if not self._connected or self._failure is not None:
            return  # subscribers get fresh readings when the device is back
        for subscription in list(self._subscriptions):
            changed = [p for p in subscription.points if p.key == key]
            if changed:
                self._deliver(subscription, changed)

    def _notify_all(self) -> None:
        if not self._connected:
            return
        for subscription in list(self._subscriptions):
            self._deliver(subscription, subscription.points)

    def _deliver(self, subscription: _Subscription, points: Sequence[MemoryPoint]) -> None:
        now = time.time()
        if self._failure is not None:
            readings = {p.name: Reading(None, now, Quality.BAD, str(self._failure)) for p in points}
        else:
            readings = {p.name: self._reading(p.key, now) for p in points}
        try:
            subscription.callback(readings)
        except Exception:
            # A subscriber's bug must not fail a confirmed write or the device side.
            log.exception("%s: subscription callback failed", self.name)
