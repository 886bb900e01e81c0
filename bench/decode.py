"""Figure 6's cost per polled tag: a 100-tag poll cycle decoded and delivered to the tag board,
beside a raw loop decoding the same registers with pymodbus's `convert_from_registers`.

Two figures, ours and the raw loop measured alternately in the same run, every value changing
every cycle (as in figure 6):

- decode: the CPU of one poll cycle without the wire, per tag. Ours is the product's poll cycle
  (`ModbusDriver._poll_once`: plan, decode, readings, change detection, the subscriber, `TagIO`
  turning readings into tag values on its board) with the bus's answers replayed from answers
  recorded from the simulator; the raw loop decodes the same recorded registers at offsets it
  computed once and keeps the newest value of each tag in a dict.
- cycle: the CPU of one whole poll cycle over Modbus TCP against `cellctl sim` in a child
  process (so this process's CPU is the client's alone): ours `_poll_once` on a connected
  driver, the raw loop a pymodbus client reading the same blocks and decoding as above. A writer
  changes every value between cycles, outside the timed part.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from bench.figure import Figure

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusTcpClient
    from pymodbus.pdu import ModbusPDU

    from cellctl.io.session import TagIO
    from drivers.batching import ReadBlock
    from drivers.modbus import ModbusDriver

#: The tags of the bench device: (count, table, type, word order), laid out one after another;
#: 90 in one holding-register block (hr:0..110), 10 coils in another: a typical mix of
#: counters, set points, analogue values (float32, both word orders), status bits.
LAYOUT: tuple[tuple[int, str, str, str], ...] = (
    (40, "hr", "uint16", "ABCD"),
    (10, "hr", "int16", "ABCD"),
    (20, "hr", "float32", "ABCD"),
    (5, "hr", "float32", "CDAB"),
    (5, "hr", "int32", "ABCD"),
    (10, "hr.bit", "bool", "ABCD"),
    (10, "coil", "bool", "ABCD"),
)
TAGS = sum(count for count, *_ in LAYOUT)
UNIT = 1
#: Recorded answers the replayed cycles go round (each a different set of values).
SNAPSHOTS = 16


@dataclass(frozen=True)
class Sizes:
    """How much work each figure does (quick or full)."""

    decode_cycles: int  # replayed cycles per round
    wire_cycles: int  # cycles over TCP per round
    rounds: int  # ours and raw alternately, this many times each


QUICK = Sizes(decode_cycles=1000, wire_cycles=300, rounds=5)
FULL = Sizes(decode_cycles=3000, wire_cycles=1000, rounds=9)


@dataclass(frozen=True)
class Tag:
    """One bench tag: name, table, address, bit, type, word order, and the cell file's line."""

    name: str
    table: str
    address: int
    bit: int | None
    datatype: str
    word_order: str

    def cell_line(self) -> str:
        """The tag as a cell file entry."""
        where = f"{self.table}:{self.address}" + (f".{self.bit}" if self.bit is not None else "")
        order = f", word_order: {self.word_order}" if self.word_order != "ABCD" else ""
        return (
            f'  {self.name}: {{device: plc, address: "{where}", type: {self.datatype}, '
            f"access: rw{order}}}"
        )


def bench_tags() -> list[Tag]:
    """The LAYOUT as tags at consecutive addresses."""
    widths = {"uint16": 1, "int16": 1, "float32": 2, "int32": 2, "bool": 1}
    tags: list[Tag] = []
    register = coil = 0
    bit_register: int | None = None
    for count, kind, datatype, order in LAYOUT:
        for i in range(count):
            name = f"plc.{kind.replace('.', '_')}_{datatype}_{order.lower()}_{i}"
            if kind == "coil":
                tags.append(Tag(name, "coil", coil, None, datatype, order))
                coil += 1
            elif kind == "hr.bit":
                if bit_register is None:
                    bit_register, register = register, register + 1
                tags.append(Tag(name, "hr", bit_register, i, datatype, order))
            else:
                tags.append(Tag(name, "hr", register, None, datatype, order))
                register += widths[datatype]
    return tags


