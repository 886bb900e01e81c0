"""Resetting prepares the cell on memory drivers: it writes the safe state (or the cell's
`reset:` values), each write confirmed and on record, then waits for `ready` on samples taken
after those writes; a `ready` that stays false, or a write that fails, stops the cell."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from cellctl.cli.batch import RunOptions, prepare
from cellctl.control.events import (
    BatchEnded,
    Event,
    Notice,
    SafeStateWritten,
    StateChanged,
    TagWritten,
)
from cellctl.control.machine import State
from cellctl.testing import wait_until
from cellctl.values import TagValue
from drivers.base import Quality
from drivers.config import MemoryConfig
from tests.test_controller import CELL, SAFE, Bench, opened
from tests.test_controller_faults import Refusing

#: Writes only: no wait step, so the batch is Complete as soon as Start has run it.
RECIPE = """\
recipe: r
version: 1
steps:
  - {id: go, set: {line.run: true, line.speed: 100}}
"""
#: The press is latched like the demo's: press.go (cycle start) and line.done (cycle done).
READY = b'ready: {when: "not line.done and line.feed < 3", timeout: 300ms}\n'


def latched(rig: Bench, release_after: float | None) -> None:
    """A press left latched before the batch (a crash, a manual write): press.go and line.done
    true. Once press.go is written false it ends its cycle after `release_after` s (never
    with None), as a press does."""
    rig.device("press.go", True)
    rig.device("line.done", True)
    loop = asyncio.get_running_loop()

    def released(value: object) -> None:
        if value is False and release_after is not None:
            loop.call_later(release_after, rig.device, "line.done", False)

    rig.on_write("press.go", released)


def entered_at(rig: Bench, state: State) -> int:
    """The index, among the bench's events, of the change into `state`."""
    return next(
        i for i, e in enumerate(rig.events) if isinstance(e, StateChanged) and e.target is state
    )


def reset_writes(rig: Bench) -> list[tuple[str, object]]:
    """The confirmed writes on record between Resetting and Idle."""
    during = rig.events[entered_at(rig, State.RESETTING) : entered_at(rig, State.IDLE)]
    return [(e.tag, e.value) for e in during if isinstance(e, TagWritten)]


async def batch(rig: Bench) -> BatchEnded:
    """Reset, Start and wait for the batch's end (nobody Unholds)."""
    async with asyncio.timeout(5):
        return await rig.ctl.run_batch(stop_when_held=lambda: True)


#: A ready that outlasts each test below: only something else ends the wait for it.
PATIENT = CELL + READY.replace(b"300ms", b"30s")


async def waiting_for_ready(rig: Bench) -> asyncio.Task[BatchEnded]:
    """The batch, started on a press that never releases, once it waits for ready (PATIENT)."""
    latched(rig, release_after=None)
    running = asyncio.ensure_future(batch(rig))
    await wait_until(lambda: bool(rig.of(Notice)), what="the wait for ready")
    return running


@pytest.mark.asyncio
async def test_resetting_writes_the_safe_state_and_waits_for_ready_before_start() -> None:
    async with opened(Bench(RECIPE, cell=CELL + READY)) as rig:
        latched(rig, release_after=0.1)
        ended = await batch(rig)
        assert ended.state is State.COMPLETE, ended
        # Each write confirmed and on record, in the cell file's order.
        assert reset_writes(rig) == list(SAFE.items())
        # The device took them before anything of the recipe, and released the press.
        assert rig.writes()[:2] == [("line.run", False), ("line.speed", 0)]
        assert ("press.go", False) in rig.writes("press")
        assert rig.drivers["line"].device_value("line.done") is False
        # Idle came only once the press had ended its cycle.
        resetting, idle = entered_at(rig, State.RESETTING), entered_at(rig, State.IDLE)
        waiting = [e for e in rig.events[resetting:idle] if isinstance(e, Notice)]
        assert "waiting up to 0.3 s" in waiting[0].text and "line.done = true" in waiting[0].text


@pytest.mark.asyncio
async def test_ready_that_stays_false_stops_the_cell_naming_the_false_part() -> None:
    async with opened(Bench(RECIPE, cell=CELL + READY)) as rig:
        latched(rig, release_after=None)  # the press never releases
        # A sample from before the batch that would satisfy ready: it must not count.
        rig.io.board.update(
            TagValue("line.done", "line", False, Quality.GOOD, time.time() - 5, None, 0.0)
        )
        started = time.monotonic()
        ended = await batch(rig)
        assert time.monotonic() - started >= 0.3  # the whole timeout was given
        assert ended.state is State.STOPPED
        assert [e.target for e in rig.of(StateChanged)] == [
            State.RESETTING,
            State.STOPPING,
            State.STOPPED,
        ]
        assert ended.cause == (
            "Resetting: the cell is not ready after 0.3 s: line.done is true (line.done = true)"
        )
        assert ended.cause in ended.faults
        # Stop's own safe state, and nothing of the recipe.
        assert [e.reason for e in rig.of(SafeStateWritten)] == ["Stopping"]
        assert ("line.speed", 100) not in rig.writes()


