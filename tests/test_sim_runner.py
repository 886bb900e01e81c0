"""SimRunner: ticks models in model time, publishes changes, survives a broken model."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import ClassVar

import pytest
import pytest_asyncio

from cellctl.testing import wait_until
from drivers.base import Value
from drivers.points import DataType, MemoryPoint
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantModel, SimClock
from drivers.sim.plant.conveyor import Conveyor
from drivers.sim.runner import SimRunner

SPEED = 50.0


class RecordingServer:
    """A SimServer that keeps what it was asked to publish (a test double of our protocol)."""

    def __init__(self) -> None:
        self.published: list[tuple[str, dict[str, Value]]] = []
        self.fail = False

    @property
    def endpoint(self) -> str:
        """Not a network endpoint."""
        return "recording"

    async def prepare(self) -> None:
        """Nothing to build."""

    async def start(self) -> None:
        """Nothing to open."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def publish(self, device: str, values: dict[str, Value]) -> None:
        """Record the values, or fail like a server whose store rejects them."""
        if self.fail:
            raise RuntimeError("store rejected the values")
        self.published.append((device, dict(values)))

    def latest(self, device: str, tag: str) -> Value | None:
        """The last value published for a tag, or None."""
        for published_device, values in reversed(self.published):
            if published_device == device and tag in values:
                return values[tag]
        return None


class Clockwork(PlantModel):
    """Adds up the model time it is given; raises in tick while `broken`."""

    model: ClassVar[str] = "clockwork"
    signals: ClassVar[dict[str, DataType]] = {"elapsed": DataType.FLOAT64}
    broken = False

    def tick(self, dt: float) -> None:
        """Accumulate dt."""
        if self.broken:
            raise RuntimeError("gearbox jammed")
        self.set("elapsed", float(self.get("elapsed")) + dt)


def clockwork(device: str, clock: SimClock) -> Clockwork:
    """A Clockwork on its own image."""
    image = ProcessImage(device, [MemoryPoint(f"{device}.elapsed", "e", DataType.FLOAT64)])
    return Clockwork(image, clock)


@pytest_asyncio.fixture
async def runner() -> AsyncIterator[SimRunner]:
    """A runner at SPEED× with a 5 ms tick, stopped after the test."""
    runner = SimRunner(SimClock(SPEED), tick=0.005)
    try:
        yield runner
    finally:
        await runner.stop()


@pytest.mark.asyncio
async def test_runner_advances_models_in_model_time(runner: SimRunner) -> None:
    model = clockwork("a", runner.clock)
    server = RecordingServer()
    runner.add(model, server)
    started = time.monotonic()
    await runner.start()
    assert runner.running
    await wait_until(lambda: float(model.get("elapsed")) >= 5.0)
    real = time.monotonic() - started
    # Model time is real time × speed: 5 model seconds cannot pass in less than 0.1 s.
    assert real >= 5.0 / SPEED
    assert real < 3.0
    # What was published is what the model holds.
    await runner.stop()
    assert not runner.running
    assert server.latest("a", "a.elapsed") == model.get("elapsed")


@pytest.mark.asyncio
async def test_runner_publishes_only_changes(runner: SimRunner) -> None:
    conveyor = Conveyor(
        ProcessImage(
            "conveyor",
            [
                MemoryPoint(f"conveyor.{signal}", signal, datatype)
                for signal, datatype in Conveyor.signals.items()
            ],
        ),
        runner.clock,
    )
    server = RecordingServer()
    runner.add(conveyor, server)
    await runner.start()
    await wait_until(lambda: len(server.published) >= 1)
    assert server.published[0] == ("conveyor", {"conveyor.light_curtain_ok": True})
    # Nothing changes while the belt stands still or a part travels: no publishes until it
    # arrives. (Client writes are not published back: the server already holds them.)
    conveyor.image.accept_client_write("conveyor.speed_rpm", 1200)
    conveyor.image.accept_client_write("conveyor.run", True)
    await wait_until(lambda: len(server.published) >= 2)
    assert server.published[1] == (
        "conveyor",
        {"conveyor.part_at_station": True, "conveyor.parts_delivered": 1},
    )
    # A fault raised between ticks goes out with the next tick.
    conveyor.faults()["light-curtain"](True)
    await wait_until(lambda: server.latest("conveyor", "conveyor.light_curtain_ok") is False)


@pytest.mark.asyncio
async def test_a_broken_model_is_logged_once_and_the_others_run_on(
    runner: SimRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.sim")
    broken = clockwork("broken", runner.clock)
    broken.broken = True
    healthy = clockwork("healthy", runner.clock)
    server = RecordingServer()
    runner.add(broken, server)
    runner.add(healthy, server)
    await runner.start()
    await wait_until(lambda: float(healthy.get("elapsed")) >= 2.0)
    assert broken.get("elapsed") == 0.0
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1
    assert "broken" in failures[0].getMessage()
    assert "clockwork" in failures[0].getMessage()
    assert failures[0].exc_info is not None
    broken.broken = False
    await wait_until(lambda: float(broken.get("elapsed")) > 0.0)
    await wait_until(lambda: any("runs again" in r.getMessage() for r in caplog.records))


@pytest.mark.asyncio
async def test_a_failing_publish_does_not_stop_the_runner(
    runner: SimRunner, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="drivers.sim")
    model = clockwork("a", runner.clock)
    server = RecordingServer()
    server.fail = True
    runner.add(model, server)
    await runner.start()
    await wait_until(lambda: float(model.get("elapsed")) >= 2.0)
    assert server.published == []
    assert sum("publish to recording failed" in r.getMessage() for r in caplog.records) == 1
    server.fail = False
    await wait_until(lambda: len(server.published) > 0)
    assert runner.running


@pytest.mark.asyncio
async def test_models_added_while_running_are_ticked(runner: SimRunner) -> None:
    await runner.start()
    await runner.start()  # a second start is a no-op
    model = clockwork("late", runner.clock)
    server = RecordingServer()
    runner.add(model, server)
    await wait_until(lambda: server.latest("late", "late.elapsed") is not None)


@pytest.mark.asyncio
async def test_stop_ends_the_loop(runner: SimRunner) -> None:
    model = clockwork("a", runner.clock)
    runner.add(model, RecordingServer())
    await runner.start()
    await wait_until(lambda: float(model.get("elapsed")) > 0.0)
    await runner.stop()
    assert not runner.running
    assert not [t for t in asyncio.all_tasks() if t.get_name() == "sim-runner"]
    await runner.stop()  # a second stop is a no-op


def test_tick_must_be_positive() -> None:
    with pytest.raises(ValueError, match="tick"):
        SimRunner(SimClock(), tick=0)


def test_localhost_and_127_0_0_1_on_one_port_are_one_simulated_gateway(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The cell file's rules treat both spellings as one gateway; so must the simulators."""
    from cellctl.cell import load_cell
    from cellctl.io.sim import CellSimulator

    cell_file = tmp_path / "cell.yaml"
    cell_file.write_text(
        "cell: g\ndevices:\n"
        "  a: {driver: modbus-tcp, host: localhost, port: 5502, unit: 1}\n"
        "  b: {driver: modbus-tcp, host: 127.0.0.1, port: 5502, unit: 2}\n"
        "tags:\n  a.x: {device: a, address: 'hr:0'}\n  b.x: {device: b, address: 'hr:0'}\n",
        encoding="utf-8",
    )
    simulator = CellSimulator(load_cell(cell_file))
    assert simulator.servers["a"] is simulator.servers["b"]
