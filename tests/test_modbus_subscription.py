"""A Modbus subscription reports exactly the readings that same_reading calls changed."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from drivers.base import Quality, Reading
from drivers.codecs import same_reading
from drivers.modbus.subscription import Subscription
from drivers.points import DataType, ModbusPoint, ModbusTable

POINTS = tuple(
    ModbusPoint(f"p{i}", ModbusTable.HOLDING_REGISTER, i, DataType.UINT16) for i in range(4)
)
# Few values, so that cycles often repeat one: equal values of other types (1, 1.0, True),
# NaN read again, -0.0 against 0.0.
VALUES = st.sampled_from([None, True, False, 1, 0, 1.0, 0.0, -0.0, float("nan"), "a", ""])
READINGS = st.builds(Reading, VALUES, st.just(1.0), st.sampled_from(list(Quality)))
CYCLE = st.lists(READINGS, min_size=len(POINTS), max_size=len(POINTS))


@given(st.lists(CYCLE, min_size=1, max_size=4))
def test_each_cycle_reports_what_same_reading_calls_changed(cycles: list[list[Reading]]) -> None:
    told: list[dict[str, Reading]] = []
    subscription = Subscription("dev", POINTS, told.append)
    places = tuple(range(len(POINTS)))
    last: list[Reading | None] = [None] * len(POINTS)
    for number, readings in enumerate(cycles, 1):
        subscription.deliver(readings, places, number)
        expected = {
            point.name: reading
            for point, reading, before in zip(POINTS, readings, last, strict=True)
            if before is None or not same_reading(before, reading)
        }
        assert (told.pop() if told else {}) == expected
        assert not told
        last = list(readings)
