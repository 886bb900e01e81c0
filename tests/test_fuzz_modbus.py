"""Fuzzing what the Modbus driver does with the bytes of an answer: pymodbus's framer inside
the very clients the driver builds (drivers/modbus/line.py make_client, with the driver's
AnswerDecoder), then the driver's check that an answer is its request's (Ask.mismatch, and
the transaction id on TCP as ModbusBus.exchange checks it) and the read block's decoding into
values (ReadBlock.decode).

Property: the bytes, in any chunks, give the client nothing yet or a PDU, and raise nothing
(an exception there would be raised inside the transport's data_received: asyncio would log
a traceback and drop the connection). A PDU the driver's checks let through decodes to a
value of every point's type (a string may still be bad text: a BadResponse reading); one
they refuse is a failed try with a reason. Servers that send such bytes over a real socket
are hil_tests/test_hostile_devices.py's.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from pymodbus.client import ModbusBaseClient
from pymodbus.pdu import ModbusPDU

from drivers.batching import ReadBlock, plan
from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits
from drivers.errors import BadResponse, modbus_exception_text
from drivers.modbus.ask import READ_FC, AnswerDecoder, Ask
from drivers.modbus.line import make_client
from drivers.points import DataType, ModbusPoint, ModbusTable, WordOrder
from tests.fuzz_corpus import cases

UNIT = 1
TID = 7  # the transaction id of the request the answer is for (TCP)
# Points of every kind on each table: the blocks the driver's poll would read.
POINTS = [
    ModbusPoint("c0", ModbusTable.COIL, 0),
    ModbusPoint("c9", ModbusTable.COIL, 9),
    ModbusPoint("d3", ModbusTable.DISCRETE_INPUT, 3),
    ModbusPoint("h0", ModbusTable.HOLDING_REGISTER, 0, DataType.FLOAT32),
    ModbusPoint("h2", ModbusTable.HOLDING_REGISTER, 2, DataType.STRING, length=2),
    ModbusPoint("h4", ModbusTable.HOLDING_REGISTER, 4, DataType.BOOL, bit=15),
    ModbusPoint("h5", ModbusTable.HOLDING_REGISTER, 5, DataType.INT64, word_order=WordOrder.BADC),
    ModbusPoint("i0", ModbusTable.INPUT_REGISTER, 0, DataType.UINT16),
    ModbusPoint("i1", ModbusTable.INPUT_REGISTER, 1, DataType.FLOAT64, word_order=WordOrder.DCBA),
]
BLOCKS = {block.table: block for block in plan(POINTS, max_gap=10).blocks}
READS = [(Ask(READ_FC[table], block.start, block.count), block) for table, block in BLOCKS.items()]
WRITES: list[tuple[Ask, ReadBlock | None]] = [
    (Ask(5, 9, values=(1,)), None),
    (Ask(6, 4, values=(0x8000,)), None),
    (Ask(16, 0, 2, (0x4226, 0)), None),
]
ASKS = READS + WRITES


class Clients:
    """The driver's two pymodbus clients (TCP and RTU), never connected: only their receiving
    path runs, fed the bytes as the transport would feed them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        limits = RequestLimits(timeout=0.1, retries=0)

        async def build() -> dict[str, ModbusBaseClient]:
            # make_client needs the running loop, as pymodbus does.
            def ignore(*_: Any) -> Any:
                return _[-1] if _ else None

            tcp = ModbusTcpConfig("fuzz", host="127.0.0.1", port=1, unit=UNIT, limits=limits)
            rtu = ModbusRtuConfig("fuzz", port="/dev/null-fuzz", unit=UNIT, limits=limits)
            return {
                "tcp": make_client(tcp, limits, ignore, ignore, AnswerDecoder()),
                "rtu": make_client(rtu, limits, ignore, ignore, AnswerDecoder()),
            }

        self.clients = self.loop.run_until_complete(build())

    def frame(self, framer: str, pdu: bytes, unit: int = UNIT, tid: int = TID) -> bytes:
        """`pdu` (function code and data) in the framer's frame: MBAP header, or unit and CRC."""
        return bytes(self.clients[framer].ctx.framer.encode(pdu, unit, tid))

    def receive(self, framer: str, chunks: list[bytes]) -> ModbusPDU | None:
        """Hand the chunks to the client as its transport would, after a request for UNIT (and
        TID); the PDU it settles the request with, or None."""
        ctx = self.clients[framer].ctx
        ctx.response_future = self.loop.create_future()
        ctx.request_dev_id = UNIT
        ctx.request_transaction_id = TID if framer == "tcp" else 0
        ctx.recv_buffer = b""
        for chunk in chunks:
            ctx.datagram_received(chunk, None)
            if ctx.response_future.done():
                pdu: ModbusPDU = ctx.response_future.result()
                return pdu
        return None

    def close(self) -> None:
        """Close the clients and their loop."""
        for client in self.clients.values():
            client.close()
        self.loop.close()


