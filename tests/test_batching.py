"""Read planning: how points are merged into read blocks, and decoding points out of a block."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.batching import (
    MAX_BITS,
    MAX_REGISTERS,
    ReadBlock,
    decode_point,
    plan,
    plan_reads,
)
from drivers.codecs import encode_registers
from drivers.errors import BadResponse
from drivers.points import DataType, ModbusPoint, ModbusTable, WordOrder

COIL, DI, HR, IR = (
    ModbusTable.COIL,
    ModbusTable.DISCRETE_INPUT,
    ModbusTable.HOLDING_REGISTER,
    ModbusTable.INPUT_REGISTER,
)


def hr(address: int, datatype: DataType = DataType.UINT16, **kw: object) -> ModbusPoint:
    """A holding-register point named after its address."""
    return ModbusPoint(f"hr{address}", HR, address, datatype, **kw)  # type: ignore[arg-type]


def bit(table: ModbusTable, address: int) -> ModbusPoint:
    """A coil or discrete-input point."""
    return ModbusPoint(f"{table.value}{address}", table, address, DataType.BOOL)


def spans(blocks: list[ReadBlock]) -> list[tuple[str, int, int]]:
    """(table, start, count) of each block."""
    return [(b.table.value, b.start, b.count) for b in blocks]


# --- layouts --------------------------------------------------------------------------------


def test_contiguous_registers_make_one_block() -> None:
    points = [hr(0), hr(1, DataType.FLOAT32), hr(3, DataType.INT64), hr(7)]
    blocks = plan_reads(points)
    assert spans(blocks) == [("hr", 0, 8)]
    assert blocks[0].points == tuple(points)


def test_input_order_does_not_matter() -> None:
    points = [hr(7), hr(0), hr(3, DataType.INT64), hr(1, DataType.FLOAT32)]
    assert spans(plan_reads(points)) == [("hr", 0, 8)]
    assert [p.address for p in plan_reads(points)[0].points] == [0, 1, 3, 7]


@pytest.mark.parametrize(
    ("max_gap", "expected"),
    [
        (0, [("hr", 0, 2), ("hr", 5, 1), ("hr", 10, 1)]),
        (2, [("hr", 0, 2), ("hr", 5, 1), ("hr", 10, 1)]),
        (3, [("hr", 0, 6), ("hr", 10, 1)]),
        (4, [("hr", 0, 11)]),
    ],
)
def test_gaps_merge_up_to_max_gap(max_gap: int, expected: list[tuple[str, int, int]]) -> None:
    # Gaps: 2..4 (3 registers) between hr1 and hr5, 6..9 (4 registers) before hr10.
    points = [hr(0, DataType.UINT32), hr(5), hr(10)]
    assert spans(plan_reads(points, max_gap=max_gap)) == expected


def test_bits_of_one_register_and_repeated_points_share_a_block() -> None:
    points = [hr(3, bit=0), hr(3, bit=7), hr(3, bit=15), hr(3, bit=7), hr(3), hr(4)]
    blocks = plan_reads(points)
    assert spans(blocks) == [("hr", 3, 2)]
    assert len(blocks[0].points) == 6


def test_overlapping_points_share_a_block() -> None:
    # A float32 at hr:0 and the low word at hr:1 read on its own as uint16.
    assert spans(plan_reads([hr(0, DataType.FLOAT32), hr(1)])) == [("hr", 0, 2)]
    # A wide point that covers a later narrow one keeps the block's end.
    assert spans(plan_reads([hr(0, DataType.UINT64), hr(1), hr(4)])) == [("hr", 0, 5)]


def test_register_limit_splits_blocks() -> None:
    points = [hr(a) for a in range(300)]
    blocks = plan_reads(points, max_gap=10)
    assert spans(blocks) == [("hr", 0, 125), ("hr", 125, 125), ("hr", 250, 50)]


def test_register_limit_never_splits_a_value() -> None:
    # 124 single registers then a float32 at 124..125: the float goes whole to the next block.
    points = [hr(a) for a in range(124)] + [hr(124, DataType.FLOAT32)]
    assert spans(plan_reads(points)) == [("hr", 0, 124), ("hr", 124, 2)]


def test_bit_limit_splits_blocks() -> None:
    points = [bit(COIL, a) for a in range(4100)]
    assert spans(plan_reads(points)) == [
        ("coil", 0, 2000),
        ("coil", 2000, 2000),
        ("coil", 4000, 100),
    ]


def test_exactly_at_the_limits_is_one_block() -> None:
    assert spans(plan_reads([bit(DI, 0), bit(DI, MAX_BITS - 1)], max_gap=MAX_BITS)) == [
        ("di", 0, MAX_BITS)
    ]
    assert spans(plan_reads([hr(0), hr(MAX_REGISTERS - 1)], max_gap=MAX_REGISTERS)) == [
        ("hr", 0, MAX_REGISTERS)
    ]
    assert len(plan_reads([hr(0), hr(MAX_REGISTERS)], max_gap=MAX_REGISTERS)) == 2


def test_tables_never_merge_and_come_in_table_order() -> None:
    points = [
        ModbusPoint("ir0", IR, 0),
        hr(0),
        bit(DI, 0),
        bit(COIL, 0),
        ModbusPoint("ir1", IR, 1),
        bit(COIL, 1),
    ]
    assert spans(plan_reads(points)) == [("coil", 0, 2), ("di", 0, 1), ("hr", 0, 1), ("ir", 0, 2)]


def test_no_points_no_blocks() -> None:
    assert plan_reads([]) == []


def test_too_wide_point_is_an_error() -> None:
    long_string = ModbusPoint("label", HR, 0, DataType.STRING, length=126)
    with pytest.raises(ValueError, match=r"label \(hr:0\) spans 126 addresses"):
        plan_reads([long_string])
    # Exactly 125 registers is allowed.
    assert len(plan_reads([ModbusPoint("label", HR, 0, DataType.STRING, length=125)])) == 1


def test_negative_gap_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_gap"):
        plan_reads([hr(0)], max_gap=-1)


# --- property: a plan covers every point exactly once and respects the limits ---------------

point_strategy = st.one_of(
    st.builds(bit, st.sampled_from([COIL, DI]), st.integers(0, 5000)),
    st.builds(
        lambda table, address, datatype, length: ModbusPoint(
            "p", table, address, datatype, length=length
        ),
        st.sampled_from([HR, IR]),
        st.integers(0, 600),
        st.sampled_from(list(DataType)),
        st.integers(1, 125),
    ),
    st.builds(
        lambda table, address, b: ModbusPoint("b", table, address, DataType.BOOL, bit=b),
        st.sampled_from([HR, IR]),
        st.integers(0, 600),
        st.integers(0, 15),
    ),
)


@given(points=st.lists(point_strategy, max_size=60), max_gap=st.integers(0, 200))
def test_plan_properties(points: list[ModbusPoint], max_gap: int) -> None:
    blocks = plan_reads(points, max_gap=max_gap)
    # Every point is in exactly one block (compared by identity: equal points may repeat).
    placed = [id(p) for b in blocks for p in b.points]
    assert sorted(placed) == sorted(id(p) for p in points)
    table_rank = list(ModbusTable)
    for block in blocks:
        limit = MAX_BITS if block.table.is_bit_table else MAX_REGISTERS
        assert 1 <= block.count <= limit
        for point in block.points:
            assert point.table is block.table
            assert block.start <= point.address and point.end <= block.end
        # The block is exactly the span of its points: no address read for nothing at the ends.
        assert block.start == min(p.address for p in block.points)
        assert block.end == max(p.end for p in block.points)
        # No hole inside the block larger than max_gap.
        covered_to = block.start
        for point in sorted(block.points, key=lambda p: p.address):
            assert point.address - covered_to <= max_gap
            covered_to = max(covered_to, point.end)
    # Table order, then address order; blocks of one table overlap only where overlapping
    # points could not share one request without passing the request limit.
    for before, after in itertools.pairwise(blocks):
        assert table_rank.index(before.table) <= table_rank.index(after.table)
        if before.table is after.table:
            assert before.start <= after.start
            if before.end > after.start:
                limit = MAX_BITS if before.table.is_bit_table else MAX_REGISTERS
                assert max(before.end, after.end) - before.start > limit
    # The plan depends on the points, not on the order they were given in.
    assert spans(plan_reads(list(reversed(points)), max_gap=max_gap)) == spans(blocks)


# --- decode_point ---------------------------------------------------------------------------


def test_decode_points_out_of_a_register_block() -> None:
    speed = hr(10)
    force = hr(11, DataType.FLOAT32, word_order=WordOrder.CDAB)
    flag = hr(13, DataType.BOOL, bit=4)
    label = ModbusPoint("label", HR, 14, DataType.STRING, length=2)
    (block,) = plan_reads([speed, force, flag, label])
    data = [
        1200,
        *encode_registers(DataType.FLOAT32, 41.5, WordOrder.CDAB),
        0b1_0000,
        *encode_registers(DataType.STRING, "ok", length=2),
    ]
    assert decode_point(speed, block, data) == 1200
    assert decode_point(force, block, data) == 41.5
    assert decode_point(flag, block, data) is True
    assert decode_point(label, block, data) == "ok"


def test_decode_bits_out_of_a_padded_bit_block() -> None:
    points = [bit(DI, 3), bit(DI, 4), bit(DI, 6)]
    (block,) = plan_reads(points, max_gap=1)
    assert (block.start, block.count) == (3, 4)
    # pymodbus pads bit responses to whole bytes: 8 values for a count of 4.
    data = [True, False, False, True, False, False, False, False]
    assert [decode_point(p, block, data) for p in points] == [True, False, True]


def test_short_response_is_bad_response() -> None:
    point = hr(1, DataType.FLOAT32)
    (block,) = plan_reads([hr(0), point])
    with pytest.raises(BadResponse, match=r"hr:1: response has 2 values"):
        decode_point(point, block, [0, 0])


def test_undecodable_registers_name_the_address() -> None:
    label = ModbusPoint("label", IR, 5, DataType.STRING, length=1)
    (block,) = plan_reads([label])
    with pytest.raises(BadResponse, match=r"ir:5: .*UTF-8"):
        decode_point(label, block, [0xFFFF])


def test_point_outside_the_block_is_a_programming_error() -> None:
    (block,) = plan_reads([hr(0)])
    with pytest.raises(ValueError, match="hr:1"):
        decode_point(hr(1), block, [0, 0])
    with pytest.raises(ValueError):
        decode_point(ModbusPoint("ir0", IR, 0), block, [0])


# --- a block decoded whole: the same values and errors as decode_point, point by point -------

register_words = st.one_of(
    st.integers(0, 0xFFFF),
    st.sampled_from([0, 0x7F80, 0xFF80, 0x7FC0, 0x8000, 0x0001, 0xC3A9]),
)


@given(
    points=st.lists(point_strategy, min_size=1, max_size=30),
    word_order=st.sampled_from(list(WordOrder)),
    data=st.data(),
)
def test_block_decode_matches_decode_point(
    points: list[ModbusPoint], word_order: WordOrder, data: st.DataObject
) -> None:
    points = [dataclasses.replace(p, word_order=word_order) for p in points]
    for block in plan_reads(points, max_gap=3):
        if block.table.is_bit_table:
            answer: list[int] | list[bool] = data.draw(
                st.lists(st.booleans(), min_size=block.count, max_size=block.count + 7)
            )
        else:
            answer = data.draw(st.lists(register_words, min_size=block.count, max_size=block.count))
            # Sometimes short, or with a word that is not 16-bit: point by point then.
            answer = data.draw(
                st.sampled_from([answer, answer[: len(answer) // 2], [*answer[:-1], 0x10000]])
            )
        decoded = block.decode(answer)
        assert len(decoded) == len(block.points)
        for point, value in zip(block.points, decoded, strict=True):
            try:
                expected: object = decode_point(point, block, answer)
            except BadResponse as err:
                assert isinstance(value, BadResponse)
                assert str(value) == str(err)
                continue
            assert type(value) is type(expected)
            assert repr(value) == repr(expected)


def test_read_plan_places_points_in_block_order() -> None:
    speed, force, run = hr(10), hr(11, DataType.FLOAT32), bit(COIL, 0)
    read_plan = plan([force, speed, run, hr(10)])
    # Blocks in table order; equal points once.
    assert read_plan.points == (run, speed, force)
    assert [b.points for b in read_plan.blocks] == [(run,), (speed, force)]
    assert read_plan.places([speed, run, force, speed]) == (1, 0, 2, 1)
    assert read_plan.places([speed, hr(20)]) is None
