"""A value that a fresh read caught in a short pulse, and that went back before a subscription
sampled it, is heard going back (real drivers against real pymodbus and asyncua servers).

A wait takes a fresh read as its starting point and then listens to the subscription. If the
read saw a pulse that the subscription never reported, the subscription has no change to
report when the value goes back, and the wait would hear nothing newer than its read.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.server.server import Server
from asyncua.ua.attribute_ids import AttributeIds

from cellctl.testing import wait_until
from drivers.base import Quality, Reading
from drivers.config import OpcuaConfig, RequestLimits
from drivers.modbus import ModbusDriver
from drivers.opcua import RECHECKS, OpcuaDriver
from drivers.opcua_types import parse_node_id
from drivers.points import DataType, OpcuaPoint
from drivers.sim.modbus_server import ModbusSimServer
from drivers.sim.opcua_cache import default_cache_dir, init_with_cache
from hil_tests.modbus_fixtures import PART_PRESENT, Rig, press_rig, stays_false
from hil_tests.support import with_room

UNIT = 1
#: Long enough that the pulse (a set, one read, a set) fits between two poll cycles.
POLL = 0.3
PUBLISHING = 0.1
BUSY = OpcuaPoint("robot.busy", "ns=2;s=Robot.Busy", DataType.BOOL)


def heard_after(seen: list[dict[str, Reading]], name: str, fresh: Reading) -> list[Reading]:
    """The readings of `name` the subscriber was given that are not older than `fresh`."""
    readings = [batch[name] for batch in seen if name in batch]
    return [r for r in readings if r.not_older_than(fresh)]


# -- Modbus ----------------------------------------------------------------------------------


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig[ModbusSimServer]]:
    """A running TCP simulator serving the press image on a free port."""
    async with press_rig(ModbusSimServer, UNIT).running() as served:
        yield served


async def set_input(rig: Rig[ModbusSimServer], value: bool) -> None:
    """Change the simulated input as the plant would."""
    rig.image.set(PART_PRESENT.name, value)
    await rig.server.publish(rig.image.device, rig.image.take_dirty())


async def pulse_between_polls(
    rig: Rig[ModbusSimServer], driver: ModbusDriver, seen: list[dict[str, Reading]]
) -> bool:
    """A pulse of the input that a fresh read catches, just after a poll cycle answered; True
    once the subscriber heard the return and no poll cycle saw the pulse itself."""
    answered = driver.answered_at
    await wait_until(lambda: driver.answered_at != answered, with_room(POLL), "a poll cycle")
    told = len(seen)
    await set_input(rig, True)
    [fresh] = await driver.read([PART_PRESENT])
    await set_input(rig, False)
    assert fresh.value is True
    await wait_until(
        lambda: any(r.value is False for r in heard_after(seen, PART_PRESENT.name, fresh)),
        with_room(2 * POLL),
        "the poller to report the return to false",
    )
    return all(batch[PART_PRESENT.name].value is False for batch in seen[told:])


@pytest.mark.asyncio
async def test_modbus_poll_reports_the_return_after_a_fresh_read_saw_a_pulse(
    rig: Rig[ModbusSimServer],
) -> None:
    await set_input(rig, False)
    async with rig.driver(poll=POLL) as driver:
        seen: list[dict[str, Reading]] = []
        driver.subscribe([PART_PRESENT], seen.append)
        await wait_until(lambda: bool(seen), with_room(POLL), "the first poll")
        assert seen[-1][PART_PRESENT.name].value is False
        for _ in range(3):
            if await pulse_between_polls(rig, driver, seen):
                break  # only the fresh read saw the pulse, and its end was still reported
        else:
            pytest.fail("a poll cycle fell inside the pulse three times in a row")


# -- OPC UA ----------------------------------------------------------------------------------


class SamplingServer:
    """An asyncua server whose Robot.Busy is read from a live source on every Read, while its
    monitored items sample it only when `sample()` is called: a short pulse falls between two
    samples, as on a server that samples its source every sampling interval."""

    def __init__(self) -> None:
        self.server = Server()
        self.value = False
        self.stamp = ua.DateTime.now(datetime.UTC)
        self.node = parse_node_id(BUSY.node_id)
        self.endpoint = ""
        #: How many times the value was read (a Read, or a monitored item's first sample).
        self.reads = 0

    async def start(self) -> str:
        """Start on a free port; return the endpoint."""
        await init_with_cache(self.server, default_cache_dir())
        self.server.set_endpoint("opc.tcp://127.0.0.1:0/robot")
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await self.server.register_namespace("urn:cellctl:test")
        assert idx == self.node.NamespaceIndex
        await self.server.nodes.objects.add_variable(
            self.node, "Robot.Busy", ua.Variant(False, ua.VariantType.Boolean)
        )
        self.server.set_attribute_value_callback(self.node, self._live)
        await self.server.start()
        assert self.server.bserver is not None
        self.endpoint = f"opc.tcp://127.0.0.1:{self.server.bserver.port}/robot"
        return self.endpoint

    def set(self, value: bool) -> None:
        """Change the live value (stamped now) without sampling it."""
        self.value = value
        self.stamp = ua.DateTime.now(datetime.UTC)

    def _live(self, _node: ua.NodeId, _attr: AttributeIds) -> ua.DataValue:
        self.reads += 1
        variant = ua.Variant(self.value, ua.VariantType.Boolean)
        return ua.DataValue(variant, SourceTimestamp=self.stamp, ServerTimestamp=self.stamp)


@pytest_asyncio.fixture
async def sampling() -> AsyncIterator[SamplingServer]:
    """A started sampling server."""
    server = SamplingServer()
    await server.start()
    try:
        yield server
    finally:
        await server.server.stop()


@pytest_asyncio.fixture
async def robot(sampling: SamplingServer) -> AsyncIterator[OpcuaDriver]:
    """A connected driver for the sampling server."""
    limits = RequestLimits(timeout=0.5, retries=1)
    config = OpcuaConfig("robot", sampling.endpoint, publishing_interval=PUBLISHING, limits=limits)
    driver = OpcuaDriver(config, [BUSY])
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()


async def subscribed(driver: OpcuaDriver) -> list[dict[str, Reading]]:
    """Subscribe to BUSY; what the subscriber is given, once the first notification (false)
    came."""
    seen: list[dict[str, Reading]] = []
    driver.subscribe([BUSY], seen.append)
    await wait_until(lambda: bool(seen), with_room(2 * PUBLISHING), "the first notification")
    assert seen[-1][BUSY.name].value is False
    return seen


@pytest.mark.asyncio
async def test_opcua_subscriber_hears_the_return_after_a_fresh_read_saw_a_pulse(
    sampling: SamplingServer, robot: OpcuaDriver
) -> None:
    seen = await subscribed(robot)
    sampling.set(True)
    [fresh] = await robot.read([BUSY])
    sampling.set(False)
    assert fresh.value is True and fresh.quality is Quality.GOOD
    await wait_until(
        lambda: any(r.value is False for r in heard_after(seen, BUSY.name, fresh)),
        with_room(2 * PUBLISHING),
        "the subscriber to hear the return to false",
    )
    back = next(r for r in heard_after(seen, BUSY.name, fresh) if r.value is False)
    # Newer by the server's own clock too: a wait orders OPC UA samples by it.
    assert back.device_time is not None and fresh.device_time is not None
    assert back.device_time > fresh.device_time


@pytest.mark.asyncio
async def test_opcua_rereads_only_on_a_difference_and_a_bounded_number_of_times(
    sampling: SamplingServer, robot: OpcuaDriver
) -> None:
    seen = await subscribed(robot)
    [same] = await robot.read([BUSY])  # agrees with the notification: nothing more to do
    assert same.value is False
    reads = sampling.reads
    assert await stays_false(lambda: sampling.reads > reads, 3 * PUBLISHING)
    sampling.set(True)  # a change this server never samples
    [fresh] = await robot.read([BUSY])
    assert fresh.value is True
    reads = sampling.reads
    await wait_until(
        lambda: sampling.reads >= reads + RECHECKS,
        with_room(RECHECKS * PUBLISHING),
        "the re-reads",
    )
    assert await stays_false(lambda: sampling.reads > reads + RECHECKS, 3 * PUBLISHING)
    # A difference that lasts is the server's to notify: no re-read told the subscriber.
    assert all(batch[BUSY.name].value is False for batch in seen)