@pytest.fixture(scope="module")
def clients() -> Iterator[Clients]:
    """The driver's clients, built once for the module."""
    made = Clients()
    yield made
    made.close()


def answer(
    clients: Clients, framer: str, ask: Ask, block: ReadBlock | None, chunks: list[bytes]
) -> None:
    """What the driver makes of an answer: a PDU checked against the request, then decoded."""
    pdu = clients.receive(framer, chunks)
    if pdu is None:
        _count("no answer yet")
        return  # nothing complete for this request yet: the request times out, a named error
    problem = ask.mismatch(pdu)
    if problem is None and framer == "tcp" and pdu.transaction_id != TID:
        problem = "another transaction's answer"  # as ModbusBus.exchange refuses it
    if problem is not None:
        _count("refused")
        assert isinstance(problem, str) and problem
        return
    _count("taken")
    if pdu.isError():
        assert modbus_exception_text(int(pdu.exception_code))
        return
    if block is None:
        return  # a write's echo that matches: confirmed
    data = pdu.bits if block.table.is_bit_table else pdu.registers
    for point, value in zip(block.points, block.decode(data), strict=True):
        if isinstance(value, BadResponse):
            # The size was checked: only a string's bytes can still be bad.
            assert point.datatype is DataType.STRING, (point, value)
        else:
            assert isinstance(value, bool | int | float | str), (point, value)


