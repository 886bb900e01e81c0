"""Health tracking and the reconnect backoff shared by every network driver."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable

from drivers.base import Health, HealthCallback, HealthState, Unsubscribe
from drivers.errors import ConnectFailed, DriverError

log = logging.getLogger("drivers")


class HealthTracker:
    """Holds a device's Health and tells listeners once per transition, never on every poll."""

    def __init__(self, device: str) -> None:
        self.device = device
        self._health = Health()
        self._listeners: list[HealthCallback] = []
        #: time.monotonic() of the last poll cycle or keep-alive the device answered (None
        #: before the first): a watchdog outside the driver finds a poller or keep-alive that
        #: stopped, which no other request may hide.
        self.answered_at: float | None = None

    def answered(self) -> None:
        """A poll cycle or keep-alive of the driver's own was answered."""
        self.answered_at = time.monotonic()

    @property
    def health(self) -> Health:
        """The current health."""
        return self._health

    def set(self, state: HealthState, error: str | None = None) -> None:
        """Move to a state; listeners hear of it only when the state actually changes."""
        if state is self._health.state:
            if error is not None and error != self._health.last_error:
                self._health = Health(state, error, self._health.since)
            return
        last = error if error is not None else self._health.last_error
        reconnected = state is HealthState.CONNECTED and self._health.state in (
            HealthState.LOST,
            HealthState.DISCONNECTED,
        )
        self._health = Health(state, last, time.time())
        if reconnected and self.answered_at is not None:
            self.answered()  # a reconnect is an answer: the watchdog counts from here
        log.info("device %s health %s%s", self.device, state.value, f": {error}" if error else "")
        for listener in list(self._listeners):
            try:
                listener(self.device, self._health)
            except Exception:
                # A faulty listener must not break the connect or reconnect loop that called us.
                log.exception("device %s: health listener %r failed", self.device, listener)

    def listen(self, callback: HealthCallback) -> Unsubscribe:
        """Register a listener; returns the function that removes it."""
        self._listeners.append(callback)

        def unsubscribe() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return unsubscribe


class Backoff:
    """Exponential backoff, equal jitter: try n waits uniform(c/2, c), c = min(cap, first·2**n).

    The fixed half keeps a connect loop from spinning (never under first/2); the random half
    spreads the reconnects of many clients. reset() starts again from `first`.
    """

    def __init__(self, first: float = 0.05, cap: float = 5.0) -> None:
        self.first, self.cap, self._attempt = first, cap, 0

    def reset(self) -> None:
        """Start again from the first delay (after a success)."""
        self._attempt = 0

    def next_delay(self) -> float:
        """The next delay: uniform between half the current ceiling and the ceiling."""
        ceiling = min(self.cap, self.first * 2.0**self._attempt)
        if ceiling < self.cap:  # at the cap, stop counting: 2.0**n overflows after n = 1023
            self._attempt += 1
        return random.uniform(ceiling / 2, ceiling)


async def connect_with_backoff(
    attempt: Callable[[], Awaitable[None]],
    *,
    device: str,
    endpoint: str,
    deadline: float,
    backoff: Backoff | None = None,
    on_try: Callable[[int, str | None], None] | None = None,
) -> None:
    """Call `attempt` until it succeeds or `deadline` seconds pass; then raise ConnectFailed.

    `on_try(number, why the previous try failed)` is called as each try starts.
    """
    backoff = backoff or Backoff()
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline
    last: Exception | None = None
    number = 0
    while True:
        number += 1
        if on_try is not None:
            try:
                on_try(number, None if last is None else str(last))
            except Exception:
                # Telling of a try must never stop the trying.
                log.exception("%s: connect progress listener failed", device)
        try:
            await attempt()
            return
        except (TimeoutError, DriverError, OSError) as err:
            last = err
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is None or task.cancelling():
                raise  # ours: the caller gives up
            # A library's own: asyncua's wait_for can end a timed-out request with a bare
            # CancelledError under load. Nobody cancelled this task: a failed try, not an end.
            last = DriverError(f"the connection attempt to {endpoint} was cut short")
        remaining = end - loop.time()
        if remaining <= 0:
            raise ConnectFailed.about(
                device, f"cannot connect to {endpoint} within {deadline:g} s: {last}"
            ) from last
        await asyncio.sleep(min(backoff.next_delay(), remaining))


class TracksHealth:
    """Mixin for drivers: `health` and `on_health` served by the HealthTracker in `_tracker`."""

    _tracker: HealthTracker

    @property
    def health(self) -> Health:
        """The device's current connection health."""
        return self._tracker.health

    def on_health(self, callback: HealthCallback) -> Unsubscribe:
        """Call back with (device name, Health) once per health transition."""
        return self._tracker.listen(callback)

    @property
    def answered_at(self) -> float | None:
        """time.monotonic() of the last poll cycle or keep-alive answered; None: cannot tell."""
        return self._tracker.answered_at
