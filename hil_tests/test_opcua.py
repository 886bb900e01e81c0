"""The OPC UA driver (real asyncua client) against the OPC UA simulator (real asyncua server)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import asyncua
import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.callback import CallbackType, ServerItemCallback
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from asyncua.crypto.permission_rules import User
from asyncua.server.server import Server
from asyncua.ua.uaerrors import UaStatusCodeError
from cryptography.x509.oid import ExtendedKeyUsageOID

from cellctl.testing import wait_until
from drivers.base import Driver, Health, HealthState, Quality, Reading
from drivers.config import OpcuaConfig, OpcuaSecurity, RequestLimits
from drivers.errors import (
    BadStatus,
    ConnectFailed,
    DeviceTimeout,
    NotConnected,
    PointMismatch,
    WriteRejected,
)
from drivers.opcua import OpcuaDriver
from drivers.points import Access, DataType, MethodArg, MethodSpec, OpcuaPoint
from drivers.sim.faultproxy import FaultProxy
from drivers.sim.image import ProcessImage
from drivers.sim.opcua_cache import default_cache_dir, init_with_cache
from drivers.sim.opcua_server import OpcuaSimServer
from hil_tests.support import Logins, operator, with_room

DEVICE = "robot"
LIMITS = RequestLimits(timeout=0.3, retries=1)
PUBLISHING = 0.1  # seconds
# A lost device is noticed within one request's worst case plus one publishing interval.
LOSS_BOUND = LIMITS.worst_case + PUBLISHING

# One rw point of every type (string NodeIds in ns=2, some numeric in ns=3) and a ro one.
SAMPLES: dict[DataType, tuple[str, object, object]] = {
    # type: (NodeId, a value, another value)
    DataType.BOOL: ("ns=2;s=Robot.Enabled", True, False),
    DataType.INT16: ("ns=2;s=Robot.Offset", -1234, 32767),
    DataType.UINT16: ("ns=2;s=Robot.Mode", 65000, 7),
    DataType.INT32: ("ns=3;i=1001", -100_000, 2_000_000_000),
    DataType.UINT32: ("ns=3;i=1002", 4_000_000_000, 12),
    DataType.INT64: ("ns=2;s=Robot.Ticks", -(2**40), 2**62),
    DataType.UINT64: ("ns=3;i=1003", 2**63 + 5, 1),
    DataType.FLOAT32: ("ns=2;s=Robot.Speed", 0.1, 41.5),
    DataType.FLOAT64: ("ns=3;i=1004", 1 / 3, -2.5e300),
    DataType.STRING: ("ns=2;s=Robot.Program", "pick-and-place é", ""),
}
RW = [OpcuaPoint(f"robot.{t.value}", node, t, Access.RW) for t, (node, _, _) in SAMPLES.items()]
BUSY = OpcuaPoint("robot.busy", "ns=2;s=Robot.Busy", DataType.BOOL)
TEMP = OpcuaPoint("robot.temp", "ns=3;i=2001", DataType.FLOAT32)
POINTS = [*RW, BUSY, TEMP]
BY_TYPE = {p.datatype: p for p in RW}

PICK = MethodSpec(
    "robot.pick", "ns=2;s=Robot", "2:Pick", (MethodArg("slot", DataType.INT32),), DataType.BOOL
)
FAIL = MethodSpec("robot.fail", "ns=2;s=Robot", "2:Fail", (), None)
HOME = MethodSpec(
    "robot.home", "ns=2;s=Robot", "2:Home", (MethodArg("speed", DataType.FLOAT32),), DataType.INT32
)
METHODS = [PICK, FAIL, HOME]


async def pick(slot: int) -> bool:
    """A plant model's handler: odd slots are reachable."""
    if slot < 0:
        raise ValueError(f"no slot {slot}")
    return slot % 2 == 1


async def fail() -> None:
    """A handler whose machine refuses."""
    raise RuntimeError("robot is faulted")


HANDLERS = {"Pick": pick, "Fail": fail}  # Home has no handler: the generic one answers 0


def config(endpoint: str, limits: RequestLimits = LIMITS) -> OpcuaConfig:
    """The robot device's connection settings, with short test timeouts."""
    return OpcuaConfig(DEVICE, endpoint, publishing_interval=PUBLISHING, limits=limits)


class Sim:
    """A started simulator and its process image."""

    def __init__(self, points: list[OpcuaPoint] = POINTS) -> None:
        self.image = ProcessImage(DEVICE, points)
        self.server = OpcuaSimServer("opc.tcp://127.0.0.1:0/robot", self.image, METHODS, HANDLERS)

    async def set(self, values: dict[str, object]) -> None:
        """Set values as the plant model would and publish them."""
        for tag, value in values.items():
            self.image.set(tag, value)
        await self.server.publish(DEVICE, self.image.take_dirty())


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def sim() -> AsyncIterator[Sim]:
    """One simulator for the module (fast start from the address-space cache)."""
    sim = Sim()
    await sim.server.start()
    yield sim
    await sim.server.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def driver(sim: Sim) -> AsyncIterator[OpcuaDriver]:
    """A connected driver for the simulator, closed after the test."""
    drv = OpcuaDriver(config(sim.server.endpoint), POINTS, METHODS)
    await drv.connect()
    yield drv
    await drv.close()


@pytest_asyncio.fixture(loop_scope="module")
async def own_sim() -> AsyncIterator[Sim]:
    """A simulator of the test's own, for tests that stop and restart it."""
    sim = Sim([RW[0], BUSY])
    await sim.server.start()
    yield sim
    await sim.server.stop()


@contextlib.asynccontextmanager
async def raw_client(endpoint: str) -> AsyncIterator[Client]:
    """A plain asyncua client, as any third-party client would connect."""
    client = Client(endpoint, timeout=2)
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


def broken_listener(_device: str, health: Health) -> None:
    """A health listener with a bug."""
    raise RuntimeError(f"listener bug on {health.state.value}")