def _count(outcome: str) -> None:
    """Count an outcome in hypothesis's statistics (--hypothesis-show-statistics): most
    examples must reach the checks and the decoding, not stop at the framer."""
    if currently_in_test_context():
        event(outcome)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given offsets (as TCP segments or a serial adaptor's bursts)."""
    points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [data]


@st.composite
def pdus(draw: st.DrawFn, ask: Ask) -> bytes:
    """An answer's PDU: well-formed for the request mostly, then bent (another function code,
    an exception, a byte count that lies, too few or too many bytes)."""
    fc = ask.function
    if fc in (1, 2, 3, 4):
        size = (ask.count + 7) // 8 if fc in (1, 2) else 2 * ask.count
        payload = draw(st.binary(min_size=size, max_size=size))
        pdu = bytes([fc, size]) + payload
    elif fc in (5, 6):
        value = (0xFF00 if ask.values[0] else 0) if fc == 5 else ask.values[0]
        pdu = bytes([fc]) + ask.address.to_bytes(2, "big") + value.to_bytes(2, "big")
    else:
        pdu = bytes([fc]) + ask.address.to_bytes(2, "big") + ask.count.to_bytes(2, "big")
    bends = ["none", "none", "fc", "exception", "count", "size", "cut", "grow", "byte"]
    bend = draw(st.sampled_from(bends))
    if bend == "fc":
        pdu = bytes([draw(st.integers(0, 255))]) + pdu[1:]
    elif bend == "exception":
        pdu = bytes(
            [draw(st.sampled_from([fc | 0x80, 0x80, 0xFF, 0x81])), draw(st.integers(0, 255))]
        )
    elif bend == "size" and fc in (1, 2, 3, 4):  # well formed, but more or fewer values
        size = draw(st.integers(0, 2 * ask.count + 4))
        pdu = bytes([fc, size]) + draw(st.binary(min_size=size, max_size=size))
    elif bend == "count" and len(pdu) > 1:
        pdu = pdu[:1] + bytes([draw(st.integers(0, 255))]) + pdu[2:]
    elif bend == "cut":
        pdu = pdu[: draw(st.integers(0, len(pdu)))]
    elif bend == "grow":
        pdu += draw(st.binary(min_size=1, max_size=8))
    elif bend == "byte":
        at = draw(st.integers(0, len(pdu) - 1))
        pdu = pdu[:at] + bytes([draw(st.integers(0, 255))]) + pdu[at + 1 :]
    return pdu


@st.composite
def frames(draw: st.DrawFn, clients: Clients, framer: str, ask: Ask) -> bytes:
    """A frame around an answer (sometimes for another unit or transaction, sometimes with
    junk before or after or bytes flipped), or bytes that are no frame at all."""
    shape = draw(st.sampled_from(["frame"] * 6 + ["other", "junk", "flip", "raw"]))
    if shape == "raw":
        return draw(st.binary(max_size=40))
    pdu = draw(pdus(ask))
    if shape == "other":
        unit = draw(st.sampled_from([0, 2, 247, 255]))
        return clients.frame(framer, pdu, unit, draw(st.sampled_from([TID, TID + 1, 0])))
    frame = clients.frame(framer, pdu)
    if shape == "junk":
        return draw(st.binary(max_size=12)) + frame + draw(st.binary(max_size=12))
    if shape == "flip" and frame:
        at = draw(st.integers(0, len(frame) - 1))
        return frame[:at] + bytes([frame[at] ^ draw(st.integers(1, 255))]) + frame[at + 1 :]
    return frame


def fuzz_one(clients: Clients, data: st.DataObject) -> None:
    """One answer, drawn for a request of the driver's, through one of its clients."""
    framer = data.draw(st.sampled_from(["tcp", "rtu"]))
    ask, block = data.draw(st.sampled_from(ASKS))
    frame = data.draw(frames(clients, framer, ask))
    cuts = data.draw(st.lists(st.integers(0, 300), max_size=3))
    answer(clients, framer, ask, block, _chunks(frame, cuts))


@given(data=st.data())
@settings(max_examples=300)
def test_fuzz_modbus_answers(clients: Clients, data: st.DataObject) -> None:
    fuzz_one(clients, data)


@pytest.mark.extended
@pytest.mark.timeout(240)  # many examples: beyond the suite's 60 s per test
@given(data=st.data())
@settings(max_examples=8_000)
def test_fuzz_modbus_answers_many(clients: Clients, data: st.DataObject) -> None:
    fuzz_one(clients, data)


@pytest.mark.parametrize("case", cases("modbus"))
def test_fuzz_modbus_corpus(clients: Clients, case: dict[str, Any]) -> None:
    fc, address, count = case["ask"]
    pairs = [
        (ask, block)
        for ask, block in ASKS
        if (ask.function, ask.address, ask.count) == (fc, address, count)
    ]
    assert pairs, case
    ask, block = pairs[0]
    data = (
        bytes.fromhex(case["frame"])
        if "frame" in case
        else clients.frame(case["framer"], bytes.fromhex(case["pdu"]))
    )
    answer(clients, case["framer"], ask, block, _chunks(data, case.get("cuts", [])))


def test_fuzz_a_well_formed_answer_reaches_the_values(clients: Clients) -> None:
    # The generator's well-formed frames get through every check, so the decoding property
    # is exercised: 41.5 as float32, "AB", bit 15 set, 0x0102... as int64 BADC.
    ask, block = READS[2]
    assert block.table is ModbusTable.HOLDING_REGISTER and block.count == 9
    words = [0x4226, 0, 0x4142, 0, 0x8000, 0x0201, 0x0403, 0x0605, 0x0807]
    payload = b"".join(word.to_bytes(2, "big") for word in words)
    for framer in ("tcp", "rtu"):
        frame = clients.frame(framer, bytes([3, 18]) + payload)
        pdu = clients.receive(framer, [frame[:5], frame[5:]])
        assert pdu is not None and ask.mismatch(pdu) is None
        assert block.decode(pdu.registers) == [41.5, "AB", True, 0x0102030405060708]
