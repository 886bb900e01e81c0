"""An OPC UA server that comes back refusing sessions, and one that refuses a subscription: the
driver stays LOST naming the refusal and recovers once it is lifted; a subscription it cannot
create is BAD readings naming why, tried again on the same session until the server accepts it
(real asyncua server and client on loopback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from asyncua import ua
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.server import Server

from cellctl.testing import wait_until
from drivers.base import Health, HealthState, Quality
from drivers.config import RequestLimits
from drivers.opcua import RECONNECT_CAP, OpcuaDriver
from drivers.sim.opcua_cache import default_cache_dir, init_with_cache
from hil_tests.support import Logins, with_room
from hil_tests.test_opcua import BUSY, LIMITS, Recorder, config


class Gate(Logins):
    """A user manager that lets anonymous sessions in while `open`, and counts refusals."""

    def __init__(self) -> None:
        self.open = True
        self.refused = 0

    def login(self, username: str | None, password: str | None) -> User | None:
        """A user while open; None (asyncua answers BadUserAccessDenied) while closed."""
        if self.open:
            return User(role=UserRole.User)
        self.refused += 1
        return None


@contextlib.asynccontextmanager
async def gated_server(gate: Gate, port: int = 0) -> AsyncIterator[Server]:
    """A started asyncua server on 127.0.0.1:`port` with robot.busy (true), behind `gate`."""
    server = Server(user_manager=gate)
    await init_with_cache(server, default_cache_dir())
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/robot")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.set_identity_tokens([ua.AnonymousIdentityToken])
    server.disable_clock()
    idx = await server.register_namespace("urn:cellctl:test:gate")
    assert idx == 2  # BUSY's NodeId is in ns=2
    await server.nodes.objects.add_variable(ua.NodeId("Robot.Busy", idx), "Robot.Busy", True)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


def endpoint_of(server: Server) -> str:
    """The URL a client reaches the started server at."""
    assert server.bserver is not None
    return f"opc.tcp://127.0.0.1:{server.bserver.port}/robot"


async def set_busy(server: Server, value: bool) -> None:
    """Change robot.busy on the server side."""
    variant = ua.Variant(value, ua.VariantType.Boolean)
    await server.write_attribute_value(ua.NodeId("Robot.Busy", 2), ua.DataValue(variant))


@contextlib.asynccontextmanager
async def connected(server: Server, limits: RequestLimits = LIMITS) -> AsyncIterator[OpcuaDriver]:
    """A driver of robot.busy connected to the started `server`, closed after."""
    driver = OpcuaDriver(config(endpoint_of(server), limits), [BUSY])
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()


async def busy_reads(seen: Recorder, value: bool, within: float, what: str) -> None:
    """Wait (up to `within` s) until the latest reading `seen` has of robot.busy is `value`."""
    await wait_until(
        lambda: (last := seen.last(BUSY.name)) is not None and last.value is value, within, what
    )


@pytest.mark.asyncio
async def test_a_server_back_but_refusing_sessions_stays_lost_until_it_accepts() -> None:
    gate = Gate()
    async with gated_server(gate) as first:
        endpoint = endpoint_of(first)
        port = int(endpoint.rsplit(":", 1)[1].split("/")[0])
        driver = OpcuaDriver(config(endpoint), [BUSY])
        await driver.connect()
    # `first` has stopped: the driver is on its own from here.
    try:
        states: list[HealthState] = []

        def heard(_device: str, health: Health) -> None:
            states.append(health.state)

        driver.on_health(heard)
        seen = Recorder()
        driver.subscribe([BUSY], seen)
        await wait_until(lambda: bool(seen.bad(BUSY.name)), 5.0, "BAD while the server is gone")
        assert driver.health.state is HealthState.LOST
        gate.open = False
        async with gated_server(gate, port) as second:
            await wait_until(lambda: gate.refused > 0, 10.0, "a refused session")
            await wait_until(
                lambda: "BadUserAccessDenied" in (driver.health.last_error or ""),
                5.0,
                "the refusal in the device's health",
            )
            error = driver.health.last_error or ""
            assert error.startswith(f"reconnect to {endpoint}: robot: {endpoint} refused the")
            assert driver.health.state is HealthState.LOST
            assert len(seen.bad(BUSY.name)) == 1  # told of the loss once, not on every refusal
            # The refusal is lifted: the driver connects and subscribes again by itself.
            await set_busy(second, False)
            gate.open = True
            await wait_until(
                lambda: driver.health.state is HealthState.CONNECTED, 10.0, "the reconnect"
            )
            await busy_reads(seen, False, 5.0, "robot.busy after the reconnect")
            await set_busy(second, True)
            await busy_reads(seen, True, 5.0, "a change after the reconnect")
            assert states[-1] is HealthState.CONNECTED
            assert HealthState.CONNECTED not in states[:-1]  # no success before the gate opened
    finally:
        await driver.close()


@pytest.mark.asyncio
async def test_a_subscription_the_server_refuses_reads_bad_naming_the_refusal() -> None:
    gate = Gate()
    async with gated_server(gate) as server:
        server.iserver.max_subscriptions = 0  # a server at its limit of subscriptions
        async with connected(server) as driver:
            seen = Recorder()
            driver.subscribe([BUSY], seen)
            await wait_until(lambda: bool(seen.bad(BUSY.name)), 5.0, "a BAD reading")
            (bad,) = seen.seen[BUSY.name]
            assert bad.quality is Quality.BAD and bad.value is None
            assert (bad.error or "").startswith(f"robot {BUSY.name} {BUSY.node_id}: ")
            assert "cannot subscribe" in (bad.error or "")
            assert "BadTooManySubscriptions" in (bad.error or "")
            # The device itself answers: it is not lost, and reads still work.
            assert driver.health.state is HealthState.CONNECTED
            (reading,) = await driver.read([BUSY])
            assert (reading.quality, reading.value) == (Quality.GOOD, True)


def refusals(caplog: pytest.LogCaptureFixture, logger: str, text: str) -> int:
    """How many records of `logger` so far mention `text`."""
    return sum(1 for r in caplog.records if r.name == logger and text in r.getMessage())


@pytest.mark.asyncio
async def test_a_refused_subscription_is_tried_again_on_the_same_session_until_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncua.server.subscription_service")
    caplog.set_level(logging.WARNING, logger="drivers.opcua")
    gate = Gate()
    async with gated_server(gate) as server:
        limit = server.iserver.max_subscriptions
        server.iserver.max_subscriptions = 0  # a server at its limit of subscriptions
        async with connected(server) as driver:
            states: list[HealthState] = []
            driver.on_health(lambda _device, health: states.append(health.state))
            seen = Recorder()
            driver.subscribe([BUSY], seen)
            # The server itself counts the tries it refused.
            server_log = "asyncua.server.subscription_service"
            await wait_until(
                lambda: refusals(caplog, server_log, "Refusing subscription") >= 3,
                with_room(RECONNECT_CAP),
                "three refused tries",
            )
            (bad,) = seen.seen[BUSY.name]  # told once, not on every try
            assert bad.quality is Quality.BAD
            assert "BadTooManySubscriptions" in (bad.error or "")
            assert refusals(caplog, "drivers.opcua", "BadTooManySubscriptions") == 1  # logged once
            # A subscription is free again: the next try takes it, on the same session.
            server.iserver.max_subscriptions = limit
            await busy_reads(
                seen, True, with_room(RECONNECT_CAP), "robot.busy once the subscription is accepted"
            )
            await set_busy(server, False)
            await busy_reads(seen, False, with_room(RECONNECT_CAP), "a change")
            assert states == []  # never LOST: the device answered throughout
            assert driver.health.state is HealthState.CONNECTED


class ItemHook:
    """A server-side hook on CreateMonitoredItems: a slow answer (`delay` seconds), or every
    item refused with `refuse`, as a server at its limit of monitored items answers."""

    def __init__(self, server: Server) -> None:
        self.delay = 0.0
        self.refuse: ua.StatusCode | None = None
        self.calls = 0
        server.subscribe_server_callback(CallbackType.ItemSubscriptionCreated, self.created)

    async def created(self, event: ServerItemCallback, _dispatcher: object) -> None:
        """asyncua calls this after it created the items, before it answers."""
        self.calls += 1
        if self.refuse is not None:
            for result in event.response_params:
                result.StatusCode = self.refuse
        if self.delay:
            await asyncio.sleep(self.delay)  # the slow server itself, not a test's wait


def subscriptions(server: Server) -> int:
    """How many subscriptions the server holds, of every session."""
    return len(server.iserver.subscription_service.subscriptions)


@pytest.mark.asyncio
async def test_unsubscribing_during_a_retried_subscribe_leaves_no_subscription_on_the_server() -> (
    None
):
    gate = Gate()
    async with gated_server(gate) as server:
        hook = ItemHook(server)
        limit = server.iserver.max_subscriptions
        server.iserver.max_subscriptions = 0
        limits = RequestLimits(timeout=2.0, retries=1)  # the slow answer below is in time
        async with connected(server, limits) as driver:
            seen = Recorder()
            unsubscribe = driver.subscribe([BUSY], seen)
            await wait_until(lambda: bool(seen.bad(BUSY.name)), 5.0, "the refusal")
            hook.delay = 0.5
            server.iserver.max_subscriptions = limit  # the retry's subscription is accepted
            await wait_until(
                lambda: hook.calls == 1, with_room(RECONNECT_CAP), "the retry's monitor request"
            )
            assert subscriptions(server) == 1
            unsubscribe()  # while the server works on the monitored items
            await wait_until(
                lambda: subscriptions(server) == 0,
                with_room(hook.delay),
                "the retry's subscription deleted",
            )
            assert driver.health.state is HealthState.CONNECTED


@pytest.mark.asyncio
async def test_a_session_the_server_closed_makes_the_device_lost_and_it_reconnects() -> None:
    gate = Gate()
    async with gated_server(gate) as server, connected(server) as driver:
        states: list[HealthState] = []
        driver.on_health(lambda _device, health: states.append(health.state))
        seen = Recorder()
        driver.subscribe([BUSY], seen)
        await wait_until(lambda: seen.last(BUSY.name) is not None, 5.0, "the initial value")
        # The server ends the session (as its idle timeout would); the TCP link stays, and
        # every request on it is answered BadSessionNotActivated.
        (session,) = server.iserver._external_sessions.values()
        await session.close_session(True)
        await wait_until(lambda: HealthState.LOST in states, 5.0, "health LOST")
        assert "BadSessionNotActivated" in (seen.bad(BUSY.name)[0].error or "")
        await wait_until(lambda: driver.health.state is HealthState.CONNECTED, 5.0, "the reconnect")
        await set_busy(server, False)
        await busy_reads(seen, False, 5.0, "a change on the new session")
        assert states == [HealthState.LOST, HealthState.CONNECTED]


@pytest.mark.asyncio
async def test_monitored_items_refused_at_a_limit_are_tried_again_until_accepted() -> None:
    gate = Gate()
    async with gated_server(gate) as server:
        hook = ItemHook(server)
        hook.refuse = ua.StatusCode(ua.StatusCodes.BadTooManyMonitoredItems)
        async with connected(server) as driver:
            seen = Recorder()
            driver.subscribe([BUSY], seen)
            await wait_until(lambda: hook.calls >= 3, with_room(RECONNECT_CAP), "three tries")
            (bad,) = seen.seen[BUSY.name]  # told once, not on every try
            assert "monitored item refused: BadTooManyMonitoredItems" in (bad.error or "")
            assert driver.health.state is HealthState.CONNECTED
            hook.refuse = None  # an item is free again
            await busy_reads(
                seen, True, with_room(RECONNECT_CAP), "robot.busy once the items are accepted"
            )
            # The refused tries' subscriptions were deleted: only the accepted one is left.
            await wait_until(lambda: subscriptions(server) == 1, 5.0, "one subscription")
            await set_busy(server, False)
            await busy_reads(seen, False, 5.0, "a change")


@pytest.mark.asyncio
async def test_a_subscription_without_answer_during_a_reconnect_fails_that_session_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A patient keep-alive (10 tries) outlasts each slow answer; a monitor request (one try)
    # does not. Only monitor requests are slow, so the reconnect's session opens and only its
    # subscription times out.
    limits = RequestLimits(timeout=0.3, retries=9)
    gate = Gate()
    async with gated_server(gate) as server:
        hook = ItemHook(server)
        endpoint = endpoint_of(server)
        async with connected(server, limits) as driver:
            seen = Recorder()
            hook.delay = 3 * limits.timeout
            driver.subscribe([BUSY], seen)
            # Failed on the first session, then on the reconnect's.
            await wait_until(
                lambda: (driver.health.last_error or "").startswith(
                    f"reconnect to {endpoint}: robot: monitor 1 node(s): no answer"
                ),
                with_room(limits.worst_case),
                "the reconnect's subscription timing out",
            )
            assert driver.health.state is HealthState.LOST
            hook.delay = 0.0
            await wait_until(
                lambda: driver.health.state is HealthState.CONNECTED,
                with_room(RECONNECT_CAP),
                "a reconnect that subscribes",
            )
            await set_busy(server, False)
            await busy_reads(seen, False, 5.0, "a change")
            assert not [r for r in caplog.records if r.getMessage() == "robot: reconnect failed"]
