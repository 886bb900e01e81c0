"""The Modbus poller is supervised: a failing cycle or subscriber is reported and polling goes
on; after an overrun it rests a whole poll period (real driver against the simulators)."""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from cellctl.testing import wait_until
from drivers.base import HealthState, Quality, Reading
from drivers.config import RequestLimits
from drivers.points import DataType, ModbusPoint, ModbusTable
from drivers.sim.modbus_server import ModbusRtuSimServer, ModbusSimServer
from hil_tests.modbus_fixtures import AFTER, FORCE, Rig, press_rig

UNIT = 1
POLL = 0.05
#: A bit that no register has: decoding it raises (a codec error inside the poll cycle).
NO_SUCH_BIT = ModbusPoint(
    "no_such_bit", ModbusTable.HOLDING_REGISTER, AFTER.address, DataType.BOOL, bit=16
)


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig[ModbusSimServer]]:
    """A running TCP simulator serving the press image."""
    async with press_rig(ModbusSimServer, UNIT).running() as served:
        yield served


def failures(records: list[logging.LogRecord]) -> list[logging.LogRecord]:
    """The driver's error lines that carry a traceback."""
    return [r for r in records if r.name == "drivers.modbus" and r.exc_info]


@pytest.mark.asyncio
async def test_a_poll_cycle_that_raises_makes_the_device_lost_and_polling_goes_on(
    rig: Rig[ModbusSimServer], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.modbus")
    async with rig.driver(poll=POLL) as driver:
        seen: list[dict[str, Reading]] = []
        driver.subscribe([AFTER], seen.append)
        await wait_until(lambda: bool(seen), 5.0, "the first poll")
        stop_broken = driver.subscribe([NO_SUCH_BIT], lambda _readings: None)
        await wait_until(lambda: driver.health.state is HealthState.LOST, 5.0, "health LOST")
        assert "bit 16 is not in 0..15" in str(driver.health.last_error)
        assert driver.name in str(driver.health.last_error)
        # The other subscriber is told its value is no longer known, not left with the last.
        await wait_until(lambda: seen[-1]["after"].quality is Quality.BAD, 5.0, "a BAD reading")
        assert "bit 16" in str(seen[-1]["after"].error)
        sent = driver.requests
        await wait_until(lambda: driver.requests >= sent + 3, 5.0, "polling to go on")
        # Logged with its traceback once, not on every cycle.
        assert len(failures(caplog.records)) == 1
        stop_broken()
        await wait_until(
            lambda: driver.health.state is HealthState.CONNECTED, 5.0, "health CONNECTED"
        )
        await wait_until(lambda: seen[-1]["after"].quality is Quality.GOOD, 5.0, "values again")
        assert seen[-1]["after"].value == 4242


@pytest.mark.asyncio
async def test_a_failing_subscriber_does_not_stop_the_others(
    rig: Rig[ModbusSimServer], caplog: pytest.LogCaptureFixture
) -> None:
    loop = asyncio.get_running_loop()

    def broken(_readings: dict[str, Reading]) -> None:
        raise RuntimeError("subscriber bug")

    def result_of_a_cancelled_future(_readings: dict[str, Reading]) -> None:
        future: asyncio.Future[None] = loop.create_future()
        future.cancel()
        future.result()  # raises CancelledError, which is not an Exception

    flaky_calls: list[dict[str, Reading]] = []

    def flaky(readings: dict[str, Reading]) -> None:
        flaky_calls.append(readings)
        if len(flaky_calls) == 1:
            raise RuntimeError("first call fails")

    seen: list[dict[str, Reading]] = []
    async with rig.driver(poll=POLL) as driver:
        for callback in (broken, result_of_a_cancelled_future, flaky, seen.append):
            driver.subscribe([FORCE], callback)
        # A callback that failed is offered the same changes again: nothing is lost to it.
        await wait_until(lambda: len(flaky_calls) >= 2, 5.0, "the failed changes offered again")
        assert [c["force_kN"].value for c in flaky_calls] == [12.25, 12.25]
        rig.image.set(FORCE.name, 3.5)
        await rig.server.publish(rig.image.device, rig.image.take_dirty())
        await wait_until(lambda: seen[-1]["force_kN"].value == 3.5, 5.0, "the change")
        await wait_until(lambda: flaky_calls[-1]["force_kN"].value == 3.5, 5.0, "the change")
        assert [c["force_kN"].value for c in seen] == [12.25, 3.5]
        # A subscriber's bug is not the device's: it still answers.
        assert driver.health.state is HealthState.CONNECTED
    # Each failing subscriber logged once with its traceback, however many polls it failed.
    assert len(failures(caplog.records)) == 3


@pytest.mark.asyncio
async def test_after_an_overrun_the_poller_rests_a_whole_period() -> None:
    # A unit that never answers makes every cycle longer than the poll period; the poller
    # still leaves the line idle a whole period after each, so it cannot hold the line.
    limits = RequestLimits(timeout=0.15, retries=0)
    period = 0.12
    async with (
        press_rig(ModbusRtuSimServer, 2).running() as rig,
        rig.driver(name="ghost", unit=9, poll=period, limits=limits) as ghost,
    ):
        ghost.subscribe([AFTER], lambda _readings: None)
        await wait_until(lambda: ghost.requests >= 1, 5.0, "the first poll")
        first, start = ghost.requests, time.monotonic()
        await wait_until(lambda: ghost.requests >= first + 3, 5.0, "three more polls")
        elapsed = time.monotonic() - start
        # Each cycle: one try that times out, then a whole period of rest.
        assert elapsed >= 0.9 * 3 * (limits.worst_case + period)


@pytest.mark.asyncio
async def test_devices_polled_at_one_rate_poll_at_different_moments_of_the_period(
    rig: Rig[ModbusSimServer], caplog: pytest.LogCaptureFixture
) -> None:
    # Two devices subscribed at the same moment: after their first cycles (at once) their
    # cycles keep apart (about 0.4 or 0.6 of a period between two pollers started one after
    # the other) instead of both waking on the same tick.
    caplog.set_level(logging.CRITICAL, logger="drivers.modbus")
    period = 0.2
    heard: dict[str, list[float]] = {"a": [], "b": []}
    loop = asyncio.get_running_loop()

    def cycle_of(name: str) -> Callable[[dict[str, Reading]], None]:
        def failing(_readings: dict[str, Reading]) -> None:
            heard[name].append(loop.time())
            # A subscriber that raises is offered the same values every cycle: each call
            # marks a cycle, whether or not the value changed.
            raise RuntimeError("count every cycle")

        return failing

    async with (
        rig.driver(name="a", poll=period) as a,
        rig.driver(name="b", poll=period) as b,
    ):
        a.subscribe([AFTER], cycle_of("a"))
        b.subscribe([AFTER], cycle_of("b"))
        await wait_until(lambda: min(map(len, heard.values())) >= 5, 10.0, "five polls each")
    # How long after a's latest cycle each of b's later cycles came.
    lags = [t - max(x for x in heard["a"] if x <= t) for t in heard["b"][1:] if t > heard["a"][0]]
    assert 0.2 * period <= statistics.median(lags) <= 0.8 * period, lags