def cell_text(port: int, tags: Sequence[Tag]) -> str:
    """The bench cell: one generic Modbus TCP device with the tags (polled once an hour: the
    bench drives the cycles itself)."""
    head = (
        "cell: bench-decode\ndevices:\n"
        f"  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}, unit: {UNIT}, poll: 1h,\n"
        "         timeout: 1s, retries: 1}\ntags:\n"
    )
    return head + "\n".join(tag.cell_line() for tag in tags) + "\n"


def random_values(tags: Sequence[Tag], rng: random.Random) -> dict[str, Any]:
    """A new value for every tag (floats as a sensor gives them: 7 to 9 significant digits)."""
    values: dict[str, Any] = {}
    for tag in tags:
        if tag.datatype == "bool":
            values[tag.name] = rng.random() < 0.5
        elif tag.datatype == "float32":
            values[tag.name] = rng.uniform(-1000.0, 1000.0)
        elif tag.datatype == "int16":
            values[tag.name] = rng.randint(-32768, 32767)
        elif tag.datatype == "int32":
            values[tag.name] = rng.randint(-(2**31), 2**31 - 1)
        else:
            values[tag.name] = rng.randint(0, 65535)
    return values


@dataclass
class Wire:
    """Raw registers and coils for a set of values: what a writer sends to change them all."""

    registers: list[int]
    coils: list[bool]


def encode(tags: Sequence[Tag], values: dict[str, Any]) -> Wire:
    """The holding registers (from hr:0) and coils (from coil:0) that carry `values`."""
    from drivers.codecs import encode_registers, set_bit
    from drivers.points import DataType, WordOrder

    registers = [0] * (max(t.address for t in tags if t.table == "hr") + 1)
    coils = [False] * (max(t.address for t in tags if t.table == "coil") + 1)
    for tag in tags:
        value = values[tag.name]
        if tag.table == "coil":
            coils[tag.address] = bool(value)
        elif tag.bit is not None:
            registers[tag.address] = set_bit(registers[tag.address], tag.bit, bool(value))
        else:
            words = encode_registers(DataType(tag.datatype), value, WordOrder(tag.word_order))
            registers[tag.address : tag.address + len(words)] = words
    return Wire(registers, coils)


class RawDecoder:
    """The raw loop: each tag's offset and pymodbus data type computed once, then per cycle
    `convert_from_registers` (or a bit test) per tag into a dict of newest values."""

    def __init__(self, tags: Sequence[Tag], blocks: Sequence[ReadBlock]) -> None:
        from pymodbus.client.mixin import ModbusClientMixin

        self.convert = ModbusClientMixin.convert_from_registers
        types = ModbusClientMixin.DATATYPE
        by_name = {tag.name: tag for tag in tags}
        # Per block: (name, offset, width, pymodbus type or None for a bit, bit, word order).
        self.plan: list[list[tuple[str, int, int, Any, int | None, str]]] = []
        for block in blocks:
            entries: list[tuple[str, int, int, Any, int | None, str]] = []
            for point in block.points:
                tag = by_name[point.name]
                offset = tag.address - block.start
                if tag.table == "coil" or tag.bit is not None:
                    entries.append((tag.name, offset, 1, None, tag.bit, "big"))
                else:
                    datatype = types[tag.datatype.upper()]
                    order = "little" if tag.word_order == "CDAB" else "big"
                    entries.append((tag.name, offset, datatype.value[1], datatype, None, order))
            self.plan.append(entries)
        self.values: dict[str, Any] = {}

    def decode(self, answers: Sequence[ModbusPDU]) -> None:
        """Decode one cycle's answers (one per block) into `values`."""
        values, convert = self.values, self.convert
        for answer, entries in zip(answers, self.plan, strict=True):
            registers, bits = answer.registers, answer.bits
            for name, offset, width, datatype, bit, order in entries:
                if datatype is None:
                    if bit is None:
                        values[name] = bits[offset]
                    else:
                        values[name] = bool((registers[offset] >> bit) & 1)
                else:
                    chunk = registers[offset : offset + width]
                    values[name] = convert(chunk, datatype, word_order=order)  # type: ignore[arg-type]


