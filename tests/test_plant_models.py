"""Plant models driven by explicit ticks on process images (no protocol, no real time)."""

from __future__ import annotations

import asyncio
import math

import pytest

from drivers.points import DataType, MemoryPoint, ModbusPoint, ModbusTable, Point
from drivers.sim.image import ProcessImage
from drivers.sim.plant.base import PlantError, PlantModel, SimClock
from drivers.sim.plant.conveyor import Conveyor
from drivers.sim.plant.inspection import Inspection
from drivers.sim.plant.press import Press
from drivers.sim.plant.registry import MODELS, create_model
from drivers.sim.plant.robot import Robot

TICK = 0.01


def image_for(model: type[PlantModel], device: str) -> ProcessImage:
    """An image with one memory point per signal of the model, named '<device>.<signal>'."""
    points = [
        MemoryPoint(f"{device}.{signal}", signal, datatype)
        for signal, datatype in model.signals.items()
    ]
    return ProcessImage(device, points)


def run_for(model: PlantModel, seconds: float, dt: float = TICK) -> None:
    """Tick the model for `seconds` of model time in steps of dt."""
    for _ in range(round(seconds / dt)):
        model.tick(dt)


# --- conveyor ---------------------------------------------------------------------------


@pytest.fixture
def conveyor() -> Conveyor:
    """A conveyor on Modbus points named as in the demo cell, light curtain under 'safety.'."""
    points: list[Point] = [
        ModbusPoint("conveyor.run", ModbusTable.COIL, 0, DataType.BOOL),
        ModbusPoint("conveyor.speed_rpm", ModbusTable.HOLDING_REGISTER, 0),
        ModbusPoint("conveyor.part_at_station", ModbusTable.DISCRETE_INPUT, 1, DataType.BOOL),
        ModbusPoint("conveyor.parts_delivered", ModbusTable.INPUT_REGISTER, 0),
        ModbusPoint("safety.light_curtain_ok", ModbusTable.DISCRETE_INPUT, 7, DataType.BOOL),
        ModbusPoint("conveyor.fault", ModbusTable.DISCRETE_INPUT, 2, DataType.BOOL),
    ]
    return Conveyor(ProcessImage("conveyor", points), SimClock())


def start(conveyor: Conveyor, rpm: int = 1200) -> None:
    """What a client writing run and speed does to the image."""
    conveyor.image.accept_client_write("conveyor.run", True)
    conveyor.image.accept_client_write("conveyor.speed_rpm", rpm)


def test_conveyor_powers_up_with_the_light_curtain_ok(conveyor: Conveyor) -> None:
    assert conveyor.image.take_dirty() == {"safety.light_curtain_ok": True}


def test_conveyor_stands_still_when_not_running(conveyor: Conveyor) -> None:
    run_for(conveyor, 10.0)
    assert conveyor.get("part_at_station") is False
    conveyor.image.accept_client_write("conveyor.run", True)  # running, but speed 0
    run_for(conveyor, 10.0)
    assert conveyor.get("parts_delivered") == 0


def test_conveyor_delivers_a_part_every_interval(conveyor: Conveyor) -> None:
    start(conveyor)
    run_for(conveyor, 1.4)
    assert conveyor.get("part_at_station") is False
    run_for(conveyor, 0.2)
    assert conveyor.get("part_at_station") is True
    assert conveyor.image.take_dirty()["conveyor.parts_delivered"] == 1
    # The part is taken after the dwell, and the next one starts then.
    run_for(conveyor, Conveyor.PICK_DWELL + 0.05)
    assert conveyor.get("part_at_station") is False
    run_for(conveyor, 10.0 - 2.65)
    # Arrivals at 1.5, 4.0, 6.5 and 9.0 s: one every interval + dwell.
    assert conveyor.get("parts_delivered") == 4


def test_conveyor_speed_scales_the_interval(conveyor: Conveyor) -> None:
    start(conveyor, rpm=2400)
    run_for(conveyor, 0.8)
    assert conveyor.get("part_at_station") is True


def test_conveyor_fault_stops_parts(conveyor: Conveyor) -> None:
    start(conveyor)
    conveyor.faults()["fault"](True)
    assert conveyor.get("fault") is True
    run_for(conveyor, 5.0)
    assert conveyor.get("parts_delivered") == 0
    conveyor.faults()["fault"](False)
    run_for(conveyor, 1.6)
    assert conveyor.get("parts_delivered") == 1


def test_conveyor_light_curtain_fault(conveyor: Conveyor) -> None:
    conveyor.faults()["light-curtain"](True)
    assert conveyor.get("light_curtain_ok") is False
    conveyor.faults()["light-curtain"](False)
    assert conveyor.get("light_curtain_ok") is True


