"""OPC UA servers that misbehave, met by our OPC UA driver as the controller uses it: values of
the wrong type, bad and uncertain status codes, messages over the size limit, a method call that
never returns, a subscription that stops publishing. Each is survived: a named error (or a BAD
reading naming device and tag), a defined state, bounded time and memory, the driver serving
afterwards; and a batch on a cell with such a device ends Held, safe state written (real asyncua
server and client on loopback; one hostile server for the module)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua

from cellctl.control.events import (
    Event,
    SafeStateWritten,
    StepEnded,
    StepStarted,
    TripCleared,
    Tripped,
)
from cellctl.control.machine import Command, State
from cellctl.testing import controller_for, held_or_ended, wait_until
from drivers.base import HealthState, Quality, Reading
from drivers.config import OpcuaConfig, RequestLimits
from drivers.errors import BadResponse, DeviceTimeout
from drivers.opcua import RECONNECT_CAP, OpcuaDriver
from drivers.opcua.driver import KEEP_ALIVE_COUNT
from drivers.opcua.requests import MAX_MESSAGE_SIZE
from drivers.points import Access, DataType, MethodArg, MethodSpec, OpcuaPoint
from hil_tests.hostile_opcua import (
    ARM,
    LABEL,
    MOVE,
    READY,
    RUN,
    TEMP,
    HostileServer,
    hostile_server,
)
from hil_tests.support import with_room
from hil_tests.test_opcua import Recorder

DEVICE = "arm"
LIMITS = RequestLimits(timeout=0.3, retries=1)
PUBLISHING = 0.1  # seconds
P_TEMP = OpcuaPoint("arm.temp", TEMP.node_id, DataType.FLOAT64)
P_READY = OpcuaPoint("arm.ready", READY.node_id, DataType.BOOL)
P_LABEL = OpcuaPoint("arm.label", LABEL.node_id, DataType.STRING)
P_RUN = OpcuaPoint("arm.run", RUN.node_id, DataType.BOOL, Access.RW)
POINTS = [P_TEMP, P_READY, P_LABEL, P_RUN]
WATCHED = [P_TEMP, P_READY, P_LABEL]
P_MOVE = MethodSpec("arm.move", ARM, MOVE, (MethodArg("slot", DataType.INT32),), DataType.BOOL)
#: A lost device is noticed within one request's worst case plus one publishing interval.
LOSS_BOUND = LIMITS.worst_case + PUBLISHING
#: A silent subscription is noticed within the keep-alive period the server promised, plus one
#: request's worst case, plus one publishing interval (the keep-alive loop's tick).
SILENCE_BOUND = PUBLISHING * KEEP_ALIVE_COUNT + LIMITS.worst_case + PUBLISHING
#: Seconds a batch here may take to be Held or end.
BATCH = 20.0


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hostile() -> AsyncIterator[HostileServer]:
    """The module's hostile server."""
    async with hostile_server() as server:
        yield server


@pytest_asyncio.fixture(loop_scope="module")
async def arm(hostile: HostileServer) -> AsyncIterator[OpcuaDriver]:
    """A connected driver of the hostile server; the server well-behaved again after."""
    driver = OpcuaDriver(
        OpcuaConfig(DEVICE, hostile.endpoint, publishing_interval=PUBLISHING, limits=LIMITS),
        POINTS,
        [P_MOVE],
    )
    await driver.connect()
    try:
        yield driver
    finally:
        await driver.close()
        await hostile.restore()


def states_of(driver: OpcuaDriver) -> list[HealthState]:
    """Every health state the driver reports from now on (kept in the returned list)."""
    states: list[HealthState] = []
    driver.on_health(lambda _name, health: states.append(health.state))
    return states


async def good_again(driver: OpcuaDriver, seen: Recorder) -> None:
    """The driver serves: CONNECTED, a GOOD read, and GOOD notifications of every watched tag."""
    await wait_until(
        lambda: driver.health.state is HealthState.CONNECTED, with_room(LOSS_BOUND), "CONNECTED"
    )
    readings = await driver.read(WATCHED)
    assert [r.quality for r in readings] == [Quality.GOOD] * 3, readings
    assert [r.value for r in readings] == [TEMP.initial, READY.initial, LABEL.initial]
    await wait_until(
        lambda: all(
            (last := seen.last(p.name)) is not None and last.quality is Quality.GOOD
            for p in WATCHED
        ),
        with_room(LOSS_BOUND),
        "GOOD notifications again",
    )