class Recorder:
    """A subscriber callback that keeps every reading, per point."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Reading]] = {}

    def __call__(self, readings: dict[str, Reading]) -> None:
        for name, reading in readings.items():
            self.seen.setdefault(name, []).append(reading)

    def last(self, name: str) -> Reading | None:
        """The latest reading of a point, if any."""
        return self.seen[name][-1] if self.seen.get(name) else None

    def bad(self, name: str) -> list[Reading]:
        """Every BAD reading of a point."""
        return [r for r in self.seen.get(name, []) if r.quality is Quality.BAD]


def by_value(readings: list[Reading]) -> list[object]:
    """The values of readings, asserting each is GOOD."""
    assert all(r.quality is Quality.GOOD for r in readings), readings
    return [r.value for r in readings]


# -- values ---------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_driver_satisfies_protocol(driver: OpcuaDriver) -> None:
    assert isinstance(driver, Driver)
    assert driver.health.state is HealthState.CONNECTED


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("which", [1, 2])
async def test_reads_every_type_in_one_request(driver: OpcuaDriver, sim: Sim, which: int) -> None:
    await sim.set({BY_TYPE[t].name: SAMPLES[t][which] for t in SAMPLES})
    values = by_value(await driver.read(RW))
    assert values == [SAMPLES[t][which] for t in SAMPLES]
    # float32 comes back as the shortest decimal that round-trips, not 0.10000000149011612
    assert all(type(v) is type(SAMPLES[t][which]) for v, t in zip(values, SAMPLES, strict=True))


@pytest.mark.asyncio(loop_scope="module")
async def test_readings_carry_the_servers_time_of_the_value(driver: OpcuaDriver, sim: Sim) -> None:
    """The device's own timestamp orders a late notification against a fresh read."""
    point = RW[0]
    before = time.time()
    await sim.set({point.name: SAMPLES[point.datatype][1]})
    await sim.set({point.name: SAMPLES[point.datatype][2]})
    (reading,) = await driver.read([point])
    assert reading.device_time is not None
    # The same clock here (loopback), so it is also within our window; on a real device only
    # the order of its own stamps is used.
    assert before - 1 <= reading.device_time <= time.time() + 1


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("which", [1, 2])
async def test_writes_every_type(driver: OpcuaDriver, sim: Sim, which: int) -> None:
    for t, (_, *values) in SAMPLES.items():
        await driver.write(BY_TYPE[t], values[which - 1])
    expected = [SAMPLES[t][which] for t in SAMPLES]
    assert by_value(await driver.read(RW)) == expected
    # the simulator's process image saw every client write, as the plant model would
    assert [sim.image.get(p.name) for p in RW] == expected


@pytest.mark.asyncio(loop_scope="module")
async def test_int_written_to_float_and_int32_nodes_is_sent_as_their_type(
    driver: OpcuaDriver,
) -> None:
    await driver.write(BY_TYPE[DataType.FLOAT64], 3)
    await driver.write(BY_TYPE[DataType.INT32], 3.0)
    assert by_value(await driver.read([BY_TYPE[DataType.FLOAT64], BY_TYPE[DataType.INT32]])) == [
        3.0,
        3,
    ]


@pytest.mark.asyncio(loop_scope="module")
async def test_numeric_node_ids_in_ns3(sim: Sim, driver: OpcuaDriver) -> None:
    await sim.set({TEMP.name: 21.7})
    async with raw_client(sim.server.endpoint) as client:
        namespaces = await client.get_namespace_array()
        node = client.get_node(ua.NodeId(2001, 3))
        assert await node.read_value() == pytest.approx(21.7, rel=1e-6)
        assert (await node.read_browse_name()).NamespaceIndex == 3
    assert len(namespaces) >= 4  # ns=2 and ns=3 registered
    assert by_value(await driver.read([TEMP])) == [21.7]


@pytest.mark.asyncio(loop_scope="module")
async def test_raw_client_sees_what_driver_reads(sim: Sim, driver: OpcuaDriver) -> None:
    await driver.write(BY_TYPE[DataType.INT64], -77)
    await driver.write(BY_TYPE[DataType.STRING], "shared")
    await sim.set({BUSY.name: True})
    points = [BY_TYPE[DataType.INT64], BY_TYPE[DataType.STRING], BUSY]
    ours = by_value(await driver.read(points))
    async with raw_client(sim.server.endpoint) as client:
        theirs = await client.read_values([client.get_node(p.node_id) for p in points])
        data_types = [await client.get_node(p.node_id).read_data_type() for p in points]
    assert ours == theirs == [-77, "shared", True]
    assert [d.Identifier for d in data_types] == [8, 12, 1]  # Int64, String, Boolean


@pytest.mark.asyncio(loop_scope="module")
async def test_missing_node_reads_bad_without_failing_the_others(sim: Sim) -> None:
    ghost = OpcuaPoint("robot.ghost", "ns=2;s=Robot.Ghost", DataType.INT32)
    drv = OpcuaDriver(config(sim.server.endpoint), [BUSY])
    await drv.connect()
    try:
        await sim.set({BUSY.name: False})
        good, bad = await drv.read([BUSY, ghost])
    finally:
        await drv.close()
    assert good.quality is Quality.GOOD and good.value is False
    assert bad.quality is Quality.BAD and bad.value is None
    assert bad.error is not None and "robot.ghost" in bad.error and "BadNodeIdUnknown" in bad.error


# -- writes that must not happen -----------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_server_refuses_write_to_ro_node_from_any_client(sim: Sim) -> None:
    await sim.set({BUSY.name: False})
    async with raw_client(sim.server.endpoint) as client:
        node = client.get_node(BUSY.node_id)
        with pytest.raises(UaStatusCodeError) as caught:
            await node.write_value(ua.DataValue(ua.Variant(True, ua.VariantType.Boolean)))
        assert await node.read_value() is False
    assert type(caught.value).__name__ in ("BadUserAccessDenied", "BadNotWritable")
    assert sim.image.get(BUSY.name) is False