def test_conveyor_counter_wraps_like_a_16_bit_register(conveyor: Conveyor) -> None:
    conveyor.set("parts_delivered", 0xFFFF)
    start(conveyor)
    run_for(conveyor, 1.6)
    assert conveyor.get("parts_delivered") == 0


# --- press ------------------------------------------------------------------------------


@pytest.fixture
def press() -> Press:
    """A press with setpoint 12 kN."""
    press = Press(image_for(Press, "press"), SimClock())
    press.image.accept_client_write("press.setpoint_kN", 12.0)
    return press


def test_press_ramps_holds_and_reports_done(press: Press) -> None:
    run_for(press, 1.0)
    assert press.get("force_kN") == 0.0  # no edge, no cycle
    press.image.accept_client_write("press.cycle_start", True)
    run_for(press, 0.5)
    assert math.isclose(float(press.get("force_kN")), 6.0, abs_tol=0.2)
    run_for(press, 0.55)
    assert press.get("force_kN") == 12.0
    assert press.get("cycle_done") is False  # still holding
    run_for(press, Press.HOLD_TIME)
    assert press.get("cycle_done") is True
    assert press.get("cycles") == 1
    run_for(press, 2.0)
    assert press.get("cycles") == 1  # one edge, one cycle
    assert press.get("force_kN") == 12.0


def test_press_cycle_start_false_resets(press: Press) -> None:
    press.image.accept_client_write("press.cycle_start", True)
    run_for(press, 1.5)
    press.image.accept_client_write("press.cycle_start", False)
    press.tick(TICK)
    assert press.get("cycle_done") is False
    assert press.get("force_kN") == 0.0
    press.image.accept_client_write("press.cycle_start", True)
    run_for(press, 1.5)
    assert press.get("cycles") == 2


def test_press_fault_keeps_force_at_zero_and_no_done(press: Press) -> None:
    press.image.accept_client_write("press.cycle_start", True)
    run_for(press, 0.5)
    press.faults()["fault"](True)
    assert press.get("fault") is True
    run_for(press, 2.0)
    assert press.get("force_kN") == 0.0
    assert press.get("cycle_done") is False
    # Clearing the fault does not resume: a new cycle needs a new edge.
    press.faults()["fault"](False)
    run_for(press, 2.0)
    assert press.get("cycles") == 0
    press.image.accept_client_write("press.cycle_start", False)
    press.tick(TICK)
    press.image.accept_client_write("press.cycle_start", True)
    run_for(press, 1.5)
    assert press.get("cycles") == 1


def test_press_ignores_a_nonsense_setpoint(press: Press) -> None:
    press.image.accept_client_write("press.setpoint_kN", math.nan)
    press.image.accept_client_write("press.cycle_start", True)
    run_for(press, 1.5)
    assert press.get("force_kN") == 0.0


# --- robot ------------------------------------------------------------------------------


@pytest.fixture
def robot() -> Robot:
    """A robot driven by explicit ticks."""
    return Robot(image_for(Robot, "robot"), SimClock())


@pytest.mark.asyncio
async def test_robot_pick_starts_a_move_that_ends_in_model_time(robot: Robot) -> None:
    assert await robot.methods()["Pick"](3) is True
    assert robot.get("busy") is True
    assert robot.get("position") == 0.0
    run_for(robot, Robot.MOVE_TIME / 2)
    assert robot.get("busy") is True
    run_for(robot, Robot.MOVE_TIME)
    assert robot.get("busy") is False
    assert robot.get("position") == 3 * Robot.SLOT_PITCH_MM
    assert await robot.methods()["Place"](1) is True
    run_for(robot, Robot.MOVE_TIME * 1.5)
    assert robot.get("position") == Robot.SLOT_PITCH_MM


@pytest.mark.asyncio
async def test_robot_refuses_while_busy(robot: Robot) -> None:
    assert await robot.methods()["Pick"](2) is True
    assert await robot.methods()["Place"](5) is False
    run_for(robot, Robot.MOVE_TIME * 1.5)
    assert robot.get("position") == 2 * Robot.SLOT_PITCH_MM


@pytest.mark.asyncio
async def test_robot_faulted_refuses_a_move(robot: Robot) -> None:
    robot.faults()["fault"](True)
    assert robot.get("fault") is True
    assert await robot.methods()["Pick"](1) is False
    assert robot.get("busy") is False


@pytest.mark.asyncio
async def test_robot_fault_during_a_move_stops_it(robot: Robot) -> None:
    assert await robot.methods()["Pick"](4) is True
    run_for(robot, Robot.MOVE_TIME / 4)
    robot.faults()["fault"](True)
    run_for(robot, Robot.MOVE_TIME * 2)
    assert robot.get("position") == 0.0
    assert robot.get("busy") is False


