"""Interlocks: conditions watched on every update of their tags, lost communication and BAD
values treated as trips (the safe state itself is cellctl.control.safestate's).

The monitor only decides and reports: on_trip / on_clear are plain synchronous calls (board
listeners run inside driver callbacks); the controller takes the action and schedules its own
tasks. A value that cannot be trusted (BAD quality, an expression that cannot be evaluated)
trips rather than passes: fail safe.

A device is lost only when its health says so (or the watchdog finds it silent); a BAD value
from a device that still answers is a trip of its own ('bad-value:<device>'), so the safe
state is still written to that device.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from cellctl import expr
from cellctl.cell import Cell
from cellctl.control.events import BAD_VALUE, COMM_LOSS, Tripped
from cellctl.control.packml import Command
from cellctl.control.watchdog import Watchdog
from cellctl.io.session import TagIO
from cellctl.values import TagValue
from drivers.base import Health, HealthState, Quality, Unsubscribe, Value

#: Tripped actions, mildest first.
ACTIONS = ("hold", "stop", "abort")
#: Commands a standing trip refuses; Stop and Abort are never blocked.
BLOCKED_COMMANDS = frozenset({Command.START, Command.UNHOLD, Command.RESET})


def interlock_tags(cell: Cell) -> list[str]:
    """Every tag the cell's interlocks name, in cell-file order."""
    named = {name for interlock in cell.interlocks for name in interlock.condition.names}
    return [t for t in cell.tags if t in named]


@dataclass(frozen=True)
class _Watched:
    """One interlock of the cell, parsed once."""

    name: str
    action: str
    condition: expr.Expression
    tags: tuple[str, ...]


