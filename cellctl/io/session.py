"""The controller's hands on the cell: fresh reads, range-checked confirmed writes, method
calls, and a board of the newest value of every watched tag with listeners per tag.

Freshness rules the executor relies on: `read` always asks the devices (never a cache);
`write` returns once the device confirmed; every TagValue carries the time its sample was
taken (stamped when its answer came), so a wait can ignore samples older than a fresh read
made after its writes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

from cellctl.cell import Cell
from cellctl.cell.tags import method_spec, point_for, points_by_device
from cellctl.errors import BadValue, CellctlError, UnknownTag, did_you_mean
from cellctl.io.drivers import (
    ConnectReport,
    DeviceFailed,
    DevicesUnreachable,
    build_drivers,
    devices_for_tags,
    refuse_in_process_devices,
)
from cellctl.values import TagValue
from drivers.base import Driver, HealthCallback, Quality, Reading, Unsubscribe, Value
from drivers.errors import DriverError
from drivers.points import Point

TagListener = Callable[[TagValue], None]
ListenerError = Callable[[TagValue, Exception], None]

log = logging.getLogger("cellctl.io.session")


class OutOfRange(CellctlError):
    """A value computed at run time that does not fit its tag (type, min/max, raw range)."""


class NothingToRead(CellctlError):
    """A device named for reading that has no tags in the cell file."""


def tags_to_read(cell: Cell, names: Iterable[str]) -> list[str]:
    """The tags that reading `names` means, each once, in the order named: a tag is itself, a
    device is all its tags (in cell-file order), no name at all is every tag.

    A name that is both a tag and a device (a tag may be named `press`) is the tag, so that a
    single tag can always be read; its device's tags can still be named one by one.
    """
    names = list(names)
    if not names:
        return list(cell.tags)
    chosen: list[str] = []
    for name in names:
        if name in cell.tags:
            chosen.append(name)
        elif name in cell.devices:
            tags = [tag for tag, spec in cell.tags.items() if spec.device == name]
            if not tags:
                raise NothingToRead(f"device {name} has no tags in cell {cell.cell}")
            chosen += tags
        else:
            hint = did_you_mean(name, [*cell.tags, *cell.devices])
            raise UnknownTag(
                f"{name!r} is neither a tag nor a device{hint} in cell {cell.cell}", tag=name
            )
    return list(dict.fromkeys(chosen))


class TagBoard:
    """The newest value of every watched tag; listeners hear each update of the tags they name."""

    def __init__(self) -> None:
        self._latest: dict[str, TagValue] = {}
        # Tuples, replaced whole when listeners come and go: an update (every polled value)
        # iterates them as they are, without a copy, and a listener that unsubscribes during
        # an update cannot change the tuple being iterated.
        self._listeners: dict[str, tuple[TagListener, ...]] = {}
        self._on_error: list[ListenerError] = []

    def update(self, value: TagValue) -> None:
        """Take a new sample and tell the tag's listeners (in the order they listened); one
        that raises is logged and reported, and never keeps the sample from the others."""
        self._latest[value.tag] = value
        listeners = self._listeners.get(value.tag)
        if not listeners:  # most polled tags: nobody listens to them one by one
            return
        for listener in listeners:
            try:
                listener(value)
            except Exception as error:
                log.exception("a listener of %s failed", value.tag)
                for report in list(self._on_error):
                    try:
                        report(value, error)
                    except Exception:
                        log.exception("reporting a failed listener of %s failed", value.tag)

    def on_listener_error(self, report: ListenerError) -> Unsubscribe:
        """Call `report(sample, error)` whenever a listener raises on a sample."""
        self._on_error.append(report)

        def unsubscribe() -> None:
            if report in self._on_error:
                self._on_error.remove(report)

        return unsubscribe

    def latest(self, tag: str) -> TagValue | None:
        """The newest sample of a tag, or None before the first."""
        return self._latest.get(tag)

    def listen(self, tags: Iterable[str], listener: TagListener) -> Unsubscribe:
        """Call `listener` with every update of any of `tags` until unsubscribed."""
        names = list(dict.fromkeys(tags))
        for tag in names:
            self._listeners[tag] = (*self._listeners.get(tag, ()), listener)

        def unsubscribe() -> None:
            for tag in names:
                listeners = list(self._listeners.get(tag, ()))
                if listener in listeners:
                    listeners.remove(listener)  # the first: as list.remove did before
                    self._listeners[tag] = tuple(listeners)

        return unsubscribe


class TagIO:
    """Connected drivers for a cell's devices, with reads, writes and calls in engineering units.

    `drivers` are built by the caller (cellctl.io.drivers.build_drivers, or memory drivers in
    tests); `tags` are the tags to watch on the board once `watch()` is called.
    """

    def __init__(self, cell: Cell, drivers: Mapping[str, Driver], tags: Sequence[str]) -> None:
        self.cell = cell
        self.drivers = dict(drivers)
        self.tags = list(dict.fromkeys(tags))
        self._watched = frozenset(self.tags)
        self.board = TagBoard()
        #: Devices that could not be reached (CellSession with partial=True): they read BAD.
        self.unreachable: dict[str, str] = {}
        self._points: dict[str, Point] = {}
        #: Per tag: its device, and its raw-to-engineering conversion (None: values as read).
        self._conversions: dict[str, tuple[str, Callable[[Value], Value] | None]] = {}
        self._unwatch: Unsubscribe | None = None

    def point(self, tag: str) -> Point:
        """The driver point of a tag (built once)."""
        if tag not in self._points:
            self._points[tag] = point_for(self.cell, tag)
        return self._points[tag]

    def device_of(self, tag: str) -> str:
        """The device a tag lives on."""
        return self.cell.tags[tag].device

    async def connect(self, *, partial: bool = False, report: ConnectReport | None = None) -> None:
        """Connect every driver at once (each retries within its own bound); raises
        DevicesUnreachable with one line per device that could not be reached.

        With `partial`, it raises only when no device at all could be reached; the others
        are kept in `unreachable` and read BAD. `report` hears of every try.
        """
        names = list(self.drivers)

        async def reach(name: str) -> None:
            try:
                await self.drivers[name].connect(report)
            finally:
                if report is not None:
                    report.reached(name)

        results = await asyncio.gather(*(reach(n) for n in names), return_exceptions=True)
        failures = {
            n: r for n, r in zip(names, results, strict=True) if isinstance(r, BaseException)
        }
        for failure in failures.values():
            if not isinstance(failure, Exception):
                await self.close()
                raise failure
        if failures and (not partial or len(failures) == len(names)):
            await self.close()
            raise DevicesUnreachable({n: str(f) for n, f in failures.items()})
        for name, failure in failures.items():
            self.unreachable[name] = str(failure)
            await self.drivers[name].close()  # stops its reconnect loop

    def watch(self) -> None:
        """Subscribe to every watched tag; each update goes to the board. Once: a service's
        controllers each ask again, and a second subscription would leak the first."""
        if self._unwatch is not None:
            return
        by_device = points_by_device(self.cell, self.tags)

        def deliver(readings: dict[str, Reading]) -> None:
            update, value_of = self.board.update, self.value_of  # once per cycle, not per tag
            for tag, reading in readings.items():
                update(value_of(tag, reading))

        stops = [self.drivers[d].subscribe(points, deliver) for d, points in by_device.items()]

        def unwatch() -> None:
            for stop in stops:
                stop()

        self._unwatch = unwatch

    async def close(self) -> None:
        """Stop watching and close every driver; one failing to close never stops the others."""
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        await asyncio.gather(*(d.close() for d in self.drivers.values()), return_exceptions=True)

    def value_of(self, tag: str, reading: Reading) -> TagValue:
        """A reading as the tag's engineering value."""
        conversion = self._conversions.get(tag)
        if conversion is None:
            # Worked out once per tag: every poll cycle converts every changed value.
            spec = self.cell.tags[tag]
            conversion = self._conversions[tag] = (
                spec.device,
                spec.from_raw if spec.scaled else None,
            )
        device, from_raw = conversion
        value = reading.value
        if from_raw is not None and value is not None and reading.quality is not Quality.BAD:
            value = from_raw(value)
        return TagValue(
            tag,
            device,
            value,
            reading.quality,
            reading.timestamp,
            reading.error,
            reading.device_time,
        )

    async def read(self, tags: Iterable[str] | None = None) -> dict[str, TagValue]:
        """Read tags (default: the watched ones) from their devices now, batched per device,
        devices in parallel, in the order asked.

        A device that fails gives BAD values naming the error; the caller decides.
        """
        tags = list(dict.fromkeys(self.tags if tags is None else tags))
        by_device: dict[str, list[str]] = {}
        for tag in tags:
            by_device.setdefault(self.device_of(tag), []).append(tag)

        async def read_device(device: str, names: list[str]) -> list[TagValue]:
            if device in self.unreachable:
                why = self.unreachable[device]
                return [TagValue(t, device, None, Quality.BAD, time.time(), why) for t in names]
            try:
                readings = await self.drivers[device].read([self.point(t) for t in names])
            except DriverError as err:
                now = time.time()
                bad = [TagValue(t, device, None, Quality.BAD, now, str(err)) for t in names]
                # The device failed to answer: the interlocks hear of it now, not at the next
                # poll (which may wait behind this very request on a shared bus).
                for value in bad:
                    if value.tag in self._watched:
                        self.board.update(value)
                return bad
            return [self.value_of(t, r) for t, r in zip(names, readings, strict=True)]

        groups = await asyncio.gather(*(read_device(d, n) for d, n in by_device.items()))
        found = {value.tag: value for group in groups for value in group}
        return {tag: found[tag] for tag in tags}

    def check(self, tag: str, value: Value) -> Value:
        """The value checked for a write to `tag`; OutOfRange naming the tag otherwise."""
        spec = self.cell.tags[tag]
        try:
            return spec.check_value(value)
        except BadValue as err:
            raise OutOfRange(f"tag {tag} on device {spec.device}: {err}") from None

    async def write(self, tag: str, value: Value) -> None:
        """Write a checked value; returns once the device confirmed it.

        Raises OutOfRange (nothing sent) or DeviceFailed naming the device and tag.
        """
        spec = self.cell.tags[tag]
        checked = self.check(tag, value)
        try:
            await self.drivers[spec.device].write(self.point(tag), spec.to_raw(checked))
        except DriverError as err:
            raise DeviceFailed(f"write {tag}: {err}", device=spec.device) from err

    async def call(self, method: str, args: Mapping[str, Value]) -> Value | None:
        """Call a device method with named args (in the cell file's order); DeviceFailed."""
        spec = method_spec(self.cell, method)
        ordered = [args[arg.name] for arg in spec.args]
        device = self.cell.methods[method].device
        try:
            result = await self.drivers[device].call(spec, ordered)
        except DriverError as err:
            raise DeviceFailed(f"call {method}: {err}", device=device) from err
        return result  # type: ignore[no-any-return]

    def on_health(self, callback: HealthCallback) -> Unsubscribe:
        """Call back with (device, Health) on each health transition of any device."""
        stops = [driver.on_health(callback) for driver in self.drivers.values()]

        def unsubscribe() -> None:
            for stop in stops:
                stop()

        return unsubscribe


class CellSession(TagIO):
    """The CLI's connection to the devices some tags use (read, write, watch).

    It reaches devices over their protocols, so memory devices are refused. With `partial`,
    devices that cannot be reached read BAD instead of failing the session.
    """

    def __init__(self, cell: Cell, tags: Sequence[str], *, partial: bool = False) -> None:
        devices = devices_for_tags(cell, tags)
        refuse_in_process_devices(cell, devices)
        super().__init__(cell, build_drivers(cell, devices), tags)
        self.partial = partial

    async def __aenter__(self) -> CellSession:
        with ConnectReport() as report:  # a slow connect tells who it is trying to reach
            await self.connect(report=report)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(
        self, *, partial: bool | None = None, report: ConnectReport | None = None
    ) -> None:
        """Connect every driver at once; with the session's `partial`, some may stay
        unreachable (they read BAD)."""
        await super().connect(partial=self.partial if partial is None else partial, report=report)

    def subscribe(self, callback: TagListener) -> Unsubscribe:
        """Watch the session's tags and call back with each new value."""
        self.watch()
        return self.board.listen(self.tags, callback)