@pytest.mark.asyncio
async def test_robot_unknown_slot_is_a_value_error(robot: Robot) -> None:
    with pytest.raises(ValueError, match="robot: no slot 99"):
        await robot.methods()["Pick"](99)


@pytest.mark.asyncio
async def test_robot_gripper_fault_refuses_pick_only(robot: Robot) -> None:
    robot.faults()["gripper"](True)
    with pytest.raises(ValueError, match="robot: no slot 99"):  # a bad slot is still bad
        await robot.methods()["Pick"](99)
    assert await robot.methods()["Pick"](1) is False
    assert robot.get("busy") is False and robot.get("fault") is False
    assert await robot.methods()["Place"](2) is True  # Place still moves


# --- inspection -------------------------------------------------------------------------


def inspection() -> Inspection:
    """A fresh inspection station."""
    return Inspection(image_for(Inspection, "inspection"), SimClock(speed=1000.0))


def trigger(station: Inspection) -> float:
    """Raise the trigger, tick until done, and return the measurement."""
    station.image.accept_client_write("inspection.trigger", True)
    run_for(station, Inspection.MEASURE_TIME - 0.05)
    assert station.get("done") is False
    run_for(station, 0.06)
    assert station.get("done") is True
    return float(station.get("measured_mm"))


def reset(station: Inspection) -> None:
    """Drop the trigger; done goes false."""
    station.image.accept_client_write("inspection.trigger", False)
    station.tick(TICK)
    assert station.get("done") is False


def test_inspection_measures_near_nominal_and_passes() -> None:
    station = inspection()
    for _ in range(20):
        value = trigger(station)
        assert abs(value - Inspection.NOMINAL_MM) <= Inspection.TOLERANCE_MM
        assert station.get("passed") is True
        reset(station)


def test_inspection_is_repeatable_and_varies() -> None:
    first, second = inspection(), inspection()
    values = []
    for _ in range(5):
        values.append(trigger(first))
        reset(first)
        assert trigger(second) == values[-1]
        reset(second)
    assert len(set(values)) == 5


def test_inspection_needs_a_new_edge() -> None:
    station = inspection()
    value = trigger(station)
    run_for(station, 2.0)  # trigger still high: no new measurement
    assert station.get("measured_mm") == value


def test_inspection_fault_fails_parts() -> None:
    station = inspection()
    station.faults()["fault"](True)
    for _ in range(10):
        value = trigger(station)
        assert abs(value - Inspection.NOMINAL_MM) > Inspection.TOLERANCE_MM
        assert station.get("passed") is False
        reset(station)
    station.faults()["fault"](False)
    trigger(station)
    assert station.get("passed") is True


@pytest.mark.asyncio
async def test_inspection_measure_method() -> None:
    station = inspection()
    value = await asyncio.wait_for(station.methods()["Measure"](), timeout=2.0)
    assert isinstance(value, float)
    assert abs(value - Inspection.NOMINAL_MM) <= Inspection.TOLERANCE_MM
    assert station.get("measured_mm") == value
    assert station.get("passed") is True


# --- registry and binding ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(MODELS))
def test_registry_creates_each_model(name: str) -> None:
    model_class = MODELS[name]
    model = create_model(name, image_for(model_class, name), SimClock())
    assert type(model) is model_class
    assert model.model == name


def test_registry_names_unknown_models_and_lists_known_ones() -> None:
    with pytest.raises(PlantError) as caught:
        create_model("lathe", image_for(Robot, "cnc"), SimClock())
    message = str(caught.value)
    assert "'lathe'" in message
    assert "'cnc'" in message
    assert "conveyor, inspection, press, robot" in message


def test_binding_names_the_missing_signal() -> None:
    points = [MemoryPoint("robot.busy", "busy", DataType.BOOL)]
    with pytest.raises(PlantError) as caught:
        create_model("robot", ProcessImage("robot", points), SimClock())
    message = str(caught.value)
    assert "'fault'" in message
    assert "'position'" in message
    assert "'busy'" not in message


def test_signal_map_binds_differently_named_tags() -> None:
    points = [
        MemoryPoint("arm.is_moving", "a", DataType.BOOL),
        MemoryPoint("arm.error", "b", DataType.BOOL),
        MemoryPoint("arm.x_mm", "c", DataType.FLOAT64),
    ]
    signal_map = {"busy": "arm.is_moving", "fault": "arm.error", "position": "arm.x_mm"}
    model = create_model("robot", ProcessImage("arm", points), SimClock(), signal_map)
    model.faults()["fault"](True)
    assert model.image.get("arm.error") is True