class InterlockMonitor:
    """Evaluates every interlock on each update of its tags and watches devices for lost
    communication; reports each trip once and each clear once."""

    def __init__(
        self,
        cell: Cell,
        io: TagIO,
        *,
        on_trip: Callable[[Tripped], None],
        on_clear: Callable[[str], None],
        comm_devices: Collection[str],
        comm_action: str = "hold",
    ) -> None:
        if comm_action not in ACTIONS:
            raise ValueError(f"comm_action must be one of {', '.join(ACTIONS)}: {comm_action!r}")
        self.cell = cell
        self.io = io
        self.on_trip = on_trip
        self.on_clear = on_clear
        self.comm_action = comm_action
        self._interlocks: list[_Watched] = []
        for interlock in cell.interlocks:
            condition = interlock.condition
            tags = tuple(t for t in cell.tags if t in condition.names)  # cell-file order
            self._interlocks.append(_Watched(interlock.name, interlock.action, condition, tags))
        # Fail safe: a device an interlock reads is watched for loss even if not named.
        devices = set(comm_devices) | {cell.tags[t].device for t in self.tags()}
        self._devices = [d for d in cell.devices if d in devices]
        self._device_tags = {d: [t for t in io.tags if io.device_of(t) == d] for d in self._devices}
        self._fresh: dict[str, bool] = {}  # a good reading arrived since the device was lost
        self._active: dict[str, Tripped] = {}
        self._stops: list[Unsubscribe] = []
        self._watchdog = Watchdog(
            cell,
            io,
            dict.fromkeys(cell.tags[t].device for t in self.tags()),
            on_silent=lambda device, detail: self._lose(device, detail, {}),
            on_answering=self._maybe_recovered,
        )
        self._broken: set[str] = set()  # devices whose samples a listener failed on

    def tags(self) -> list[str]:
        """Every tag the interlocks name, in cell-file order (the controller watches them)."""
        named = {t for watched in self._interlocks for t in watched.tags}
        return [t for t in self.cell.tags if t in named]

    @property
    def active(self) -> dict[str, Tripped]:
        """Trips whose condition is still true, by name; they block Start, Unhold and Reset."""
        return dict(self._active)

    def start(self) -> None:
        """Listen to the board and to device health; evaluate what is already known."""
        if self._stops:
            return
        self._watchdog.start()
        self._stops = [
            self.io.board.listen(self._watched_tags(), self._on_value),
            self.io.on_health(self._on_health),
            self.io.board.on_listener_error(self._listener_failed),
        ]
        for device in self._devices:
            health = self._health(device)
            if health is not None and health.state is HealthState.LOST:
                self._lose(device, health.last_error or "no detail", {})
        for device in self._devices:
            for tag in self._device_tags[device]:
                latest = self.io.board.latest(tag)
                if latest is not None:
                    self._comm_reading(latest)
        for watched in self._interlocks:
            self._evaluate(watched, self._board_values(watched))

    def stop(self) -> None:
        """Stop listening and watching; `active` keeps what it holds."""
        for stop in self._stops:
            stop()
        self._stops = []
        self._watchdog.stop()

    async def check_now(self) -> list[Tripped]:
        """Read every interlock tag (and every watched tag of the watched devices) afresh,
        evaluate all, report new trips and clears; returns every trip active afterwards."""
        names = self._watched_tags()
        read = await self.io.read(names) if names else {}
        values = {tag: self._newest(value) for tag, value in read.items()}
        for device in self._devices:
            mine = [values[t] for t in self._device_tags[device] if t in values]
            bad = next((v for v in mine if v.quality is Quality.BAD), None)
            if bad is not None:
                self._bad(bad)
                continue
            health = self._health(device)
            if health is not None and health.state is HealthState.LOST:
                self._lose(device, health.last_error or "no detail", {})
            elif self._may_recover(device):
                self._fresh[device] = True
                self._clear(COMM_LOSS + device)
                self._clear(BAD_VALUE + device)
        for watched in self._interlocks:
            self._evaluate(watched, {t: values.get(t) for t in watched.tags})
        return list(self._active.values())

    def blocking_message(self, command: Command) -> str | None:
        """Why `command` is refused while trips stand, or None when it is free."""
        if command not in BLOCKED_COMMANDS or not self._active:
            return None
        named = [
            f"{t.interlock} ({t.condition if t.of_device else expr.show_values(t.values)})"
            for t in self._active.values()
        ]
        if len(named) == 1:
            return f"{command} is blocked by interlock {named[0]} until it clears"
        return f"{command} is blocked by interlocks {'; '.join(named)} until they clear"

    # --- events ---------------------------------------------------------------------------

    def _on_value(self, value: TagValue) -> None:
        if value.device in self._device_tags:
            self._comm_reading(value)
        for watched in self._interlocks:
            if value.tag in watched.tags:
                self._evaluate(watched, self._board_values(watched))

    def _on_health(self, device: str, health: Health) -> None:
        if device not in self._device_tags:
            return
        if health.state is HealthState.LOST:
            self._lose(device, health.last_error or "no detail", {})
        elif health.state is HealthState.CONNECTED:
            self._maybe_recovered(device)

    def _comm_reading(self, value: TagValue) -> None:
        if value.quality is Quality.BAD:
            self._bad(value)
        else:
            self._fresh[value.device] = True
            self._maybe_recovered(value.device)

    # --- decisions ------------------------------------------------------------------------

    def _evaluate(self, watched: _Watched, values: Mapping[str, TagValue | None]) -> None:
        """Tripped or clear one interlock on these samples; unknown values leave it as it is."""
        samples = [values.get(t) for t in watched.tags]
        known = [s for s in samples if s is not None]
        if len(known) < len(samples):
            return  # no sample yet: not evaluated yet
        bad = [s for s in known if s.quality is Quality.BAD]
        if bad:
            # Cannot tell: the device's bad-value (or comm-loss) trip stands in for it.
            for sample in bad:
                self._bad(sample)
            return
        shown: dict[str, Value | None] = {s.tag: s.value for s in known}
        given = {s.tag: s.value for s in known if s.value is not None}
        odd = [t for t, v in given.items() if isinstance(v, float) and not math.isfinite(v)]
        if odd:
            # NaN compares false with everything: `force > 50` would pass. Fail safe.
            self._trip_interlock(watched, shown, f"cannot evaluate: {', '.join(odd)} not a number")
            return
        try:
            result = expr.evaluate(watched.condition, given)
        except expr.EvaluationError as err:
            self._trip_interlock(watched, shown, f"cannot evaluate: {err}")
            return
        if result is True:
            self._trip_interlock(watched, shown, None)
        elif result is False:
            self._clear(watched.name)
        else:
            self._trip_interlock(watched, shown, f"gave {expr.show(result)}, not true or false")

    def _trip_interlock(
        self, watched: _Watched, values: dict[str, Value | None], problem: str | None
    ) -> None:
        if watched.name in self._active:
            return
        detail = "; ".join(p for p in (expr.show_values(values), problem) if p)
        message = f"interlock {watched.name} tripped ({watched.condition.text}; {detail}): "
        self._trip(
            Tripped(
                interlock=watched.name,
                action=watched.action,
                condition=watched.condition.text,
                values=values,
                message=message + watched.action,
            )
        )

    def _bad(self, sample: TagValue) -> None:
        """A BAD sample: the device is lost if its health says it fails (lost, or degraded by
        a request that failed), else it answers with a bad value."""
        detail = f"{sample.tag} is bad: {sample.error}"
        health = self._health(sample.device)
        failing = health is not None and health.state in (HealthState.LOST, HealthState.DEGRADED)
        if failing or COMM_LOSS + sample.device in self._active:
            # Lost, or a sample from the outage that the device has not replaced yet.
            self._lose(sample.device, detail, {sample.tag: None})
            return
        self._fresh[sample.device] = False
        self._device_trip(
            BAD_VALUE,
            sample.device,
            f"a BAD value from {sample.device}",
            detail,
            {sample.tag: None},
        )

    def _lose(self, device: str, detail: str, values: dict[str, Value | None]) -> None:
        self._fresh[device] = False
        self._device_trip(COMM_LOSS, device, f"lost communication with {device}", detail, values)

    def _device_trip(
        self, kind: str, device: str, condition: str, detail: str, values: dict[str, Value | None]
    ) -> None:
        """Trip `device`'s own interlock of `kind` (COMM_LOSS or BAD_VALUE), once."""
        name = kind + device
        if name in self._active:
            return
        # A device's own trip holds by default, whatever the interlocks that read the device
        # would do: Held has the safe state written too.
        action = self.comm_action
        message = f"interlock {name} tripped ({condition}; {detail}): {action}"
        self._trip(
            Tripped(
                interlock=name,
                action=action,
                condition=condition,
                values=values,
                message=message,
                device=device,
            )
        )

    def _listener_failed(self, value: TagValue, error: Exception) -> None:
        """A listener of the board raised on a sample: its device's values are not watched
        as they should be, so the device counts as lost for the rest of the batch (a good
        sample does not clear it: the bug is still there)."""
        self._broken.add(value.device)
        self._lose(value.device, f"internal error on {value.tag}: {error!r}", {})

    def _maybe_recovered(self, device: str) -> None:
        """Clear a device's comm-loss and bad-value trips once it is CONNECTED and its
        readings are good again."""
        names = [n for n in (COMM_LOSS + device, BAD_VALUE + device) if n in self._active]
        if not names or not self._may_recover(device):
            return
        tags = self._device_tags.get(device, [])
        if tags:
            if not self._fresh.get(device, False):
                return
            latest = [self.io.board.latest(t) for t in tags]
            if any(v is not None and v.quality is Quality.BAD for v in latest):
                return
        for name in names:
            self._clear(name)

    def _trip(self, trip: Tripped) -> None:
        self._active[trip.interlock] = trip
        self.on_trip(trip)

    def _clear(self, name: str) -> None:
        if self._active.pop(name, None) is not None:
            self.on_clear(name)

    # --- helpers --------------------------------------------------------------------------

    def _watched_tags(self) -> list[str]:
        """The interlocks' tags and every watched tag of the watched devices, once each."""
        devices = (t for d in self._devices for t in self._device_tags[d])
        return list(dict.fromkeys([*self.tags(), *devices]))

    def _board_values(self, watched: _Watched) -> dict[str, TagValue | None]:
        return {t: self.io.board.latest(t) for t in watched.tags}

    def _newest(self, value: TagValue) -> TagValue:
        """A fresh read, unless the board heard something newer while it was under way."""
        latest = self.io.board.latest(value.tag)
        return latest if latest is not None and latest.not_older_than(value) else value

    def _health(self, device: str) -> Health | None:
        driver = self.io.drivers.get(device)
        return driver.health if driver is not None else None

    def _health_ok(self, device: str) -> bool:
        health = self._health(device)
        return health is None or health.state is HealthState.CONNECTED

    def _may_recover(self, device: str) -> bool:
        """A device's own trips may clear: connected, no listener failed on its samples, and
        (where the watchdog looks) a poll cycle or keep-alive answered within its bound."""
        if not self._health_ok(device) or device in self._broken:
            return False
        return not self._watchdog.silent_for(device, time.monotonic())