async def read_blocks(client: AsyncModbusTcpClient, blocks: Sequence[ReadBlock]) -> list[ModbusPDU]:
    """One answer per block, read by a raw pymodbus client."""
    answers = []
    for block in blocks:
        if block.table.value == "coil":
            answer = await client.read_coils(block.start, count=block.count, device_id=UNIT)
        else:
            answer = await client.read_holding_registers(
                block.start, count=block.count, device_id=UNIT
            )
        if answer.isError():
            raise RuntimeError(f"raw pymodbus: read of {block.table.value}:{block.start} refused")
        answers.append(answer)
    return answers


async def write_all(client: AsyncModbusTcpClient, wire: Wire) -> None:
    """Change every value: the registers in requests of at most 100, then the coils."""
    for start in range(0, len(wire.registers), 100):
        chunk = wire.registers[start : start + 100]
        reply = await client.write_registers(start, chunk, device_id=UNIT)
        if reply.isError():
            raise RuntimeError(f"raw pymodbus: write of hr:{start} refused: {reply}")
    reply = await client.write_coils(0, wire.coils, device_id=UNIT)
    if reply.isError():
        raise RuntimeError(f"raw pymodbus: write of the coils refused: {reply}")


def replaying(driver: ModbusDriver, answers: Sequence[ModbusPDU]) -> None:
    """Make `driver` take its bus's answers from `answers`, in turn, without the wire."""
    turn = itertools.cycle(answers)

    async def send(action: str, call: Callable[..., Any], *, steps: int = 1) -> Any:
        return next(turn)

    driver._send = send  # type: ignore[method-assign]


@contextlib.contextmanager
def served(tags: Sequence[Tag]) -> Iterator[tuple[Path, int]]:
    """The bench cell on `cellctl sim` in a child process; the served cell file and port."""
    from cellctl.testing import free_port, serve_in_child

    with tempfile.TemporaryDirectory(prefix="cellctl-bench-decode-") as name:
        folder = Path(name)
        cell = folder / "cell.yaml"
        port = free_port()
        cell.write_text(cell_text(port, tags))
        written = folder / "served.yaml"
        with serve_in_child(cell, written, log_file=folder / "sim.log"):
            yield written, port


async def _session(cell_file: Path, tags: Sequence[Tag]) -> TagIO:
    """A connected CellSession watching every bench tag, its first poll cycle delivered."""
    from cellctl.cell import load_cell
    from cellctl.io.session import CellSession

    session = CellSession(load_cell(cell_file), [t.name for t in tags])
    await session.__aenter__()
    session.watch()
    from cellctl.testing import wait_until

    await wait_until(
        lambda: all(session.board.latest(t.name) is not None for t in tags),
        10,
        "the first poll cycle to reach the board",
    )
    return session


