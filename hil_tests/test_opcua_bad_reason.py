"""A BAD reading of an OPC UA point names the point, then why, without the device's name a
second time: a subscription the server refuses, and a device lost before the subscription
(real asyncua server and client on loopback)."""

from __future__ import annotations

import pytest

from cellctl.testing import wait_until
from drivers.base import HealthState, Quality
from drivers.opcua import OpcuaDriver
from hil_tests.test_opcua import BUSY, LOSS_BOUND, Recorder, config
from hil_tests.test_opcua_refusals import Gate, connected, endpoint_of, gated_server

#: What every BAD reading of robot.busy starts with: the point, named once.
POINT = f"robot {BUSY.name} {BUSY.node_id}: "


@pytest.mark.asyncio
async def test_a_refused_subscription_reads_bad_naming_the_refusal_once() -> None:
    async with gated_server(Gate()) as server:
        server.iserver.max_subscriptions = 0  # a server at its limit of subscriptions
        async with connected(server) as driver:
            seen = Recorder()
            driver.subscribe([BUSY], seen)
            await wait_until(lambda: bool(seen.bad(BUSY.name)), 5.0, "a BAD reading")
            bad = seen.bad(BUSY.name)[0]
            assert bad.error == (
                f"{POINT}cannot subscribe: create subscription: {endpoint_of(server)} "
                "answered BadTooManySubscriptions"
            )


@pytest.mark.asyncio
async def test_a_subscription_to_a_lost_device_reads_bad_for_the_loss() -> None:
    async with gated_server(Gate()) as server:
        endpoint = endpoint_of(server)
        driver = OpcuaDriver(config(endpoint), [BUSY])
        await driver.connect()
    try:
        before = Recorder()
        driver.subscribe([BUSY], before)
        await wait_until(
            lambda: driver.health.state is HealthState.LOST, LOSS_BOUND * 3 + 1, "the loss"
        )
        await wait_until(lambda: bool(before.bad(BUSY.name)), 5.0, "BAD on the loss")
        # Subscribed once the device is lost: told of the loss at once, for the same reason.
        after = Recorder()
        driver.subscribe([BUSY], after)
        await wait_until(lambda: bool(after.bad(BUSY.name)), 5.0, "BAD for a late subscriber")
        late = after.bad(BUSY.name)[0]
        assert late.quality is Quality.BAD and late.value is None
        # Why: the loss, or a reconnect that failed since (it goes on in the background).
        reason = (late.error or "").removeprefix(POINT)
        assert reason.startswith((f"connection to {endpoint} lost", f"reconnect to {endpoint}"))
    finally:
        await driver.close()