@pytest.mark.asyncio(loop_scope="module")
async def test_server_refusal_is_bad_status(sim: Sim) -> None:
    # The cell file claims rw; the server says no: the driver reports the server's status.
    lying = replace(BUSY, access=Access.RW)
    drv = OpcuaDriver(config(sim.server.endpoint))
    await drv.connect()
    try:
        with pytest.raises(BadStatus) as caught:
            await drv.write(lying, True)
    finally:
        await drv.close()
    assert caught.value.status == "BadUserAccessDenied"
    assert "robot.busy" in str(caught.value) and "ns=2;s=Robot.Busy" in str(caught.value)


@pytest.mark.asyncio(loop_scope="module")
async def test_driver_refuses_ro_point_before_sending(sim: Sim, driver: OpcuaDriver) -> None:
    # The server would accept this write (rw node): only the driver's own check stops it.
    declared_ro = replace(BY_TYPE[DataType.UINT16], access=Access.RO)
    await driver.write(BY_TYPE[DataType.UINT16], 5)
    with pytest.raises(WriteRejected, match=re.escape("robot.uint16 ns=2;s=Robot.Mode: read-only")):
        await driver.write(declared_ro, 6)
    assert by_value(await driver.read([BY_TYPE[DataType.UINT16]])) == [5]
    assert sim.image.get(declared_ro.name) == 5


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(
    ("datatype", "value"),
    [(DataType.INT16, 40_000), (DataType.UINT32, -1), (DataType.BOOL, 1), (DataType.FLOAT32, 1e39)],
)
async def test_value_out_of_type_is_rejected_before_sending(
    driver: OpcuaDriver, datatype: DataType, value: object
) -> None:
    point = BY_TYPE[datatype]
    before = await driver.read([point])
    with pytest.raises(WriteRejected, match=re.escape(f"robot {point.name} {point.node_id}")):
        await driver.write(point, value)
    assert (await driver.read([point]))[0].value == before[0].value


# -- subscriptions --------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_subscription_sees_change_within_two_publishing_intervals(
    sim: Sim, driver: OpcuaDriver
) -> None:
    await sim.set({BUSY.name: False, TEMP.name: 20.0})
    seen: list[dict[str, Reading]] = []
    unsubscribe = driver.subscribe([BUSY, TEMP], seen.append)
    try:
        await wait_until(
            lambda: {BUSY.name, TEMP.name} <= {k for s in seen for k in s}, 5.0, "initial values"
        )
        latest = {k: r.value for s in seen for k, r in s.items()}
        assert latest == {BUSY.name: False, TEMP.name: 20.0}
        loop = asyncio.get_running_loop()
        start = loop.time()
        await sim.set({TEMP.name: 22.5})
        await wait_until(
            lambda: any(s.get(TEMP.name, Reading(None, 0)).value == 22.5 for s in seen),
            5.0,
            "the change",
        )
        # Two publishing intervals, with room for a loaded 2-core CI machine.
        assert loop.time() - start <= with_room(2 * PUBLISHING)
    finally:
        unsubscribe()
    count = len(seen)
    await sim.set({TEMP.name: 23.5})
    await driver.read([TEMP])  # a round trip after the change: a late notification would be here
    assert all(s.get(TEMP.name, Reading(None, 0)).value != 23.5 for s in seen[count:])


@pytest.mark.asyncio(loop_scope="module")
async def test_refused_monitored_item_is_bad_and_others_still_work(
    sim: Sim, driver: OpcuaDriver
) -> None:
    ghost = OpcuaPoint("robot.ghost", "ns=2;s=Robot.Ghost", DataType.INT32)
    seen: dict[str, list[Reading]] = {}

    def record(readings: dict[str, Reading]) -> None:
        for name, reading in readings.items():
            seen.setdefault(name, []).append(reading)

    unsubscribe = driver.subscribe([ghost, TEMP], record)
    try:
        await wait_until(lambda: ghost.name in seen and TEMP.name in seen, 5.0, "first readings")
        assert seen[ghost.name][0].quality is Quality.BAD
        assert "BadNodeIdUnknown" in (seen[ghost.name][0].error or "")
        await sim.set({TEMP.name: 30.25})
        await wait_until(lambda: seen[TEMP.name][-1].value == 30.25, 5.0, "the good item's change")
    finally:
        unsubscribe()


# -- methods ---------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_method_call_returns_its_result(driver: OpcuaDriver) -> None:
    assert await driver.call(PICK, [3]) is True
    assert await driver.call(PICK, [4]) is False
    assert await driver.call(HOME, [0.5]) == 0  # no handler: the generic one answers zero


@pytest.mark.asyncio(loop_scope="module")
async def test_method_without_result_returns_none_and_raising_handler_is_bad_status(
    driver: OpcuaDriver,
) -> None:
    with pytest.raises(BadStatus) as caught:
        await driver.call(FAIL, [])
    assert caught.value.status == "BadInvalidState"
    assert "robot.fail" in str(caught.value)
    with pytest.raises(BadStatus) as refused:
        await driver.call(PICK, [-1])  # the handler raises ValueError: the arguments are wrong
    assert refused.value.status == "BadInvalidArgument"


@pytest.mark.asyncio(loop_scope="module")
async def test_method_arguments_checked_before_sending(driver: OpcuaDriver) -> None:
    with pytest.raises(WriteRejected, match="takes 1 argument"):
        await driver.call(PICK, [])
    with pytest.raises(WriteRejected, match="argument slot"):
        await driver.call(PICK, [2**40])


