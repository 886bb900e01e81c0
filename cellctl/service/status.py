"""What the surfaces are told: the service's status built from its parts, each new status
handed to the listeners once per loop turn, changed tag values at most every TAG_PERIOD."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from cellctl.control.machine import Mode, State
from cellctl.io.session import TagIO
from cellctl.service.api import Prompt, ServiceStatus
from cellctl.service.served import Alarm, ServedBatch, produced
from cellctl.values import TagValue

# The service's logger, not this module's: its lines read as the service's wherever they come from.
log = logging.getLogger("cellctl.service")

#: How often changed tag values are handed to the surfaces, at most (seconds).
TAG_PERIOD = 0.1


def build_status(
    *,
    cell: str,
    mode: Mode,
    security: str,
    alarms: Mapping[str, Alarm],
    forced: Mapping[str, str],
    recipes: tuple[str, ...],
    seq: int,
    served: ServedBatch | None,
    io: TagIO,
) -> ServiceStatus:
    """The status of the service with these parts, and of its batch if one is loaded."""
    trips = [
        f"{name}: {alarm.text}" + ("" if alarm.active else " (cleared, not acknowledged)")
        for name, alarm in alarms.items()
    ]
    common: dict[str, Any] = {
        "cell": cell,
        "mode": mode.value,
        "security": security,
        "trips": tuple(trips),
        "forced": dict(forced),
        "recipes": recipes,
        "seq": seq,
    }
    if served is None:
        return ServiceStatus(state=State.STOPPED.value, legal=(), **common)
    controller, operator = served.controller, served.operator
    identity = served.loaded.identity
    prompt = None
    if operator.prompt is not None:
        wants = operator.prompt.answer
        prompt = Prompt(
            operator.prompt.step_id,
            operator.prompt.text,
            wants.describe_range() if wants is not None else "any text",
        )
    paused = operator.paused
    return ServiceStatus(
        state=controller.state.value,
        legal=tuple(c.value for c in controller.machine.legal_commands()),
        batch=served.recorder.batch,
        recipe=identity.name,
        recipe_version=int(identity.version),
        recipe_sha256=identity.sha256,
        parameters={k: str(v) for k, v in served.parameters.items()},
        step=served.step,
        produced=produced(served, io),
        stop_reason=served.stop_reason,
        prompt=prompt,
        paused="" if paused is None else f"{paused.path} {paused.label}",
        breakpoints=tuple(sorted(controller.executor.breakpoints)),
        **common,
    )


class StatusFeed:
    """The service's listeners: told of each new status once per loop turn, of changed tag
    values at most every TAG_PERIOD."""

    def __init__(
        self, status: Callable[[], ServiceStatus], served: Callable[[], ServedBatch | None]
    ) -> None:
        self._status = status
        self._served = served
        #: Counts the changes: a status with a higher seq is newer.
        self.seq = 0
        self._status_listeners: list[Callable[[ServiceStatus], None]] = []
        self._tag_listeners: list[Callable[[Mapping[str, TagValue]], None]] = []
        self._pending_tags: dict[str, TagValue] = {}
        self._tag_flush: asyncio.TimerHandle | None = None
        self._notify_soon = False

    def changed(self) -> None:
        """Something a status shows changed: the listeners hear of it once this loop turn."""
        self.seq += 1
        if self._notify_soon:
            return
        self._notify_soon = True
        asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_soon = False
        status = self._status()
        for listener in list(self._status_listeners):
            try:
                listener(status)
            except Exception:
                log.error("a status listener failed", exc_info=True)

    def tag_changed(self, value: TagValue) -> None:
        """A tag's new value: handed on with the others that change within TAG_PERIOD."""
        self._pending_tags[value.tag] = value
        if self._tag_flush is None:
            self._tag_flush = asyncio.get_running_loop().call_later(TAG_PERIOD, self._flush_tags)

    def _flush_tags(self) -> None:
        self._tag_flush = None
        values, self._pending_tags = self._pending_tags, {}
        for listener in list(self._tag_listeners):
            try:
                listener(values)
            except Exception:
                log.error("a tag listener failed", exc_info=True)
        served = self._served()
        if served is not None and served.parts is not None and served.parts.counter in values:
            self.changed()  # the parts made so far

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """Be told of each new status and of changed tag values; returns the stop."""
        self._status_listeners.append(on_status)
        self._tag_listeners.append(on_tags)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._status_listeners.remove(on_status)
            with contextlib.suppress(ValueError):
                self._tag_listeners.remove(on_tags)

        return stop

    def close(self) -> None:
        """Hand on no more tag values (the ones pending are dropped)."""
        if self._tag_flush is not None:
            self._tag_flush.cancel()
