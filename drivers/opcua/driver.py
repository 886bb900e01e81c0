"""The OPC UA driver: reads, writes, method calls and subscriptions on its session."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.subscription import Subscription
from asyncua.ua.attribute_ids import AttributeIds

from drivers.base import HealthState, Reading, ReadingsCallback, Unsubscribe, Value
from drivers.codecs import check_value, check_write, same_reading
from drivers.errors import (
    BadResponse,
    BadStatus,
    DeviceTimeout,
    DriverError,
    NotConnected,
    WriteRejected,
)
from drivers.health import Backoff
from drivers.opcua.faults import PASSING_ITEM_REFUSALS
from drivers.opcua.nodes import node_id_of
from drivers.opcua.requests import RECONNECT_CAP
from drivers.opcua.session import OpcuaSession
from drivers.opcua.watch import Watch
from drivers.opcua_types import from_ua, status_name, to_variant
from drivers.points import MethodSpec, OpcuaPoint, Point

log = logging.getLogger("drivers.opcua")

# Re-reads of a watched point after a fresh read that differed from its last notification.
RECHECKS = 3
# Publishing intervals without a change after which the server sends a keep-alive (asyncua
# asks for 75 % of the session timeout: 45 s at 100 ms, far too late to notice a subscription
# that stopped publishing).
KEEP_ALIVE_COUNT = 10
# Publishing intervals without a Publish request after which the server drops a subscription.
LIFETIME_COUNT = 10_000


class OpcuaDriver(OpcuaSession):
    """Talks to one OPC UA server; implements the Driver protocol."""

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """Read every point's value in one request; a bad node gives a BAD reading, not an error.

        A watched point read differing from its last notification is re-read (see _recheck).
        """
        opc = [self._opcua_point(p) for p in points]
        readings = await self._read(opc)
        for watch in self._watches:
            self._heard_fresh(watch, opc, readings)
        return readings

    async def write(self, point: Point, value: Value) -> None:
        """Write one value as a Variant of the point's type; returns once the server said Good."""
        p = self._opcua_point(point)
        where = f"{self.name} {p.name} {p.node_id}"
        checked = check_write(where, p, value, read_only="read-only in the cell file, not written")
        node = node_id_of(self.name, p.name, p.node_id)
        datavalue = ua.DataValue(to_variant(p.datatype, checked))
        results = await self._request(
            f"write {p.name} {p.node_id}",
            lambda c: c.uaclient.write_attributes([node], [datavalue], AttributeIds.Value),
        )
        if not results[0].is_good():
            name = status_name(results[0])
            raise BadStatus(f"{where}: {self.config.endpoint} refused the write: {name}", name)

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Call a method with Variants of the declared types; its single result, or None."""
        where = f"{self.name} {method.name} ({method.object_node} {method.browse_name})"
        if len(args) != len(method.args):
            raise WriteRejected(f"{where}: takes {len(method.args)} argument(s), got {len(args)}")
        inputs: list[ua.Variant] = []
        for spec, value in zip(method.args, args, strict=True):
            try:
                inputs.append(to_variant(spec.datatype, check_value(spec.datatype, value)))
            except WriteRejected as err:
                raise WriteRejected(f"{where}: argument {spec.name}: {err}") from err
        object_id = node_id_of(self.name, method.name, method.object_node)
        method_id = await self._method_id(method)
        request = ua.CallMethodRequest(object_id, method_id, inputs)
        results = await self._request(f"call {method.name}", lambda c: c.uaclient.call([request]))
        result = results[0]
        if not result.StatusCode.is_good():
            name = status_name(result.StatusCode)
            refused = [
                spec.name
                for spec, status in zip(method.args, result.InputArgumentResults, strict=False)
                if not status.is_good()
            ]
            detail = f" (argument {', '.join(refused)})" if refused else ""
            raise BadStatus(f"{where}: {self.config.endpoint} answered {name}{detail}", name)
        if method.result is None or not result.OutputArguments:
            return None
        try:
            return from_ua(method.result, result.OutputArguments[0].Value)
        except ValueError as err:
            raise BadResponse(f"{where}: result {err}") from err

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Monitored items for the points; callback with {name: Reading} on every change."""
        opc = [self._opcua_point(p) for p in points]
        watch = Watch(self.name, opc, callback, self._session_failed)
        self._watches.append(watch)
        client = self._client
        if client is not None:
            self._spawn(self._subscribe(watch, client), "subscribe", client)
        health = self._tracker.health
        if health.state is HealthState.LOST:
            # The others heard of the loss when it happened: this one hears of it now.
            cause = self._lost_reason
            asyncio.get_running_loop().call_soon(watch.deliver_bad, watch.points, cause)

        def unsubscribe() -> None:
            if watch in self._watches:
                self._watches.remove(watch)
            watch.active = False
            subscription = watch.detach()
            if subscription is not None:
                self._spawn(self._delete(subscription), "delete subscription")

        return unsubscribe

    async def _subscribe(self, watch: Watch, client: Client) -> None:
        """Activate a watch on this session; a request that finds the session unhealthy fails
        the session (LOST, every subscriber told, the reconnect loop re-activates every watch)."""
        try:
            await self._activate(watch, client)
        except (DeviceTimeout, NotConnected) as err:
            self._session_failed(client, err.reason)

    async def _activate(self, watch: Watch, client: Client) -> None:
        """Create the watch's subscription on this session; refused items become BAD readings.

        A request that times out or finds the connection gone raises (DeviceTimeout,
        NotConnected): the session is not healthy, and the caller fails it. Its late answer
        would find no request waiting, and the tag would stay BAD on a device shown CONNECTED.
        A refusal (any other error: a Bad status such as BadTooManySubscriptions), or a
        monitored item refused for a limit (BadTooManyMonitoredItems, ...), is BAD readings and
        a retry on this session (_retry_activate): a refusal may pass (a subscription freed by
        another client), and nothing else would try again. Any other refused item (no such
        node) is a BAD reading for its tags.
        """
        if not watch.active or watch.client is client or self._client is not client:
            return
        watch.client = client
        period = self.config.publishing_interval * 1000.0
        nodes = [client.get_node(node_id) for node_id in watch.by_node]
        subscription: Subscription | None = None
        try:
            created, revised = await self._request(
                "create subscription", lambda c: _create_subscription(c, period, watch)
            )
            subscription = created
            results = await self._request(
                f"monitor {len(nodes)} node(s)",
                lambda c: created.subscribe_data_change(nodes, sampling_interval=ua.Double(period)),
            )
        except DriverError as err:
            if watch.client is client:
                watch.client = None
            if isinstance(err, DeviceTimeout | NotConnected):
                raise
            if subscription is not None:  # its items were refused: free it for the retry
                self._spawn(self._delete(subscription), "delete subscription")
            if self._client is client:  # not a lost connection (that restores it): report it
                self._refused(watch, client, f"cannot subscribe: {err.reason}")
            return
        if not watch.active or watch.client is not client:
            self._spawn(self._delete(created), "delete subscription")
            return
        refused = [
            (node_id, result)
            for node_id, result in zip(watch.by_node, results, strict=True)
            if isinstance(result, ua.StatusCode)
        ]
        passing = [status_name(s) for _, s in refused if status_name(s) in PASSING_ITEM_REFUSALS]
        if passing:  # a server at a limit: free the subscription and try the watch again
            watch.client = None
            self._spawn(self._delete(created), "delete subscription")
            self._refused(watch, client, f"cannot subscribe: monitored item refused: {passing[0]}")
            return
        # The server promised a publish response (a keep-alive at least) this often; one that
        # stays away a request's worst case longer has stopped publishing (_keep_alive checks).
        interval = revised.RevisedPublishingInterval / 1000.0
        promised = interval * max(revised.RevisedMaxKeepAliveCount, 1)
        watch.subscribed(created, promised + self.config.limits.worst_case)
        watch.refusal = None
        for node_id, status in refused:
            points = [p for p in watch.points if p.name in watch.by_node[node_id]]
            watch.deliver_bad(points, f"monitored item refused: {status_name(status)}")

    def _refused(self, watch: Watch, client: Client, reason: str) -> None:
        """The server refused the watch's subscription: BAD readings and a log line once per
        session (and reason), and one retry task per watch on this session."""
        if reason != watch.refusal:
            watch.refusal = reason
            log.warning("%s: %s; trying again while the session lasts", self.name, reason)
            watch.deliver_bad(watch.points, reason)
        if watch.retry is None or watch.retry.done():
            retry = self._retry_activate(watch, client)
            watch.retry = self._spawn(retry, "subscribe retry", client)

    async def _retry_activate(self, watch: Watch, client: Client) -> None:
        """Try a refused watch again with backoff, until it is subscribed, unsubscribed or the
        session ends (a new session activates every watch); close() cancels it."""
        backoff = Backoff(cap=RECONNECT_CAP)

        def waiting() -> bool:
            return watch.active and watch.client is None and self._client is client

        while waiting():
            await asyncio.sleep(backoff.next_delay())
            if waiting():
                await self._subscribe(watch, client)

    def _heard_fresh(
        self, watch: Watch, points: Sequence[OpcuaPoint], readings: Sequence[Reading]
    ) -> None:
        """Start re-reading each watched point where a fresh read differs from its last
        notification (one re-reader per point; a newer read only moves its target)."""
        for point, reading in zip(points, readings, strict=True):
            told = watch.told.get(point.name)
            if told is None or not watch.watches(point) or same_reading(told, reading):
                continue
            if point.name not in watch.pending:
                self._spawn(self._recheck(watch, point), f"re-read of {point.name}")
            watch.pending[point.name] = reading

    async def _recheck(self, watch: Watch, point: OpcuaPoint) -> None:
        """Re-read a point once per publishing interval (RECHECKS times at most per fresh
        read) until the watch was told a sample at least as new as the fresh read.

        A server samples a value every sampling interval and notifies changes from what it
        last sent: a short pulse that only our fresh read caught is never notified, nor is its
        end, so whoever took that read as the newest value (a wait) would hear nothing more.
        A re-read that agrees with the last notification is that end: the watch is told it.
        One that still differs is left to the server, which notifies a change that lasts.
        """
        name = point.name
        target: Reading | None = None
        tries = 0
        try:
            while True:
                await asyncio.sleep(self.config.publishing_interval)
                fresh, told = watch.pending.get(name), watch.told.get(name)
                if fresh is None or told is None or told.not_older_than(fresh):
                    return  # a newer notification came, or the session and its items are gone
                if fresh is not target:
                    target, tries = fresh, 0
                if tries == RECHECKS:
                    return
                tries += 1
                try:
                    [again] = await self._read([point])  # not read(): it would move the target
                except DriverError:
                    return  # the keep-alive tells of a server that stopped answering
                told = watch.told.get(name)
                if told is not None and same_reading(told, again) and watch.active:
                    watch.told[name] = again
                    watch.deliver({name: again})
        finally:
            watch.pending.pop(name, None)

    async def _delete(self, subscription: Subscription) -> None:
        """Delete a subscription on the server; a dead session took it along anyway."""
        with contextlib.suppress(DriverError):
            await self._request("delete subscription", lambda _c: subscription.delete())


async def _create_subscription(
    client: Client, period_ms: float, watch: Watch
) -> tuple[Subscription, ua.CreateSubscriptionResult]:
    """A subscription with our keep-alive count, and what the server made of the request.

    Not client.create_subscription: it replaces a revised keep-alive count with its own, and
    its watchdog recreates a silent subscription behind our back, hiding the silence from the
    subscribers (the session's keep-alive finds it: see Watch.silent_for).
    """
    params = ua.CreateSubscriptionParameters(
        RequestedPublishingInterval=ua.Double(period_ms),
        RequestedLifetimeCount=ua.UInt32(LIFETIME_COUNT),
        RequestedMaxKeepAliveCount=ua.UInt32(KEEP_ALIVE_COUNT),
        MaxNotificationsPerPublish=ua.UInt32(10_000),  # what asyncua asks for
        PublishingEnabled=True,
        Priority=ua.Byte(0),
    )
    subscription = Subscription(client.uaclient.session, params, watch)
    revised = await subscription.init()
    return subscription, revised