def error_of(reading: Reading | None) -> str:
    """The error of a reading ('' for none)."""
    return (reading.error or "") if reading is not None else ""


def bad_error(reading: Reading | None) -> str:
    """The error of a BAD reading (fails on any other)."""
    assert reading is not None and reading.quality is Quality.BAD, reading
    assert reading.value is None
    return reading.error or ""


# -- values: wrong type, bad status ---------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_value_of_the_wrong_type_reads_bad_naming_device_tag_and_type(
    hostile: HostileServer, arm: OpcuaDriver
) -> None:
    seen = Recorder()
    arm.subscribe(WATCHED, seen)
    await wait_until(lambda: seen.last(P_TEMP.name) is not None, 5.0, "the first values")
    # The nodes say Double and Boolean; the values are a String, an Int64 and, for a scalar,
    # an array of 100,000 values (inside the message limit: it arrives, and must not end up
    # whole in every message).
    await hostile.put(TEMP, ua.Variant("abc", ua.VariantType.String))
    await hostile.put(READY, ua.Variant(7, ua.VariantType.Int64))
    temp, ready = await arm.read([P_TEMP, P_READY])
    assert bad_error(temp) == f"arm arm.temp {TEMP.node_id}: value 'abc' (str) is not a float64"
    assert bad_error(ready) == f"arm arm.ready {READY.node_id}: value 7 (int) is not a bool"
    await wait_until(lambda: bool(seen.bad(P_READY.name)), 5.0, "BAD notifications")
    assert bad_error(seen.last(P_READY.name)) == bad_error(ready)
    await hostile.put(TEMP, ua.Variant([1.5] * 100_000, ua.VariantType.Double))
    [temp] = await arm.read([P_TEMP])
    error = bad_error(temp)
    assert error.startswith(f"arm arm.temp {TEMP.node_id}: value [1.5, 1.5,"), error
    assert error.endswith("(list of 100000 values) is not a float64"), error[-200:]
    assert len(error) < 200, f"{len(error)} characters"
    await wait_until(
        lambda: "list of 100000" in error_of(seen.last(P_TEMP.name)),
        5.0,
        "the array notified as BAD",
    )
    assert arm.health.state is HealthState.CONNECTED  # a bad value is not a lost device
    await hostile.restore()
    await good_again(arm, seen)


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_and_uncertain_status_codes_read_bad_and_uncertain_naming_the_status(
    hostile: HostileServer, arm: OpcuaDriver
) -> None:
    seen = Recorder()
    arm.subscribe(WATCHED, seen)
    await wait_until(lambda: seen.last(P_TEMP.name) is not None, 5.0, "the first values")
    await hostile.put(
        TEMP, ua.Variant(99.0, ua.VariantType.Double), ua.StatusCodes.BadSensorFailure
    )
    await hostile.put(
        READY, ua.Variant(False, ua.VariantType.Boolean), ua.StatusCodes.UncertainLastUsableValue
    )
    temp, ready = await arm.read([P_TEMP, P_READY])
    assert bad_error(temp) == f"arm arm.temp {TEMP.node_id}: BadSensorFailure"
    assert (ready.value, ready.quality) == (False, Quality.UNCERTAIN)
    assert ready.error == f"arm arm.ready {READY.node_id}: UncertainLastUsableValue"
    # The same in the subscription's data.
    await wait_until(
        lambda: (
            bool(seen.bad(P_TEMP.name))
            and (last := seen.last(P_READY.name)) is not None
            and last.quality is Quality.UNCERTAIN
        ),
        5.0,
        "BAD and UNCERTAIN notifications",
    )
    assert bad_error(seen.last(P_TEMP.name)) == bad_error(temp)
    notified = seen.last(P_READY.name)
    assert notified is not None and (notified.value, notified.error) == (False, ready.error)
    assert arm.health.state is HealthState.CONNECTED
    await hostile.restore()
    await good_again(arm, seen)