# -- node checks -----------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_verify_lists_every_mismatch_and_connect_refuses(sim: Sim) -> None:
    wrong_type = OpcuaPoint("robot.speed", "ns=2;s=Robot.Speed", DataType.FLOAT64, Access.RW)
    missing = OpcuaPoint("robot.ghost", "ns=2;s=Robot.Ghost", DataType.BOOL)
    not_writable = OpcuaPoint("robot.busy", "ns=2;s=Robot.Busy", DataType.BOOL, Access.RW)
    not_a_variable = OpcuaPoint("robot.obj", "ns=2;s=Robot", DataType.BOOL)
    wrong_args = replace(PICK, name="robot.pick2", args=(MethodArg("slot", DataType.INT16),))
    extra_arg = replace(FAIL, name="robot.fail2", args=(MethodArg("why", DataType.STRING),))
    wrong_result = replace(HOME, name="robot.home2", result=DataType.BOOL)
    no_method = MethodSpec("robot.place", "ns=2;s=Robot", "2:Place", (), None)
    no_object = MethodSpec("robot.jump", "ns=2;s=Rabbit", "2:Jump", (), None)
    points = [*RW, wrong_type, missing, not_writable, not_a_variable]
    methods = [PICK, wrong_args, extra_arg, wrong_result, no_method, no_object]
    drv = OpcuaDriver(config(sim.server.endpoint), points, methods)
    try:
        problems = await drv.verify()
    finally:
        await drv.close()
    expected = [
        "robot.speed ns=2;s=Robot.Speed: server says Float, cell file says float64",
        "robot.ghost ns=2;s=Robot.Ghost: no such node on the server",
        "robot.busy ns=2;s=Robot.Busy: cell file says rw, "
        "server does not allow writing (AccessLevel, UserAccessLevel)",
        "robot.obj ns=2;s=Robot: not a variable",
        "robot.pick2 ns=2;s=Robot 2:Pick: argument slot server says Int32, cell file says int16",
        "robot.fail2 ns=2;s=Robot 2:Fail: server has 0 arguments, cell file declares 1",
        "robot.home2 ns=2;s=Robot 2:Home: result result server says Int32, cell file says bool",
        "robot.place ns=2;s=Robot 2:Place: no method 2:Place on ns=2;s=Robot",
        "robot.jump ns=2;s=Rabbit 2:Jump: no object ns=2;s=Rabbit on the server",
    ]
    assert problems == expected

    drv = OpcuaDriver(config(sim.server.endpoint), points, methods)
    with pytest.raises(PointMismatch) as caught:
        await drv.connect()
    message = str(caught.value)
    assert message.startswith(
        f"robot: 9 difference(s) between the cell file and {sim.server.endpoint}"
    )
    assert all(problem in message for problem in expected)
    assert drv.health.state is HealthState.DISCONNECTED
    with pytest.raises(NotConnected):
        await drv.read([BUSY])


@pytest.mark.asyncio(loop_scope="module")
async def test_verify_of_matching_cell_is_empty(driver: OpcuaDriver) -> None:
    assert await driver.verify() == []


# -- connection faults -----------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_server_down_at_first_connect_is_reached_once_it_comes_up(own_sim: Sim) -> None:
    endpoint = own_sim.server.endpoint
    await own_sim.server.stop()
    with pytest.raises(OSError):  # really down: nothing listens on the port
        await asyncio.open_connection("127.0.0.1", own_sim.server.port)
    drv = OpcuaDriver(config(endpoint, RequestLimits(timeout=0.5, retries=3)), [BUSY])
    connecting = asyncio.create_task(drv.connect())
    try:
        await own_sim.server.start()
        assert own_sim.server.endpoint == endpoint  # the same port again
        await asyncio.wait_for(connecting, 3.0)
        assert drv.health.state is HealthState.CONNECTED
        assert by_value(await drv.read([BUSY])) == [False]
    finally:
        await drv.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_failed_first_connect_keeps_trying_and_then_subscribes(own_sim: Sim) -> None:
    endpoint = own_sim.server.endpoint
    await own_sim.server.stop()
    drv = OpcuaDriver(config(endpoint), [BUSY])
    drv.on_health(broken_listener)
    seen: list[object] = []
    drv.subscribe([BUSY], lambda readings: seen.append(readings[BUSY.name].value))
    states: list[HealthState] = []
    drv.on_health(lambda _name, health: states.append(health.state))
    try:
        with pytest.raises(ConnectFailed, match=re.escape(f"robot: cannot connect to {endpoint}")):
            await drv.connect()
        assert states == [HealthState.LOST]
        own_sim.image.set(BUSY.name, True)
        await own_sim.server.start()
        await wait_until(
            lambda: drv.health.state is HealthState.CONNECTED, 5.0, "the background connect"
        )
        await wait_until(lambda: seen[-1:] == [True], 5.0, "the subscribed value")
        await own_sim.set({BUSY.name: False})
        await wait_until(lambda: seen[-1] is False, 5.0, "a change")
        assert by_value(await drv.read([BUSY])) == [False]
    finally:
        await drv.close()
    assert states == [HealthState.LOST, HealthState.CONNECTED, HealthState.DISCONNECTED]


