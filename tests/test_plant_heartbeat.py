"""The plant models as the device PLC watching the controller's heartbeat: never armed before a
first beat, the safe state once when the beats stop, armed again by the next beat. Driven by
explicit ticks on process images (no protocol, no real time)."""

from __future__ import annotations

import pytest

from drivers.points import DataType, MemoryPoint
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantError, PlantModel, SimClock
from drivers.sim.plant.conveyor import Conveyor
from drivers.sim.plant.press import Press
from tests.test_plant_models import TICK, run_for

TIMEOUT = 1.0  # real seconds


def watched(model: type[PlantModel], device: str, speed: float = 1.0) -> PlantModel:
    """A model on memory points named '<device>.<signal>', plus a watched heartbeat counter."""
    points = [
        MemoryPoint(f"{device}.{signal}", signal, datatype)
        for signal, datatype in model.signals.items()
    ]
    points.append(MemoryPoint(f"{device}.heartbeat", "heartbeat", DataType.UINT16))
    plant = model(ProcessImage(device, points), SimClock(speed))
    plant.watch_heartbeat(f"{device}.heartbeat", TIMEOUT)
    return plant


def beat(plant: PlantModel) -> None:
    """What one controller beat does to the image: the counter moves on."""
    tag = f"{plant.image.device}.heartbeat"
    plant.image.accept_client_write(tag, (int(plant.image.get(tag)) + 1) % 0x10000)


def run_conveyor(plant: PlantModel) -> None:
    """What a client writing run and speed does to the image."""
    plant.image.accept_client_write("conveyor.run", True)
    plant.image.accept_client_write("conveyor.speed_rpm", 1200)


def running(plant: PlantModel) -> bool:
    return plant.get("run") is True and plant.get("speed_rpm") == 1200


@pytest.fixture
def conveyor() -> PlantModel:
    return watched(Conveyor, "conveyor")


def test_never_armed_a_hand_write_is_never_overridden(conveyor: PlantModel) -> None:
    run_conveyor(conveyor)  # `cellctl write` with no controller running
    run_for(conveyor, 5 * TIMEOUT)
    assert running(conveyor)
    assert not conveyor.heartbeat_armed


def test_beats_keep_the_conveyor_running(conveyor: PlantModel) -> None:
    run_conveyor(conveyor)
    for _ in range(25):  # 5 s of beats every 200 ms
        beat(conveyor)
        run_for(conveyor, 0.2)
    assert running(conveyor)
    assert conveyor.heartbeat_armed


def test_silent_heartbeat_stops_the_conveyor_once_then_a_beat_rearms(
    conveyor: PlantModel,
) -> None:
    beat(conveyor)
    run_conveyor(conveyor)
    run_for(conveyor, TIMEOUT - 0.1)
    assert running(conveyor)  # not yet: the value changed less than `timeout` ago
    run_for(conveyor, 0.15)
    assert conveyor.get("run") is False and conveyor.get("speed_rpm") == 0
    assert not conveyor.heartbeat_armed
    # Once: a technician starts the belt by hand afterwards, and it keeps running.
    run_conveyor(conveyor)
    run_for(conveyor, 5 * TIMEOUT)
    assert running(conveyor)
    # The next beat arms the watchdog again; silence then trips it again.
    beat(conveyor)
    run_for(conveyor, TICK)
    assert conveyor.heartbeat_armed
    run_for(conveyor, TIMEOUT + 0.05)
    assert conveyor.get("run") is False and conveyor.get("speed_rpm") == 0


def test_the_timeout_is_real_time_at_any_model_speed() -> None:
    fast = watched(Conveyor, "conveyor", speed=4.0)
    beat(fast)
    run_conveyor(fast)
    run_for(fast, 4 * TIMEOUT - 0.2)  # model seconds: 0.95 real seconds
    assert running(fast)
    run_for(fast, 0.4)
    assert fast.get("run") is False


def test_silent_heartbeat_releases_the_press_and_aborts_its_cycle() -> None:
    press = watched(Press, "press")
    press.image.accept_client_write("press.setpoint_kN", 12.0)
    beat(press)
    run_for(press, 0.1)
    press.image.accept_client_write("press.cycle_start", True)  # the last write, then silence
    run_for(press, 0.7)
    assert 0.0 < float(press.get("force_kN")) < 12.0  # ramping
    run_for(press, 0.25)  # 1.05 s after the last beat: before the cycle could end (1.2 s)
    assert press.get("cycle_start") is False
    assert press.get("force_kN") == 0.0
    assert press.get("cycle_done") is False
    assert press.image.take_dirty()["press.cycle_start"] is False  # published to the clients
    run_for(press, 3.0)
    assert press.get("cycles") == 0  # never restarted by itself


def test_a_heartbeat_on_another_device_is_refused() -> None:
    plant = watched(Conveyor, "conveyor")
    with pytest.raises(PlantError, match=r"heartbeat 'press\.heartbeat' is not a tag"):
        plant.watch_heartbeat("press.heartbeat", TIMEOUT)