@pytest.mark.asyncio
async def test_not_ready_names_each_false_part_of_an_and() -> None:
    async with opened(Bench(RECIPE, cell=CELL + READY)) as rig:
        latched(rig, release_after=None)
        rig.device("line.feed", 4)
        ended = await batch(rig)
        assert ended.state is State.STOPPED
        assert ended.cause == (
            "Resetting: the cell is not ready after 0.3 s: line.done is true "
            "(line.done = true); line.feed < 3 is false (line.feed = 4)"
        )


@pytest.mark.asyncio
async def test_reset_values_are_written_instead_of_the_safe_state() -> None:
    cell = CELL + b"reset:\n  press.go: false\n  aux.lamp: true\n" + READY
    async with opened(Bench(RECIPE, cell=cell)) as rig:
        latched(rig, release_after=0.05)
        ended = await batch(rig)
        assert ended.state is State.COMPLETE, ended
        assert reset_writes(rig) == [("press.go", False), ("aux.lamp", True)]
        assert rig.drivers["aux"].device_value("aux.lamp") is True
        assert ("line.speed", 0) not in rig.writes() and ("press.heat", False) not in rig.writes()


@pytest.mark.asyncio
async def test_a_write_that_fails_in_resetting_stops_the_cell_naming_tag_and_device() -> None:
    line = Refusing(MemoryConfig("line"), "line.speed", 0)
    line.refusing = True
    async with opened(Bench(RECIPE, line=line, cell=CELL + READY)) as rig:
        ended = await batch(rig)
        assert ended.state is State.STOPPED
        assert ended.cause is not None
        assert ended.cause.startswith("Resetting: cannot write line.speed = 0 on device line: ")
        assert "device busy" in ended.cause
        # Nothing after the failed write: press.go was never written by Resetting.
        assert [e.tag for e in rig.of(TagWritten)] == ["line.run"]
        assert [e.reason for e in rig.of(SafeStateWritten)] == ["Stopping"]


@pytest.mark.asyncio
async def test_a_stop_request_before_start_ends_the_ready_wait_writing_nothing_more() -> None:
    async with opened(Bench(RECIPE, cell=PATIENT)) as rig:
        running = await waiting_for_ready(rig)
        rig.ctl.refuse_start("SIGTERM before the batch started")
        ended = await running  # within batch()'s 5 s, not the 30 s of the timeout
        assert rig.ctl.start_refused == "SIGTERM before the batch started"
        assert ended.state is State.IDLE
        assert rig.of(SafeStateWritten) == []
        assert rig.writes() == [(t, v) for t, v in SAFE.items()]  # Resetting's values only


@pytest.mark.asyncio
async def test_a_trip_while_waiting_for_ready_leaves_its_safe_state_and_stops_the_cell() -> None:
    async with opened(Bench(RECIPE, cell=PATIENT)) as rig:
        running = await waiting_for_ready(rig)
        rig.device("safety.ok", False)  # the light curtain: a hold, not legal in Resetting
        await wait_until(lambda: bool(rig.of(SafeStateWritten)), what="the trip's safe state")
        rig.device("line.done", False)  # ready now, but the trip's safe state stands
        ended = await running
        assert ended.state is State.STOPPED
        assert ended.cause == (
            "Resetting: interlock curtain tripped; its safe state stands, the cell is not reset"
        )
        assert rig.of(StateChanged)[-1].target is State.STOPPED


@pytest.mark.asyncio
async def test_not_ready_names_an_unreadable_tag_once_with_its_devices_error() -> None:
    async with opened(Bench(RECIPE, cell=CELL + READY)) as rig:
        rig.device("line.feed", 4)

        def broken(event: Event) -> None:
            # Once Reset was let through: the sensor breaks while Resetting waits for ready.
            if isinstance(event, StateChanged) and event.target is State.RESETTING:
                rig.drivers["line"].set_bad("line.done", "sensor open circuit")

        rig.hooks.append(broken)
        ended = await batch(rig)
        assert ended.state is State.STOPPED
        # The false part as such; the unreadable one by its error only (no "no value for").
        assert ended.cause == (
            "Resetting: the cell is not ready after 0.3 s: line.feed < 3 is false "
            "(line.feed = 4); line.done unreadable: line line.done: sensor open circuit"
        )


def test_a_reset_only_tag_is_written_never_polled(tmp_path: Path) -> None:
    # aux.lamp is only in `reset`: its device is connected for Resetting's write, but the tag
    # is not watched (subscribed, polled), as a heartbeat tag; `ready`'s tags are watched.
    cell = tmp_path / "cell.yaml"
    cell.write_bytes(CELL + b"reset:\n  line.run: false\n  aux.lamp: true\n" + READY)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    prepared = prepare(RunOptions(recipe, cell))
    assert "aux.lamp" not in prepared.tags
    assert "aux" in prepared.devices
    assert {"line.done", "line.feed", "line.run"} <= set(prepared.tags)