@pytest.mark.asyncio(loop_scope="module")
async def test_mismatch_found_by_the_background_connect_is_final(own_sim: Sim) -> None:
    endpoint = own_sim.server.endpoint
    await own_sim.server.stop()
    drv = OpcuaDriver(config(endpoint), [BUSY, TEMP])  # TEMP is not on this server
    try:
        with pytest.raises(ConnectFailed):
            await drv.connect()
        await own_sim.server.start()
        await wait_until(lambda: "difference" in (drv.health.last_error or ""), 5.0, "the check")
        assert drv.health.state is HealthState.LOST
        assert "robot.temp ns=3;i=2001: no such node on the server" in str(drv.health.last_error)
        with pytest.raises(NotConnected):  # it gave up: no session behind the driver
            await drv.read([BUSY])
        with pytest.raises(PointMismatch, match=r"robot\.temp"):
            await drv.connect()
    finally:
        await drv.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_nothing_listening_fails_within_the_bound() -> None:
    listener = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    listener.close()
    await listener.wait_closed()
    drv = OpcuaDriver(config(f"opc.tcp://127.0.0.1:{port}/robot"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(
        ConnectFailed, match=re.escape(f"robot: cannot connect to opc.tcp://127.0.0.1:{port}/robot")
    ):
        await drv.connect()
    assert loop.time() - start <= with_room(LIMITS.worst_case)
    await drv.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_frozen_server_fails_within_the_bound() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def accept_and_ignore(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        writers.append(w)  # keep the socket open, never answer

    frozen = await asyncio.start_server(accept_and_ignore, "127.0.0.1", 0)
    port = frozen.sockets[0].getsockname()[1]
    drv = OpcuaDriver(config(f"opc.tcp://127.0.0.1:{port}/robot"))
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(ConnectFailed, match=re.escape(f"127.0.0.1:{port}")):
            await drv.connect()
        assert loop.time() - start <= with_room(LIMITS.worst_case)
        assert writers  # it did accept: the driver got as far as the OPC UA hello
    finally:
        await drv.close()
        for w in writers:
            w.close()
        frozen.close()
        await frozen.wait_closed()


@pytest.mark.asyncio(loop_scope="module")
async def test_server_freezing_after_connect_times_out_and_is_lost(sim: Sim) -> None:
    proxy = FaultProxy("127.0.0.1", sim.server.port)
    await proxy.start()
    drv = OpcuaDriver(config(f"opc.tcp://127.0.0.1:{proxy.port}/robot"), [BUSY])
    states: list[HealthState] = []
    drv.on_health(lambda _name, health: states.append(health.state))
    watcher = Recorder()
    try:
        await drv.connect()
        drv.subscribe([BUSY], watcher)
        await wait_until(lambda: watcher.last(BUSY.name) is not None, 5.0, "the initial value")
        proxy.freeze(True)
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(DeviceTimeout, match="robot: read 1 point"):
            await drv.read([BUSY])
        assert loop.time() - start <= with_room(LIMITS.worst_case)
        # the keep-alive notices a silent server, and the subscriber hears of it
        await wait_until(lambda: bool(watcher.bad(BUSY.name)), 5.0, "a BAD reading")
        assert loop.time() - start <= with_room(LOSS_BOUND)
        assert states == [HealthState.CONNECTED, HealthState.LOST]
        assert "no answer" in (watcher.bad(BUSY.name)[0].error or "")
        proxy.freeze(False)
        await wait_until(lambda: states[-1] is HealthState.CONNECTED, 5.0, "reconnected")
        assert states == [HealthState.CONNECTED, HealthState.LOST, HealthState.CONNECTED]
        assert by_value(await drv.read([BUSY])) in ([True], [False])
        await wait_until(
            lambda: watcher.seen[BUSY.name][-1].quality is Quality.GOOD, 5.0, "a GOOD value again"
        )
    finally:
        await drv.close()
        await proxy.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_restart_reports_lost_then_connected_and_resubscribes(own_sim: Sim) -> None:
    drv = OpcuaDriver(config(own_sim.server.endpoint), [BUSY])
    transitions: list[Health] = []
    await drv.connect()
    drv.on_health(broken_listener)  # first: it must not stop the others or the reconnect
    drv.on_health(lambda _name, health: transitions.append(health))
    seen: list[bool | None] = []
    drv.subscribe([BUSY], lambda readings: seen.append(readings[BUSY.name].value))
    try:
        await wait_until(lambda: seen == [False], 5.0, "the initial value")
        await own_sim.server.stop()
        await wait_until(lambda: len(transitions) >= 1, 3.0, "health LOST")
        assert transitions[0].state is HealthState.LOST
        assert own_sim.server.endpoint in (transitions[0].last_error or "")
        with pytest.raises(NotConnected, match="robot: read 1 point"):
            await drv.read([BUSY])
        own_sim.image.set(BUSY.name, True)  # changed while the device was down
        await own_sim.server.start()
        await wait_until(lambda: len(transitions) >= 2, 5.0, "health CONNECTED")
        assert [h.state for h in transitions] == [HealthState.LOST, HealthState.CONNECTED]
        await wait_until(lambda: seen[-1] is True, 5.0, "the value after the restart")
        await own_sim.set({BUSY.name: False})
        await wait_until(lambda: seen[-1] is False, 5.0, "a change after the restart")
        assert [h.state for h in transitions] == [HealthState.LOST, HealthState.CONNECTED]
    finally:
        await drv.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_close_leaves_no_tasks_behind(sim: Sim) -> None:
    before = asyncio.all_tasks()
    drv = OpcuaDriver(config(sim.server.endpoint), [BUSY])
    await drv.connect()
    unsubscribe = drv.subscribe([BUSY], lambda _r: None)
    await drv.read([BUSY])
    await drv.close()
    unsubscribe()
    current = asyncio.current_task()

    def ours() -> set[asyncio.Task[object]]:
        # the server's per-connection tasks end when it sees the socket close
        return {
            t
            for t in asyncio.all_tasks() - before
            if t is not current and "asyncua/server" not in repr(t.get_coro())
        }

    await wait_until(lambda: not ours(), 5.0, "the driver's tasks to end")
    assert drv.health.state is HealthState.DISCONNECTED


@pytest.mark.asyncio(loop_scope="module")
async def test_close_while_the_keep_alive_probes_never_hangs(sim: Sim) -> None:
    # Probing all the time, close() often lands as a probe's answer arrives: a cancellation
    # lost in that race left the probe running and close() waiting for ever.
    busy = replace(config(sim.server.endpoint), publishing_interval=0.0005)
    for cycle in range(40):
        drv = OpcuaDriver(busy, [BUSY])
        await drv.connect()
        for _ in range(cycle % 4):  # vary where in the probe cycle close() lands
            await drv.read([BUSY])
        closing = asyncio.ensure_future(drv.close())
        done, _ = await asyncio.wait([closing], timeout=LIMITS.worst_case + 1.0)
        assert closing in done, f"close() hung in cycle {cycle}"
        assert drv.health.state is HealthState.DISCONNECTED


# -- security --------------------------------------------------------------------------------


class OneUser(Logins):
    """A server-side user manager that knows one operator."""

    def login(self, username: str | None, password: str | None) -> User | None:
        """The operator; anyone else is refused."""
        return operator(username, password)


@pytest.mark.asyncio(loop_scope="module")
async def test_sign_and_encrypt_with_user_and_password(tmp_path: Path) -> None:
    host = socket.gethostname()
    server_key, server_cert = tmp_path / "server.pem", tmp_path / "server.der"
    client_key, client_cert = tmp_path / "client.pem", tmp_path / "client.der"
    await setup_self_signed_certificate(
        server_key,
        server_cert,
        "urn:cellctl:test:server",
        host,
        [ExtendedKeyUsageOID.SERVER_AUTH],
        {},
    )
    await setup_self_signed_certificate(
        client_key,
        client_cert,
        "urn:cellctl:test:client",
        host,
        [ExtendedKeyUsageOID.CLIENT_AUTH],
        {},
    )
    server = Server(user_manager=OneUser())
    await init_with_cache(server, default_cache_dir())
    await server.set_application_uri("urn:cellctl:test:server")
    server.set_endpoint("opc.tcp://127.0.0.1:0/secure")
    server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
    server.set_identity_tokens([ua.UserNameIdentityToken])
    await server.load_certificate(str(server_cert))
    await server.load_private_key(str(server_key))
    idx = await server.register_namespace("urn:cellctl:test")
    await server.nodes.objects.add_variable(
        ua.NodeId("Robot.Busy", idx), "Robot.Busy", ua.Variant(True, ua.VariantType.Boolean)
    )
    await server.start()
    assert server.bserver is not None
    endpoint = f"opc.tcp://127.0.0.1:{server.bserver.port}/secure"
    secure = OpcuaSecurity(
        "Basic256Sha256_SignAndEncrypt",
        str(client_cert),
        str(client_key),
        str(server_cert),  # pinned: a user needs the server's certificate known
        "operator",
        "s3cret",
    )
    try:
        drv = OpcuaDriver(replace(config(endpoint), security=secure), [BUSY])
        await drv.connect()
        try:
            assert by_value(await drv.read([BUSY])) == [True]
        finally:
            await drv.close()
        wrong = OpcuaDriver(replace(config(endpoint), security=replace(secure, password="guess")))
        with pytest.raises(ConnectFailed, match="BadUserAccessDenied"):
            await wrong.connect()
        plain = OpcuaDriver(config(endpoint))
        with pytest.raises(ConnectFailed, match="refused the session: No matching endpoints"):
            await plain.connect()
    finally:
        await server.stop()


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "cellctl"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "cellctl"


@pytest.mark.asyncio(loop_scope="module")
async def test_second_start_loads_the_address_space_cache(tmp_path: Path) -> None:
    def cache_state() -> dict[str, tuple[int, int]]:
        files = tmp_path.rglob("*")
        return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in files if p.is_file()}

    states: list[dict[str, tuple[int, int]]] = []
    for _ in range(2):
        server = OpcuaSimServer(
            "opc.tcp://127.0.0.1:0/x", ProcessImage(DEVICE, [BUSY]), cache_dir=tmp_path
        )
        await server.start()
        await server.stop()
        states.append(await asyncio.to_thread(cache_state))
    # the bare path is the marker asyncua looks for before it loads the cache
    marker = tmp_path / f"asyncua-{asyncua.__version__}-address-space.d" / "address-space"
    assert await asyncio.to_thread(marker.is_file)
    # The second start read the cache and did not build (and write) it again.
    assert len(states[0]) > 1
    assert states[1] == states[0]


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("policy", ["None", "Basic256Sha256_Sign"])
async def test_a_password_is_never_sent_without_encryption(sim: Sim, policy: str) -> None:
    security = OpcuaSecurity(policy, "client.der", "client.pem", None, "operator", "s3cret")
    drv = OpcuaDriver(replace(config(sim.server.endpoint), security=security), [BUSY])
    loop = asyncio.get_running_loop()
    start = loop.time()
    expected = (
        f"robot: user 'operator' at {sim.server.endpoint} needs security policy "
        f"Basic256Sha256_SignAndEncrypt: with {policy} the password could cross the network "
        "in clear text"
    )
    try:
        with pytest.raises(ConnectFailed) as caught:
            await drv.connect()
        assert str(caught.value) == expected
        assert loop.time() - start < LIMITS.timeout  # refused at once, not retried
        assert drv.health.state is HealthState.DISCONNECTED
    finally:
        await drv.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_missing_certificate_is_refused_at_once(sim: Sim, tmp_path: Path) -> None:
    missing = str(tmp_path / "absent.der")
    security = OpcuaSecurity("Basic256Sha256_SignAndEncrypt", missing, missing)
    drv = OpcuaDriver(replace(config(sim.server.endpoint), security=security), [BUSY])
    loop = asyncio.get_running_loop()
    start = loop.time()
    try:
        with pytest.raises(
            ConnectFailed, match="^" + re.escape(f"robot: cannot load certificate {missing}: ")
        ):
            await drv.connect()
        assert loop.time() - start < LIMITS.timeout  # a configuration error is not retried
        assert drv.health.state is HealthState.DISCONNECTED  # and not tried in the background
    finally:
        await drv.close()


class CutShortRelay:
    """A TCP relay to a server that cuts short the CreateSession answer of its first connection.

    asyncua fails that connect with a decoding error (a UaError that is not a status code),
    as it may while a server is starting or a link is bad.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        cut = self.connections == 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def upstream() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
            up_writer.close()

        async def downstream() -> None:
            # OPC UA TCP messages: 8-byte header whose last 4 bytes are the size (LE).
            for index in itertools.count():
                header = await up_reader.readexactly(8)
                body = await up_reader.readexactly(int.from_bytes(header[4:], "little") - 8)
                if cut and index == 2:  # ACK, OPN, then the CreateSession response
                    body = body[:28]  # channel, token and sequence headers, then 12 bytes
                    header = header[:4] + (8 + len(body)).to_bytes(4, "little")
                writer.write(header + body)

        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            await asyncio.gather(upstream(), downstream())
        writer.close()
        up_writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.mark.asyncio(loop_scope="module")
async def test_an_answer_cut_short_at_connect_is_retried(sim: Sim) -> None:
    relay = CutShortRelay(sim.server.port)
    await relay.start()
    drv = OpcuaDriver(config(f"opc.tcp://127.0.0.1:{relay.port}/robot"), [BUSY])
    try:
        await drv.connect()
        assert relay.connections == 2
        assert drv.health.state is HealthState.CONNECTED
        assert by_value(await drv.read([BUSY])) in ([True], [False])
    finally:
        await drv.close()
        await relay.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_dropped_link_is_lost_then_found_and_resubscribed(own_sim: Sim) -> None:
    url = urlparse(own_sim.server.endpoint)
    proxy = FaultProxy("127.0.0.1", url.port or 0)
    await proxy.start()
    drv = OpcuaDriver(config(f"opc.tcp://127.0.0.1:{proxy.port}{url.path}"), [BUSY])
    states: list[HealthState] = []
    seen: list[bool | None] = []
    try:
        await drv.connect()
        drv.on_health(lambda _name, health: states.append(health.state))
        drv.subscribe([BUSY], lambda readings: seen.append(readings[BUSY.name].value))
        await wait_until(lambda: bool(seen), 5.0, "the initial value")
        proxy.drop()  # the session's TCP connection is reset mid-way
        await wait_until(lambda: HealthState.LOST in states, 5.0, "health LOST")
        await wait_until(lambda: drv.health.state is HealthState.CONNECTED, 8.0, "reconnect")
        await wait_until(lambda: seen[-1] is not None, 5.0, "a GOOD value after the reconnect")
        expected = not seen[-1]
        await own_sim.set({BUSY.name: expected})
        await wait_until(lambda: seen[-1] is expected, 3.0, "a change after the reconnect")
        assert states == [HealthState.LOST, HealthState.CONNECTED]
    finally:
        await drv.close()
        await proxy.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_subscription_request_without_answer_makes_the_device_lost_and_it_resubscribes(
    sim: Sim,
) -> None:
    # A patient keep-alive (10 tries) outlasts the slow spell; the subscription request (one
    # try) does not: only the driver's handling of that timeout can make the device LOST.
    limits = RequestLimits(timeout=0.3, retries=9)
    proxy = FaultProxy("127.0.0.1", sim.server.port)
    await proxy.start()
    drv = OpcuaDriver(config(f"opc.tcp://127.0.0.1:{proxy.port}/robot", limits), [BUSY])
    states: list[HealthState] = []
    seen = Recorder()
    try:
        await drv.connect()
        drv.on_health(lambda _name, health: states.append(health.state))
        proxy.latency(2 * limits.timeout)  # every answer comes after its request timed out
        drv.subscribe([BUSY], seen)
        await wait_until(lambda: bool(seen.bad(BUSY.name)), with_room(limits.timeout), "BAD")
        proxy.clear()  # the link lived all along
        (bad,) = seen.bad(BUSY.name)
        assert "create subscription: no answer" in (bad.error or "")
        await wait_until(
            lambda: value_of(seen, BUSY) is not None,
            with_room(limits.worst_case),
            "a GOOD value after the reconnect",
        )
        assert states == [HealthState.LOST, HealthState.CONNECTED]
        assert len(seen.bad(BUSY.name)) == 1  # told once
        expected = not value_of(seen, BUSY)
        await sim.set({BUSY.name: expected})
        await wait_until(
            lambda: value_of(seen, BUSY) is expected, with_room(limits.worst_case), "a change"
        )
    finally:
        await drv.close()
        await proxy.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_killed_server_tells_every_subscriber_once_then_good_values_again(
    own_sim: Sim,
) -> None:
    flag = RW[0]  # robot.bool, the other point of own_sim
    drv = OpcuaDriver(config(own_sim.server.endpoint), [flag, BUSY])
    both, one = Recorder(), Recorder()
    watches = {both: [flag, BUSY], one: [BUSY]}
    await own_sim.set({flag.name: False, BUSY.name: False})
    await drv.connect()
    states: list[HealthState] = []
    drv.on_health(lambda _name, health: states.append(health.state))
    try:
        for recorder, points in watches.items():
            drv.subscribe(points, recorder)

        def all_have(check: Callable[[Reading | None], bool]) -> bool:
            return all(check(r.last(p.name)) for r, points in watches.items() for p in points)

        await wait_until(lambda: all_have(lambda r: r is not None), 5.0, "the initial values")
        assert all_have(lambda r: r is not None and r.quality is Quality.GOOD)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await own_sim.server.stop()
        await wait_until(
            lambda: all_have(lambda r: r is not None and r.quality is Quality.BAD),
            5.0,
            "BAD readings for every watched point",
        )
        assert loop.time() - start <= with_room(LOSS_BOUND)
        for recorder, points in watches.items():
            for p in points:
                reading = recorder.bad(p.name)[0]
                assert reading.value is None
                assert (reading.error or "").startswith(
                    f"robot {p.name} {p.node_id}: connection to {own_sim.server.endpoint} lost"
                )
        assert states == [HealthState.LOST]
        late = Recorder()  # subscribes during the outage: hears of it at once
        drv.subscribe([flag], late)
        await wait_until(lambda: bool(late.bad(flag.name)), 5.0, "BAD for a late subscriber")
        # failed reconnects keep health LOST; subscribers are not told again
        await wait_until(
            lambda: (drv.health.last_error or "").startswith("reconnect to"),
            5.0,
            "a failed reconnect",
        )
        own_sim.image.set(flag.name, True)  # changed while the device was down
        own_sim.image.set(BUSY.name, True)
        await own_sim.server.start()
        watches[late] = [flag]
        await wait_until(
            lambda: all_have(lambda r: r is not None and r.value is True),
            5.0,
            "GOOD values after the restart",
        )
        assert all_have(lambda r: r is not None and r.quality is Quality.GOOD)
        assert states == [HealthState.LOST, HealthState.CONNECTED]
        for recorder, points in watches.items():
            assert [len(recorder.bad(p.name)) for p in points] == [1] * len(points)
    finally:
        await drv.close()


# -- supervision: no background work dies in silence ------------------------------------------


def faulty_subscriber(readings: dict[str, Reading]) -> None:
    """A subscriber callback with a bug."""
    raise RuntimeError(f"subscriber bug on {sorted(readings)}")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_failing_subscriber_does_not_stop_the_others(
    own_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    drv = OpcuaDriver(config(own_sim.server.endpoint), [BUSY])
    await own_sim.set({BUSY.name: False})
    await drv.connect()
    states: list[HealthState] = []
    drv.on_health(lambda _name, health: states.append(health.state))
    drv.subscribe([BUSY], faulty_subscriber)  # first: it must not stop the one after it
    good = Recorder()
    drv.subscribe([BUSY], good)
    try:
        await wait_until(lambda: good.last(BUSY.name) is not None, 5.0, "the initial value")
        await own_sim.set({BUSY.name: True})
        await wait_until(lambda: value_of(good, BUSY) is True, 5.0, "a change")
        await own_sim.server.stop()  # the loss is told to every subscriber in turn
        await wait_until(lambda: bool(good.bad(BUSY.name)), 5.0, "BAD after the loss")
        await own_sim.server.start()
        await wait_until(lambda: drv.health.state is HealthState.CONNECTED, 5.0, "health CONNECTED")
        await own_sim.set({BUSY.name: False})
        await wait_until(lambda: value_of(good, BUSY) is False, 5.0, "a change after the restart")
        # The subscriber's bug is logged each time; it is not the device's health.
        assert states == [HealthState.LOST, HealthState.CONNECTED]
        failures = [r for r in caplog.records if "subscriber callback failed" in r.getMessage()]
        assert len(failures) >= 3 and all(r.exc_info for r in failures)
    finally:
        await drv.close()


def value_of(recorder: Recorder, point: OpcuaPoint) -> object:
    """The latest GOOD value a recorder has of a point (None when the latest is not GOOD)."""
    reading = recorder.last(point.name)
    return reading.value if reading is not None and reading.quality is Quality.GOOD else None


class NoResultsServer:
    """A server that, when told to, answers a Read of its ServerState with no results at all.

    Nonconformant, as some devices are: asyncua's client then fails with an IndexError where
    it expected the one result, inside the driver's keep-alive.
    """

    def __init__(self) -> None:
        self.broken = False
        self.server = Server()

    async def start(self) -> str:
        """Start on a free port; return the endpoint."""
        await init_with_cache(self.server, default_cache_dir())
        self.server.set_endpoint("opc.tcp://127.0.0.1:0/noresults")
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await self.server.register_namespace("urn:cellctl:test")
        self.busy = await self.server.nodes.objects.add_variable(
            ua.NodeId("Robot.Busy", idx), "Robot.Busy", ua.Variant(False, ua.VariantType.Boolean)
        )
        self.server.subscribe_server_callback(CallbackType.PostRead, self._post_read)
        await self.server.start()
        assert self.server.bserver is not None
        return f"opc.tcp://127.0.0.1:{self.server.bserver.port}/noresults"

    def _post_read(self, event: ServerItemCallback, _dispatcher: object) -> None:
        state = ua.NodeId(ua.ObjectIds.Server_ServerStatus_State)
        asked = [rv.NodeId for rv in event.request_params.NodesToRead]
        if self.broken and state in asked and event.response_params is not None:
            event.response_params.clear()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_keep_alive_that_fails_makes_the_device_lost_and_it_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sim = NoResultsServer()
    endpoint = await sim.start()
    drv = OpcuaDriver(config(endpoint), [BUSY])
    seen = Recorder()
    try:
        await drv.connect()
        drv.subscribe([BUSY], seen)
        await wait_until(lambda: seen.last(BUSY.name) is not None, 5.0, "the initial value")
        sim.broken = True
        await wait_until(lambda: drv.health.state is HealthState.LOST, 3.0, "health LOST")
        assert (drv.health.last_error or "").startswith("keep-alive failed: IndexError")
        assert seen.bad(BUSY.name)  # subscribers heard of it
        logged = [r for r in caplog.records if r.getMessage() == "robot: keep-alive failed"]
        assert logged and logged[0].exc_info is not None
        sim.broken = False
        await wait_until(lambda: drv.health.state is HealthState.CONNECTED, 5.0, "reconnected")
        await sim.busy.write_value(ua.Variant(True, ua.VariantType.Boolean))
        await wait_until(lambda: value_of(seen, BUSY) is True, 5.0, "a change, newly subscribed")
    finally:
        await drv.close()
        await sim.server.stop()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_session_a_background_task_failed_during_connect_is_closed() -> None:
    sim = NoResultsServer()
    url = urlparse(await sim.start())
    proxy = FaultProxy("127.0.0.1", url.port or 0)
    await proxy.start()
    # Every answer is late (but in time): the keep-alive, probing at once, fails (IndexError)
    # after one round trip, while connect() still checks the node and subscribes (three).
    proxy.latency(0.2)
    slow = replace(
        config(
            f"opc.tcp://127.0.0.1:{proxy.port}{url.path}", RequestLimits(timeout=2.0, retries=0)
        ),
        publishing_interval=0.001,
    )
    drv = OpcuaDriver(slow, [BUSY])
    drv.subscribe([BUSY], Recorder())
    sim.broken = True
    try:
        with pytest.raises(ConnectFailed):
            await drv.connect()
    finally:
        await drv.close()
    try:
        # Every session the driver opened is closed, on the server and on the link.
        await wait_until(
            lambda: not sim.server.iserver._external_sessions and proxy.open_connections == 0,
            with_room(slow.limits.worst_case),
            "no session left open",
        )
    finally:
        await proxy.stop()
        await sim.server.stop()