# -- size: a message over the limit ---------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_an_answer_over_the_message_limit_is_refused_and_the_driver_recovers(
    hostile: HostileServer, arm: OpcuaDriver
) -> None:
    states = states_of(arm)
    huge = "x" * (MAX_MESSAGE_SIZE + 1_000_000)  # a valid string, of 5 MB
    await hostile.put(LABEL, ua.Variant(huge, ua.VariantType.String))
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(BadResponse) as refused:
        await arm.read([P_LABEL])
    assert loop.time() - start <= with_room(LIMITS.worst_case)
    assert str(refused.value) == (
        f"arm: read 1 point(s): {hostile.endpoint}: BadRequestTooLarge: a message larger than "
        "the limit (4 MiB here) was refused (tags arm.label)"
    )
    # asyncua closes a connection that carried too large a message: the device is lost, and
    # a subscriber hears of it (each new session is refused the same message, at growing
    # intervals: see the extended test), never of the value.
    seen = Recorder()
    arm.subscribe(WATCHED, seen)
    await wait_until(lambda: bool(seen.bad(P_LABEL.name)), with_room(LOSS_BOUND), "BAD readings")
    assert HealthState.LOST in states
    await hostile.restore()
    await good_again(arm, seen)
    assert all(r.value != huge for r in seen.seen[P_LABEL.name])


# -- a method call that never returns -------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_method_call_that_never_returns_times_out_naming_it_and_later_calls_work(
    hostile: HostileServer, arm: OpcuaDriver
) -> None:
    states = states_of(arm)
    calls, answered = hostile.calls, hostile.answered
    hostile.hang = True
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(DeviceTimeout) as timed_out:
        await arm.call(P_MOVE, [3])
    assert loop.time() - start <= with_room(LIMITS.timeout)
    assert str(timed_out.value) == (
        f"arm: call arm.move: no answer from {hostile.endpoint} within 0.3 s × 1"
    )
    # asyncua's server serves a session's requests one at a time: the hung call blocks the
    # session, the keep-alive finds it silent, the driver opens another one.
    await wait_until(
        lambda: states[-2:] == [HealthState.LOST, HealthState.CONNECTED],
        with_room(LOSS_BOUND) + with_room(LIMITS.worst_case),
        "LOST, then CONNECTED on a new session",
    )
    hostile.hang = False
    assert await arm.call(P_MOVE, [5]) is True
    # The hung call was sent once, never again, and never answered.
    assert (hostile.calls - calls, hostile.answered - answered) == (2, 1)


# -- a subscription that stops publishing ---------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_subscription_that_stops_publishing_is_lost_within_the_bound_and_recovers(
    hostile: HostileServer, arm: OpcuaDriver
) -> None:
    seen = Recorder()
    arm.subscribe(WATCHED, seen)
    await wait_until(lambda: seen.last(P_TEMP.name) is not None, 5.0, "the first values")
    states = states_of(arm)
    assert hostile.silence() >= 1  # this driver's (and any a closed session left behind)
    start = time.monotonic()
    await wait_until(lambda: bool(seen.bad(P_TEMP.name)), with_room(SILENCE_BOUND), "BAD readings")
    took = time.monotonic() - start
    # Not before the server's keep-alive was due: a quiet subscription is not a silent one.
    assert took >= PUBLISHING * KEEP_ALIVE_COUNT, f"{took:.2f} s"
    error = bad_error(seen.bad(P_TEMP.name)[0])
    assert error.startswith(
        f"arm arm.temp {TEMP.node_id}: subscription silent: nothing from {hostile.endpoint} for "
    ), error
    assert states[0] is HealthState.LOST
    # Recovered by a new session, whose subscription publishes: a change reaches the subscriber.
    await hostile.put(TEMP, ua.Variant(42.0, ua.VariantType.Double))
    await wait_until(
        lambda: (last := seen.last(P_TEMP.name)) is not None and last.value == 42.0,
        with_room(LOSS_BOUND),
        "the change, from a new subscription",
    )
    assert states == [HealthState.LOST, HealthState.CONNECTED]


# -- a batch on a cell with the hostile device ---------------------------------------------

CELL = """\
cell: hostile
devices:
  arm: {{driver: opcua, endpoint: "{endpoint}", publishing_interval: 100ms, timeout: 300ms,
        retries: 1}}
tags:
  arm.temp: {{device: arm, node: "{temp}", type: float64}}
  arm.run:  {{device: arm, node: "{run}", type: bool, access: rw}}
methods:
  arm.move: {{device: arm, node: "{arm}", method: "{move}", args: {{slot: int32}}, result: bool}}
safe_state: {{arm.run: false}}
"""

RECIPE = """\
recipe: hostile-move
version: 1
steps:
  - {id: start, set: {arm.run: true}}
  - {id: move, call: arm.move, args: {slot: 1}, timeout: 5s}
  - {id: stop, set: {arm.run: false}}
"""


