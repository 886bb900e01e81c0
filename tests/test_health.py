"""HealthTracker: one notification per transition, and a faulty listener harms nobody; Backoff."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from drivers.base import Health, HealthState
from drivers.health import Backoff, HealthTracker, connect_with_backoff


def test_listeners_hear_each_transition_once() -> None:
    tracker = HealthTracker("press")
    heard: list[tuple[str, HealthState, str | None]] = []
    tracker.listen(lambda device, health: heard.append((device, health.state, health.last_error)))
    tracker.set(HealthState.CONNECTED)
    tracker.set(HealthState.CONNECTED)
    tracker.set(HealthState.LOST, "press: gone")
    tracker.set(HealthState.LOST, "press: still gone")  # a new error, the same state
    assert heard == [
        ("press", HealthState.CONNECTED, None),
        ("press", HealthState.LOST, "press: gone"),
    ]
    assert tracker.health.last_error == "press: still gone"


def test_a_raising_listener_is_logged_and_the_others_still_hear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tracker = HealthTracker("press")
    heard: list[HealthState] = []

    def broken(_device: str, health: Health) -> None:
        raise RuntimeError(f"listener bug on {health.state.value}")

    tracker.listen(broken)
    tracker.listen(lambda _device, health: heard.append(health.state))
    with caplog.at_level(logging.ERROR, logger="drivers"):
        tracker.set(HealthState.LOST, "press: gone")  # must not raise into the caller's loop
        tracker.set(HealthState.CONNECTED)
    assert heard == [HealthState.LOST, HealthState.CONNECTED]
    assert tracker.health.state is HealthState.CONNECTED
    failures = [r for r in caplog.records if r.exc_info is not None]
    assert len(failures) == 2
    assert "press" in failures[0].getMessage() and "listener" in failures[0].getMessage()
    assert "listener bug on lost" in str(failures[0].exc_info[1])  # type: ignore[index]


def test_a_reconnect_counts_as_an_answer_for_a_driver_that_reports_them() -> None:
    # Else the interlock watchdog would find a device that just came back "silent" until its
    # first poll cycle or keep-alive, and trip it again.
    tracker = HealthTracker("robot")
    tracker.set(HealthState.CONNECTED)
    assert tracker.answered_at is None  # a driver that reports no answers stays unwatched
    tracker.answered()
    before = tracker.answered_at
    assert before is not None
    tracker.set(HealthState.LOST, "keep-alive: no answer")
    assert tracker.answered_at == before
    tracker.set(HealthState.CONNECTED)
    assert tracker.answered_at is not None and tracker.answered_at > before


def test_backoff_is_equal_jitter_as_documented_and_stays_at_its_cap() -> None:
    # Try n waits uniform(c/2, c), c = min(cap, first * 2**n): never 0 s (a connect loop must
    # not spin), both halves of the band used, and still bounded after a day-long outage.
    assert Backoff.__doc__ is not None and "equal jitter" in Backoff.__doc__
    state = random.getstate()
    random.seed(10)
    try:
        runs = [
            [b.next_delay() for _ in range(12)] for b in (Backoff(0.05, 5.0) for _ in range(300))
        ]
        outage = Backoff(0.05, 5.0)
        long_run = [outage.next_delay() for _ in range(3000)]
        outage.reset()
        after_reset = outage.next_delay()
    finally:
        random.setstate(state)
    for n in range(12):
        ceiling = min(5.0, 0.05 * 2**n)
        delays = [run[n] for run in runs]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (n, min(delays), max(delays))
        assert min(delays) < 0.55 * ceiling and max(delays) > 0.95 * ceiling
    assert all(2.5 <= d <= 5.0 for d in long_run[-2000:])
    assert 0.025 <= after_reset <= 0.05


@pytest.mark.asyncio
async def test_a_library_s_own_cancellation_is_a_failed_try_not_the_end() -> None:
    tries: list[str | None] = []

    async def attempt() -> None:
        if len(tries) == 1:  # asyncua's wait_for, timed out under load, raises a bare one
            raise asyncio.CancelledError

    await connect_with_backoff(
        attempt,
        device="arm",
        endpoint="opc.tcp://127.0.0.1:1",
        deadline=5.0,
        backoff=Backoff(first=0.001),
        on_try=lambda number, why: tries.append(why),
    )
    assert tries == [None, "the connection attempt to opc.tcp://127.0.0.1:1 was cut short"]


@pytest.mark.asyncio
async def test_cancelling_the_connect_still_ends_it() -> None:
    started = asyncio.Event()

    async def attempt() -> None:
        started.set()
        await asyncio.Event().wait()  # a try that hangs until cancelled

    task = asyncio.ensure_future(
        connect_with_backoff(attempt, device="arm", endpoint="opc.tcp://127.0.0.1:1", deadline=5)
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