async def _measure(
    cell_file: Path, port: int, tags: Sequence[Tag], sizes: Sizes
) -> dict[str, float]:
    """CPU seconds per cycle: ours and raw, replayed (decode) and over the wire (cycle)."""
    from pymodbus.client import AsyncModbusTcpClient

    from drivers.modbus import ModbusDriver

    rng = random.Random(11)
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=1, retries=0)
    if not await client.connect():
        raise RuntimeError(f"raw pymodbus: cannot connect to 127.0.0.1:{port}")
    live = await _session(cell_file, tags)
    replay = await _session(cell_file, tags)
    try:
        driver = cast(ModbusDriver, live.drivers["plc"])
        replayed = cast(ModbusDriver, replay.drivers["plc"])
        blocks = driver._plan(driver._subscriptions[0].points).blocks
        raw = RawDecoder(tags, blocks)
        # Answers with every value changed from one to the next, recorded from the simulator.
        recorded: list[ModbusPDU] = []
        for _ in range(SNAPSHOTS):
            await write_all(client, encode(tags, random_values(tags, rng)))
            recorded += await read_blocks(client, blocks)
        replaying(replayed, recorded)
        per_cycle = len(blocks)
        snapshots = [recorded[i : i + per_cycle] for i in range(0, len(recorded), per_cycle)]
        samples: dict[str, list[float]] = {k: [] for k in ("ours", "raw", "ours_wire", "raw_wire")}
        for _ in range(sizes.rounds):
            start = time.process_time()
            for _ in range(sizes.decode_cycles):
                await replayed._poll_once()
            samples["ours"].append((time.process_time() - start) / sizes.decode_cycles)
            start = time.process_time()
            for cycle in range(sizes.decode_cycles):
                raw.decode(snapshots[cycle % SNAPSHOTS])
            samples["raw"].append((time.process_time() - start) / sizes.decode_cycles)
            wires = [encode(tags, random_values(tags, rng)) for _ in range(4)]
            for key in ("ours_wire", "raw_wire"):
                spent = 0.0
                for cycle in range(sizes.wire_cycles):
                    await write_all(client, wires[cycle % len(wires)])
                    start = time.process_time()
                    if key == "ours_wire":
                        await driver._poll_once()
                    else:
                        raw.decode(await read_blocks(client, blocks))
                    spent += time.process_time() - start
                samples[key].append(spent / sizes.wire_cycles)
        check_same(live, raw, tags)
    finally:
        client.close()
        await live.close()
        await replay.close()
    return {key: statistics.median(values) for key, values in samples.items()}


def check_same(session: TagIO, raw: RawDecoder, tags: Sequence[Tag]) -> None:
    """Both loops saw the same last values (floats as float32): the comparison is fair."""
    import struct

    for tag in tags:
        ours = session.board.latest(tag.name)
        theirs = raw.values[tag.name]
        assert ours is not None
        if tag.datatype == "float32":
            same = struct.pack(">f", cast(float, ours.value)) == struct.pack(">f", theirs)
        else:
            same = ours.value == theirs
        if not same:
            raise RuntimeError(f"{tag.name}: ours read {ours.value!r}, raw {theirs!r}")


def measure(quick: bool) -> list[Figure]:
    """The decode and poll-cycle figures (about 25 s quick, 3 min full)."""
    sizes = QUICK if quick else FULL
    tags = bench_tags()
    with served(tags) as (cell_file, port):
        cpu = asyncio.run(_measure(cell_file, port, tags, sizes))
    per_tag = {key: value / TAGS * 1e6 for key, value in cpu.items()}
    decode = Figure(
        6,
        f"decode+deliver per polled tag ({TAGS} tags)",
        per_tag["ours"],
        "us CPU",
        per_tag["raw"],
        "raw convert_from_registers",
        per_tag["raw"] / per_tag["ours"],
        "<= 2 x raw",
        per_tag["ours"] <= 2 * per_tag["raw"],
        "poll cycle without the wire, answers replayed; every value changes every cycle",
    )
    cycle = Figure(
        6,
        f"CPU of a {TAGS}-tag poll cycle, Modbus TCP",
        cpu["ours_wire"] * 1e6,
        "us CPU",
        cpu["raw_wire"] * 1e6,
        "raw pymodbus read+decode",
        cpu["raw_wire"] / cpu["ours_wire"],
        "<= 2 x raw",
        cpu["ours_wire"] <= 2 * cpu["raw_wire"],
        f"{len(LAYOUT)} kinds of tag in 2 requests; the client's CPU only (server in a child)",
    )
    return [decode, cycle]


if __name__ == "__main__":
    from bench.__main__ import show

    for figure in measure(quick=True):
        print(show(figure))
