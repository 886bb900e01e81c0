"""The heartbeat writer on memory drivers: a counter that wraps and a bit that toggles, written
every period while entered; a device that fails is logged once per outage and never stops it."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Mapping

import pytest
import pytest_asyncio

from cellctl.cell import Cell, cell_from_document
from cellctl.io.heartbeat import Heartbeat, next_beat
from cellctl.io.session import TagIO
from cellctl.testing import wait_until
from cellctl.yamlload import parse_yaml
from drivers.base import Reading
from drivers.config import MemoryConfig
from drivers.errors import NotConnected
from drivers.memory import MemoryDriver
from drivers.points import Access, DataType, MemoryPoint

CELL = """\
cell: beats
devices:
  line: {driver: memory}
  press: {driver: memory}
tags:
  line.life:  {device: line, type: uint16, access: rw}
  line.run:   {device: line, type: bool, access: rw}
  press.life: {device: press, type: bool, access: rw}
heartbeat:
  - {tag: line.life, period: 20ms, timeout: 200ms}
  - {tag: press.life, period: 20ms, timeout: 200ms}
"""


class Rig:
    """The cell on two memory devices, connected through a TagIO."""

    def __init__(self) -> None:
        self.cell: Cell = cell_from_document(parse_yaml(CELL.encode(), "cell.yaml"))
        self.line = MemoryDriver(MemoryConfig("line"))
        self.press = MemoryDriver(MemoryConfig("press"))
        tags = ["line.life", "line.run", "press.life"]
        self.io = TagIO(self.cell, {"line": self.line, "press": self.press}, tags)

    def beats(self, driver: MemoryDriver, tag: str) -> list[object]:
        """The values the writer confirmed on `tag`, in order."""
        return [value for key, value in driver.writes if key == tag]


@pytest_asyncio.fixture
async def rig() -> AsyncIterator[Rig]:
    bench = Rig()
    await bench.io.connect()
    yield bench
    await bench.io.close()


def test_next_beat_counts_wraps_and_toggles() -> None:
    assert next_beat(DataType.UINT16, 7) == 8
    assert next_beat(DataType.UINT16, 0xFFFF) == 0
    assert next_beat(DataType.INT16, 0x7FFF) == -0x8000
    assert next_beat(DataType.BOOL, False) is True
    assert next_beat(DataType.BOOL, True) is False


@pytest.mark.asyncio
async def test_a_counter_from_the_device_value_wrapping_and_a_toggling_bit(rig: Rig) -> None:
    rig.line.set_device_value("line.life", 0xFFFE)  # left there by an earlier controller
    rig.press.set_device_value("press.life", True)
    async with Heartbeat(rig.io, rig.cell.heartbeat):
        await wait_until(lambda: len(rig.beats(rig.line, "line.life")) >= 4, 3.0, "4 beats")
        await wait_until(lambda: len(rig.beats(rig.press, "press.life")) >= 4, 3.0, "4 bits")
    assert rig.beats(rig.line, "line.life")[:4] == [0xFFFF, 0, 1, 2]
    assert rig.beats(rig.press, "press.life")[:4] == [False, True, False, True]
    # Only the heartbeat tags were written; the run tag is the recipe's.
    assert {key for key, _ in rig.line.writes} == {"line.life"}


@pytest.mark.asyncio
async def test_beats_come_every_period_and_stop_with_the_writer(rig: Rig) -> None:
    loop = asyncio.get_running_loop()
    written: list[float] = []  # loop time of each beat the device took

    def heard(readings: Mapping[str, Reading]) -> None:
        written.append(loop.time())

    spec = rig.cell.tags["line.life"]
    rig.line.subscribe([MemoryPoint("line.life", "line.life", spec.datatype, Access.RW)], heard)
    written.clear()  # the subscription's first call is the current value, not a beat
    async with Heartbeat(rig.io, rig.cell.heartbeat[:1]):
        await wait_until(lambda: len(written) >= 11, 3.0, "11 beats")
        # A stall of the loop makes the next beat late, never two beats back to back.
        time.sleep(0.05)  # noqa: ASYNC251 -- the fault: a loop blocked for 50 ms
        await wait_until(lambda: len(written) >= 14, 3.0, "3 more")
    gaps = [b - a for a, b in itertools.pairwise(written)]
    assert min(gaps) >= 0.02 - 0.002, gaps  # never faster than the period (20 ms)
    # Stopped: no writer task is left to write again.
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("heartbeat")]


@pytest.mark.asyncio
async def test_an_outage_is_logged_once_never_stops_it_and_beats_resume_with_a_change(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cellctl.io.heartbeat")
    async with Heartbeat(rig.io, rig.cell.heartbeat) as heartbeat:
        await wait_until(lambda: len(rig.beats(rig.press, "press.life")) >= 2, 3.0, "two bits")
        rig.press.fail(NotConnected("press: link down"))
        await wait_until(lambda: "press.life" in heartbeat.failing, 3.0, "the outage seen")
        failed_at = len(rig.beats(rig.line, "line.life"))
        # Ten more periods of the other heartbeat: the press's outage did not stop it.
        await wait_until(
            lambda: len(rig.beats(rig.line, "line.life")) >= failed_at + 10, 3.0, "line beats"
        )
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and r.name == "cellctl.io.heartbeat"
        ]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert "press.life" in warnings[0].getMessage()
        assert "link down" in warnings[0].getMessage()
        # While the link was down, the device side changed the bit: the next beat must still
        # be a change, so the writer reads the device again after an outage.
        held = rig.press.device_value("press.life")
        rig.press.set_device_value("press.life", not held)
        written = len(rig.beats(rig.press, "press.life"))
        rig.press.fail(None)
        await wait_until(
            lambda: len(rig.beats(rig.press, "press.life")) > written, 3.0, "a beat again"
        )
        assert rig.beats(rig.press, "press.life")[written] is held  # != what the device held
        assert heartbeat.failing == {}
    # Only the heartbeat's own records (other loggers may reach caplog, as the drivers' do).
    mine = [r for r in caplog.records if r.name == "cellctl.io.heartbeat"]
    assert [r.getMessage() for r in mine if r.levelno == logging.INFO] == [
        "heartbeat line.life on device line: written every 0.02 s from now on "
        "(the device's timeout: 0.2 s)",
        "heartbeat press.life on device press: written every 0.02 s from now on "
        "(the device's timeout: 0.2 s)",
        "heartbeat press.life written again",
    ]
    assert len([r for r in mine if r.levelno == logging.ERROR]) == 1


@pytest.mark.asyncio
async def test_a_device_down_from_the_start_never_reaches_the_caller(rig: Rig) -> None:
    rig.line.fail(NotConnected("line: link down"))
    async with Heartbeat(rig.io, rig.cell.heartbeat) as heartbeat:
        await wait_until(lambda: "line.life" in heartbeat.failing, 3.0, "the failure seen")
        await wait_until(lambda: len(rig.beats(rig.press, "press.life")) >= 3, 3.0, "press beats")
        assert "link down" in heartbeat.failing["line.life"]
    assert rig.beats(rig.line, "line.life") == []