@pytest.mark.asyncio(loop_scope="module")
async def test_a_batch_whose_call_never_returns_is_held_with_the_safe_state_written(
    hostile: HostileServer, tmp_path: Path
) -> None:
    cell, recipe = write_cell(tmp_path, hostile, RECIPE)
    calls = hostile.calls
    hostile.hang = True
    try:
        async with controller_for(cell, recipe) as run:
            batch = asyncio.ensure_future(run.run_batch())
            try:
                assert await held_or_ended(run, BATCH) is State.HELD, run.events
                failed = [e for e in run.of(StepEnded) if e.step_id == "move"]
                assert [e.error for e in failed] == [
                    f"step 'move': call arm.move: arm: call arm.move: no answer from "
                    f"{hostile.endpoint} within 0.3 s × 1"
                ]
                # The session is blocked behind the hung call: the first safe-state write
                # fails; the device is found lost, reconnected, and the write done again.
                await wait_until(
                    lambda: any(e.ok for e in run.of(SafeStateWritten)),
                    with_room(LOSS_BOUND) + with_room(LIMITS.worst_case),
                    "the safe state written",
                )
                assert await hostile.nodes[RUN.name].read_value() is False
                assert run.controller.state is State.HELD
                # The controller still answers: the operator stops the batch.
                await run.controller.command(Command.STOP, cause="test: give up")
                ended = await asyncio.wait_for(batch, BATCH)
            finally:
                batch.cancel()
    finally:
        await hostile.restore()
    assert ended.state is State.STOPPED, ended
    assert hostile.calls - calls == 1  # the call was never repeated


WAIT_RECIPE = """\
recipe: hostile-wait
version: 1
steps:
  - {id: start, set: {arm.run: true}}
  - {id: hot, wait: "arm.temp > 50", timeout: 10s}
  - {id: stop, set: {arm.run: false}}
"""


def write_cell(tmp_path: Path, hostile: HostileServer, recipe_text: str) -> tuple[Path, Path]:
    """The cell file with the hostile device, and a recipe beside it."""
    cell = tmp_path / "cell.yaml"
    cell.write_text(
        CELL.format(
            endpoint=hostile.endpoint, temp=TEMP.node_id, run=RUN.node_id, arm=ARM, move=MOVE
        ),
        encoding="utf-8",
    )
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(recipe_text, encoding="utf-8")
    return cell, recipe


@pytest.mark.asyncio(loop_scope="module")
async def test_a_batch_whose_subscription_stops_publishing_is_held_by_comm_loss(
    hostile: HostileServer, tmp_path: Path
) -> None:
    cell, recipe = write_cell(tmp_path, hostile, WAIT_RECIPE)
    silenced: list[float] = []
    try:
        async with controller_for(cell, recipe) as run:

            def silence(event: Event) -> None:
                if not silenced and isinstance(event, StepStarted) and event.step_id == "hot":
                    assert hostile.silence() >= 1
                    silenced.append(time.time())

            run.controller.listeners.append(silence)
            batch = asyncio.ensure_future(run.run_batch())
            try:
                assert await held_or_ended(run, BATCH) is State.HELD, run.events
                assert silenced, "the batch never reached its wait"
                [trip] = run.of(Tripped)
                assert trip.interlock == "comm-loss:arm", trip
                assert "subscription silent" in trip.message, trip.message
                assert trip.at - silenced[0] <= with_room(SILENCE_BOUND)
                # A new session publishes: the trip clears, and the safe state (refused while
                # the session was down) is on the device; the controller still answers.
                await wait_until(
                    lambda: bool(run.of(TripCleared)), with_room(LOSS_BOUND), "the trip to clear"
                )
                await wait_until(
                    lambda: any(e.ok for e in run.of(SafeStateWritten)),
                    with_room(LOSS_BOUND),
                    "the safe state written",
                )
                assert await hostile.nodes[RUN.name].read_value() is False
                await run.controller.command(Command.STOP, cause="test: give up")
                ended = await asyncio.wait_for(batch, BATCH)
            finally:
                batch.cancel()
    finally:
        await hostile.restore()
    assert ended.state is State.STOPPED, ended


# -- extended: the sizes, memory, reconnects, a quiet subscription ------------------

ROOT = Path(__file__).resolve().parent.parent
#: Seconds the reconnects caused by a message over the limit are watched, and the least wait
#: for a new session the last of them must show: the waits double from 50 ms (without that, a
#: new session follows each loss at once, to be refused the same message: 13 in 3 s here).
WINDOW = 3.0
BACKED_OFF = 0.2


