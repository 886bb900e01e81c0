"""One subscribe() call of the OPC UA driver: its points, callback and asyncua subscription."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription

from drivers.base import Quality, Reading, ReadingsCallback
from drivers.opcua.faults import failure_text
from drivers.opcua.nodes import node_id_of, to_reading
from drivers.opcua_types import status_name
from drivers.points import OpcuaPoint

log = logging.getLogger("drivers.opcua")


class Watch:
    """One subscribe() call: its points, callback and the asyncua subscription of this session."""

    def __init__(
        self,
        device: str,
        points: list[OpcuaPoint],
        callback: ReadingsCallback,
        failed: Callable[[Client, str], None],
    ) -> None:
        self.device = device
        # Fails the session the notifications came on: LOST, and the driver reconnects.
        self._failed = failed
        self.points = points
        self.callback = callback
        self.active = True
        self.client: Client | None = None
        self.subscription: Subscription | None = None
        #: Why the server refused this watch's subscription on this session (told once).
        self.refusal: str | None = None
        #: The task trying a refused subscription again on this session (one per watch).
        self.retry: asyncio.Task[None] | None = None
        # One monitored item per node, even when several tags name the same node.
        self.by_node: dict[ua.NodeId, list[str]] = {}
        self._points = {p.name: p for p in points}
        for p in points:
            self.by_node.setdefault(node_id_of(device, p.name, p.node_id), []).append(p.name)
        #: The last reading the server notified of each point, in this session.
        self.told: dict[str, Reading] = {}
        #: The newest fresh read that differed from `told`, of each point being re-read.
        self.pending: dict[str, Reading] = {}
        #: When the subscription was created (time.monotonic(), asyncua's clock for its
        #: last publish) and how long it may stay silent (see `silent_for`).
        self.subscribed_at = 0.0
        self.silent_after = 0.0

    def watches(self, point: OpcuaPoint) -> bool:
        """True when this watch has the point (by name and node)."""
        return self._points.get(point.name) == point

    def subscribed(self, subscription: Subscription, silent_after: float) -> None:
        """The subscription is created on the watch's session; it may be silent this long."""
        self.subscription = subscription
        self.subscribed_at = time.monotonic()
        self.silent_after = silent_after

    def silent_for(self, now: float) -> float | None:
        """How long the subscription has sent nothing (no data change, no keep-alive) when
        that is longer than its server promised (`silent_after`); None otherwise."""
        if self.subscription is None:
            return None
        # asyncua stamps every publish response, keep-alives included (None before the first).
        last = self.subscription.last_publish_at
        quiet = now - (last if last is not None else self.subscribed_at)
        return quiet if quiet > self.silent_after else None

    def detach(self) -> Subscription | None:
        """Forget the session this watch was subscribed on; returns its subscription."""
        subscription, self.subscription, self.client = self.subscription, None, None
        self.told.clear()
        self.refusal = None
        # Not cancelled: mid-request, that would leave what it created on the server. It ends
        # by itself once the watch is inactive, subscribed or on another session.
        self.retry = None
        return subscription

    def deliver(self, readings: dict[str, Reading]) -> None:
        """Hand readings to the subscriber; its errors are logged, never raised into asyncua."""
        if not self.active or not readings:
            return
        try:
            self.callback(readings)
        except Exception:
            log.exception("%s: subscriber callback failed", self.device)

    def deliver_bad(self, points: Sequence[OpcuaPoint], error: str) -> None:
        """A BAD reading for each point, naming the point and the reason."""
        for p in points:
            self.told.pop(p.name, None)  # no longer what the server notified
        now = time.time()
        self.deliver(
            {
                p.name: Reading(
                    None, now, Quality.BAD, f"{self.device} {p.name} {p.node_id}: {error}"
                )
                for p in points
            }
        )

    def datachange_notification(self, node: Node, _value: Any, data: DataChangeNotif) -> None:
        """asyncua's data-change callback: one Reading per tag on the node."""
        client = self.client
        if client is None:
            return  # late news from a lost session must not hide that it was lost
        try:
            names = self.by_node.get(node.nodeid, [])
            now = time.time()
            datavalue = data.monitored_item.Value
            readings = {
                name: to_reading(self.device, self._points[name], datavalue, now) for name in names
            }
        except Exception as err:
            # asyncua would only log it, and the subscriber would wait for values in vain.
            log.exception("%s: handling a data change failed", self.device)
            cause = f"data-change notification failed: {failure_text(err)}"
            self._failed(client, cause)
            return
        self.told.update(readings)
        self.deliver(readings)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        """The server ended the subscription (or asyncua saw the session die): LOST, reconnect."""
        client = self.client
        code = status.Status
        if client is None or code is None or not code.is_bad():
            return  # a session already forgotten; a loss on its way reaches users as health
        log.error("%s: the server ended a subscription: %s", self.device, status_name(code))
        self._failed(client, f"subscription ended: {status_name(code)}")