@contextlib.asynccontextmanager
async def huge_server() -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """The hostile server with a 10 MB string and a 1,000,000-element array, in a child process
    (this process's memory is then the client's); its stdin takes `restore`."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "hil_tests.hostile_opcua",
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await child.stdout.readline()).decode()
        assert line.startswith("PORT "), line
        yield child, f"opc.tcp://127.0.0.1:{int(line.split()[1])}/arm"
    finally:
        child.stdin.close()
        try:
            async with asyncio.timeout(10):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()


def peak_rss() -> int:
    """This process's peak resident memory since the last reset_peak() (bytes)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    """Start measuring the peak resident memory from now (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
        refs.write("5")


@pytest.mark.extended
@pytest.mark.asyncio
async def test_huge_values_cost_bounded_memory_and_the_reconnects_they_cause_back_off() -> None:
    async with huge_server() as (child, endpoint):
        assert child.stdin is not None and child.stdout is not None
        # A longer timeout: the server takes a while to encode 8 MB, and the refusal of what
        # arrives, not the timeout, is what is measured here.
        slow = RequestLimits(timeout=2.0, retries=0)
        driver = OpcuaDriver(
            OpcuaConfig(DEVICE, endpoint, publishing_interval=PUBLISHING, limits=slow), POINTS
        )
        await driver.connect()
        try:
            await driver.read([P_READY])  # warm-up: the first requests allocate caches
            reset_peak()
            before = peak_rss()
            states = states_of(driver)
            for sessions, point in enumerate((P_LABEL, P_TEMP)):  # 10 MB; 1,000,000 × 8 bytes
                await wait_until(
                    lambda n=sessions: (
                        states.count(HealthState.CONNECTED) == n
                        and driver.health.state is HealthState.CONNECTED
                    ),
                    with_room(LOSS_BOUND) + RECONNECT_CAP,
                    "a new session",
                )
                with pytest.raises(BadResponse, match="BadRequestTooLarge"):
                    await driver.read([point])
            seen = Recorder()
            changes: list[tuple[float, HealthState]] = []
            driver.on_health(lambda _n, health: changes.append((time.monotonic(), health.state)))
            # The string alone: quick to encode, so the server does not slow the reconnects.
            driver.subscribe([P_LABEL], seen)
            # A measuring window, not a synchronisation: every new session's subscription is
            # refused the same message; the sessions must not follow each other at once.
            await asyncio.sleep(WINDOW)
            grown = peak_rss() - before
            assert grown < 3 * MAX_MESSAGE_SIZE, f"peak memory grew by {grown / 2**20:.1f} MiB"
            # How long each loss waited for its new session: the waits grow.
            waits = [
                round(at - lost_at, 3)
                for (lost_at, lost), (at, state) in itertools.pairwise(changes)
                if lost is HealthState.LOST and state is HealthState.CONNECTED
            ]
            assert len(waits) >= 3, changes
            assert waits[-1] >= 2 * waits[0] and waits[-1] >= BACKED_OFF, waits
            assert seen.bad(P_LABEL.name)
            assert all(r.quality is not Quality.GOOD for r in seen.seen[P_LABEL.name])
            child.stdin.write(b"restore\n")
            async with asyncio.timeout(10):
                assert (await child.stdout.readline()).strip() == b"RESTORED"
            await wait_until(
                lambda: (
                    driver.health.state is HealthState.CONNECTED
                    and (r := seen.last(P_LABEL.name)) is not None
                    and r.value == LABEL.initial
                ),
                with_room(LOSS_BOUND) + RECONNECT_CAP,
                "GOOD values once the server behaves",
            )
        finally:
            await driver.close()


@pytest.mark.extended
@pytest.mark.asyncio(loop_scope="module")
async def test_a_quiet_subscription_is_not_taken_for_a_silent_one(
    hostile: HostileServer, arm: OpcuaDriver
) -> None:
    seen = Recorder()
    arm.subscribe(WATCHED, seen)
    await wait_until(lambda: seen.last(P_TEMP.name) is not None, 5.0, "the first values")
    states = states_of(arm)
    # Nothing changes for three keep-alive periods: the server's keep-alives are heard.
    await asyncio.sleep(3 * PUBLISHING * KEEP_ALIVE_COUNT)
    assert states == []
    assert not any(seen.bad(p.name) for p in WATCHED)
