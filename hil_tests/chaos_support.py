"""Seeded fault schedules for hil_tests/test_chaos.py: what a seed draws (decided up front, all of
it from `random.Random(seed)`), the injector that plays it on the demo cell's simulators while a
batch runs, and the witnesses read after it (raw clients, the simulators' own logs and counts,
the journal).

"Duplicated", "reordered" and "processed twice", as the checks here define them:

- Per rw tag (heartbeat tags aside), the device's own log of client writes (ProcessImage.writes)
  is matched, in order, against the journal's intents for that tag. A device write is
  accounted for when it is (a) the next intent's value (the intent is then used up), (b) the
  same value as the write before it at the device (a driver's retry of an idempotent write: it
  changes nothing), or (c) the tag's safe value (the safe state and its keeper write it again
  legitimately, at any time, and are recorded as safe_state rows, not intents). Anything else
  is a write the journal cannot account for: duplicated (an intent used up already) or
  reordered (a later intent's value arriving first). An intent may be passed over (never
  reached the device) only when its confirmation is not `ok`; an intent confirmed `ok` that no
  device write matches is a lost write.
- Every rising edge of press.cycle_start at the press starts at most one cycle on one part:
  rising edges and cycles started <= parts + the operator's re-runs of the press step; cycles
  done == parts for a Complete batch without such re-runs, <= parts + re-runs otherwise.
- Robot Pick calls answered (and moves started) <= parts + the operator's re-runs of the pick
  step (a call is never retried by the driver: only an operator's choice repeats one).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from cellctl.cell import Cell, ModbusRtuDevice, ModbusTcpDevice, OpcuaDevice, load_cell
from cellctl.cell.tags import point_for
from cellctl.control.events import (
    COMM_LOSS,
    BatchEnded,
    Event,
    SafeStateWritten,
    StateChanged,
    StepStarted,
    TripCleared,
    Tripped,
    UnholdAsks,
)
from cellctl.control.journal.rows import JournalRow, Kind
from cellctl.control.journal.store import SqliteStore
from cellctl.testing import Served
from drivers.base import Value
from drivers.codecs import decode_registers, get_bit
from drivers.points import ModbusPoint, ModbusTable
from drivers.sim.faultproxy import FaultProxy
from drivers.sim.image import ClientWrite
from drivers.sim.modbus_server import ModbusRtuSimServer
from hil_tests.run_support import edit_cell, opcua_value
from hil_tests.support import with_room
from hil_tests.test_run_faults import target_of

#: The networked devices, each behind a fault proxy; the press is on its RTU line.
PROXIED = ("conveyor", "robot", "inspection")
#: Devices whose loss the batch trips on (press-fit uses them, or its safe state does): a long
#: fault on one of these must be detected within the bound.
WATCHED = ("conveyor", "robot", "press", "inspection")
#: Device timeout and retries of every device in a chaos cell (short: a seed takes seconds).
TIMEOUT, RETRIES = "300ms", 1
#: Seconds a safe state may take to be confirmed once every link is back (the keeper writes
#: again every SAFE_RETRY = 1 s), with room for a loaded machine.
SAFE_WITHIN = with_room(1.0)

#: Fault kinds a schedule draws from, with their weights. Kinds ending a batch (a Stop or an
#: Abort interlock) are drawn at most once per seed, by `ending`.
KINDS = {
    "freeze": 3,  # the link stays open, nothing passes: held until the loss is detected
    "blip": 3,  # a short freeze (may or may not trip)
    "link-down": 2,  # every connection reset and new ones refused, until detected
    "drop": 2,  # every connection reset once; the driver reconnects
    "latency": 3,  # answers late, with jitter, below the timeout
    "fragment": 3,  # answers cut in pieces
    "kill": 2,  # the device's simulator stopped, restarted once the loss is detected
    "light-curtain": 2,  # the light curtain broken for a while: a Hold interlock
    "hold": 3,  # an operator Hold, Unhold after a while
}
#: Kinds that act on a device's link or its simulator (one at a time per device).
LINK_KINDS = frozenset({"freeze", "blip", "link-down", "drop", "latency", "fragment", "kill"})
ENDING = {"conveyor-fault": ("conveyor", "fault"), "robot-fault": ("robot", "fault")}
ENDING_ABORT = {"press-fault": ("press", "fault")}


@dataclass(frozen=True)
class Fault:
    """One fault of a schedule: what, on which device, at which step start (the nth
    StepStarted of the batch, re-entries counted), and its parameters."""

    kind: str
    device: str
    at_step: int
    duration: float = 0.0  # seconds it lasts (after detection, for kinds held until then)
    mean: float = 0.0  # latency
    jitter: float = 0.0
    pieces: int = 1  # fragment

    def describe(self) -> str:
        """One line for a failure message."""
        extra = {
            "latency": f" {self.mean * 1000:.0f}±{self.jitter * 1000:.0f} ms",
            "fragment": f" in {self.pieces} pieces",
        }.get(self.kind, "")
        return (
            f"at step start #{self.at_step}: {self.kind} {self.device}{extra}"
            f" for {self.duration:.2f} s"
        )

    @property
    def until_detected(self) -> bool:
        """A fault held until the controller detects the device's loss (then cleared)."""
        return self.kind in ("freeze", "link-down", "kill") and self.device in WATCHED


@dataclass(frozen=True)
class Schedule:
    """Everything a seed decides, up front."""

    seed: int
    parts: int
    faults: tuple[Fault, ...]
    #: In-process batch (None), or a child `cellctl run` SIGKILLed at this step start line,
    #: then `cellctl resume`.
    kill_at: int | None = None

    def describe(self) -> str:
        """The schedule, one fault a line."""
        lines = [f"seed {self.seed}: {self.parts} parts"]
        if self.kill_at is not None:
            lines[0] += f", child run SIGKILLed at step start #{self.kill_at}, then resume"
        lines += [f"  {f.describe()}" for f in self.faults]
        return "\n".join(lines)


def draw(seed: int) -> Schedule:
    """The schedule of `seed`: a few faults at step starts spread over a 2-part batch."""
    rng = random.Random(seed)
    parts = 2
    steps = 1 + 7 * parts  # the step starts of a batch without re-entries, about
    if rng.random() < 0.2:
        # A controller killed mid-batch: only faults that do not trip before the kill (a
        # child run without a terminal ends Held at a trip, leaving nothing to resume).
        kill_at = rng.randint(2, steps - 1)
        faults = [
            _link_fault(rng, rng.choice(["latency", "fragment"]), rng.randint(1, kill_at))
            for _ in range(rng.randint(1, 2))
        ]
        return Schedule(seed, parts, tuple(sorted(faults, key=_when)), kill_at)
    faults = []
    kinds, weights = list(KINDS), list(KINDS.values())
    for _ in range(rng.randint(2, 4)):
        kind = rng.choices(kinds, weights)[0]
        at = rng.randint(1, steps)
        if kind in ("light-curtain", "hold"):
            device = "conveyor" if kind == "light-curtain" else "-"
            faults.append(Fault(kind, device, at, duration=rng.uniform(0.05, 0.6)))
        else:
            faults.append(_link_fault(rng, kind, at))
    ending = rng.random()
    if ending < 0.12:
        name = rng.choice(sorted(ENDING))
        faults.append(Fault(name, ENDING[name][0], rng.randint(2, steps), duration=0.3))
    elif ending < 0.18:
        faults.append(Fault("press-fault", "press", rng.randint(2, steps), duration=0.3))
    return Schedule(seed, parts, tuple(sorted(faults, key=_when)))


def _when(fault: Fault) -> int:
    return fault.at_step


def _link_fault(rng: random.Random, kind: str, at: int) -> Fault:
    """A link or device fault of `kind` on a device it applies to."""
    if kind in ("freeze", "blip"):
        device = rng.choice([*PROXIED, "press"])
    elif kind == "kill":
        device = rng.choice(PROXIED)
    else:
        device = rng.choice(PROXIED)
    if kind == "latency":
        # Below the 300 ms timeout with its jitter: late, never lost.
        return Fault(
            kind,
            device,
            at,
            duration=rng.uniform(0.2, 1.2),
            mean=rng.uniform(0.005, 0.08),
            jitter=rng.uniform(0.0, 0.04),
        )
    if kind == "fragment":
        return Fault(kind, device, at, duration=rng.uniform(0.2, 1.2), pieces=rng.randint(2, 6))
    if kind == "blip":
        return Fault(kind, device, at, duration=rng.uniform(0.02, 0.35))
    if kind == "drop":
        return Fault(kind, device, at)
    # A loss the batch trips on lasts until detected, and a little more; another a while.
    length = rng.uniform(0.0, 0.4) if device in WATCHED else rng.uniform(0.3, 1.5)
    return Fault(kind, device, at, duration=length)


# --- the cell behind proxies --------------------------------------------------------------------


@contextlib.asynccontextmanager
async def proxies_for(served: Served) -> AsyncIterator[dict[str, FaultProxy]]:
    """A started fault proxy in front of each networked device, stopped after."""
    proxies = {device: FaultProxy(*target_of(served, device)) for device in PROXIED}
    try:
        for proxy in proxies.values():
            await proxy.start()
        yield proxies
    finally:
        for proxy in proxies.values():
            proxy.clear()
            await proxy.stop()


def chaos_cell(served: Served, target: Path, proxies: dict[str, FaultProxy]) -> dict[str, float]:
    """Write a copy of the served cell with every networked device behind its proxy and every
    device at TIMEOUT and RETRIES; return each device's detection bound: 2 × poll (or
    publishing interval) + timeout × (retries + 1)."""
    source = served.cell_file
    for device in served.cell.devices:
        where: dict[str, object] = {}
        proxy = proxies.get(device)
        if proxy is not None and device in ("robot", "inspection"):
            where = {"endpoint": f"opc.tcp://{proxy.endpoint}/{device}"}
        elif proxy is not None:
            where = {"host": proxy.host, "port": proxy.port}
        edit_cell(source, target, device, timeout=TIMEOUT, retries=RETRIES, **where)
        source = target
    bounds: dict[str, float] = {}
    for name, config in load_cell(target).devices.items():
        if isinstance(config, OpcuaDevice):
            period = config.publishing_interval
        else:
            assert isinstance(config, ModbusTcpDevice | ModbusRtuDevice)
            period = config.poll
        bounds[name] = 2 * period + config.timeout * (config.retries + 1)
    return bounds


# --- the injector -------------------------------------------------------------------------------


@dataclass
class Moment:
    """What the injector did, and when (seconds since the batch began)."""

    at: float
    what: str


@dataclass
class Detection:
    """A fault held until detected: when it began and when the device's comm-loss tripped
    (None: not within the bound with room)."""

    fault: Fault
    began: float  # time.time()
    tripped: float | None
    bound: float


@dataclass
class Injector:
    """Plays a schedule's faults at their step starts, on the simulators' loop (where the
    controller runs too). `listen` is a controller listener."""

    served: Served
    proxies: dict[str, FaultProxy]
    bounds: dict[str, float]
    schedule: Schedule
    #: Submits an operator Hold (the test's operator does it through the command layer).
    hold: Callable[[str], Awaitable[object]]
    events: list[Event]
    began: float = field(default_factory=time.time)
    moments: list[Moment] = field(default_factory=list)
    detections: list[Detection] = field(default_factory=list)
    #: The operator does not Unhold before this (time.monotonic()): an operator Hold's pause.
    not_before: float = 0.0
    _steps: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _active: int = 0
    _calm: asyncio.Event = field(default_factory=asyncio.Event)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._calm.set()

    def listen(self, event: Event) -> None:
        """A controller listener: each step start is a moment (see step_started)."""
        if isinstance(event, StepStarted):
            self.step_started()

    def step_started(self) -> None:
        """Count a step start; start each fault whose moment it is (on the loop)."""
        self._steps += 1
        for fault in self.schedule.faults:
            if fault.at_step == self._steps:
                self._active += 1
                self._calm.clear()
                self._tasks.append(asyncio.ensure_future(self._play(fault)))

    @property
    def active(self) -> bool:
        """True while a fault is in force (or being cleared)."""
        return self._active > 0

    async def calm(self, within: float) -> None:
        """Wait until no fault is in force (AssertionError after `within` s)."""
        try:
            async with asyncio.timeout(within):
                await self._calm.wait()
        except TimeoutError:
            raise AssertionError(f"faults still in force after {within} s") from None

    async def finish(self) -> None:
        """Wait for every fault to end; a fault task's exception is raised here, not lost."""
        if self._tasks:
            await asyncio.gather(*self._tasks)

    def note(self, what: str) -> None:
        """Record a moment."""
        self.moments.append(Moment(time.time() - self.began, what))

    def timeline(self, events: Sequence[Event] = ()) -> str:
        """The moments and the controller's events that tell the story, one a line."""
        told = [*self.moments, *(Moment(e.at - self.began, _told(e)) for e in events if _tells(e))]
        return "\n".join(f"  {m.at:+7.3f} s {m.what}" for m in sorted(told, key=_at))

    async def _play(self, fault: Fault) -> None:
        # Faults of one kind on one device (its link, its simulator, one plant fault) take
        # turns: an earlier one's end would otherwise cut a later one short.
        family = "link" if fault.kind in LINK_KINDS else fault.kind
        lock = self._locks.setdefault(f"{fault.device}:{family}", asyncio.Lock())
        try:
            async with lock:
                self.note(f"begin {fault.describe()}")
                await self._apply(fault)
                self.note(f"end {fault.kind} {fault.device}")
        finally:
            self._active -= 1
            if self._active == 0:
                self._calm.set()

    async def _apply(self, fault: Fault) -> None:
        proxy = self.proxies.get(fault.device)
        simulator = self.served.simulator
        kind = fault.kind
        if kind == "hold":
            self.not_before = time.monotonic() + fault.duration
            await self.hold(f"chaos: operator Hold at step start #{fault.at_step}")
            return
        if kind in ("light-curtain", *ENDING, *ENDING_ABORT):
            name = "light-curtain" if kind == "light-curtain" else "fault"
            simulator.fault(fault.device, name, True)
            await asyncio.sleep(fault.duration)  # the fault's length, not synchronisation
            simulator.fault(fault.device, name, False)
            return
        if kind == "drop":
            assert proxy is not None
            proxy.drop()
            return
        if kind in ("latency", "fragment"):
            assert proxy is not None
            if kind == "latency":
                proxy.latency(fault.mean, fault.jitter)
            else:
                proxy.fragment(fault.pieces)
            await asyncio.sleep(fault.duration)
            proxy.latency(0.0) if kind == "latency" else proxy.fragment(1)
            return
        began = time.time()
        undo = await self._begin_outage(fault, proxy)
        try:
            if fault.until_detected:
                await self._detect(fault, began)
            await asyncio.sleep(fault.duration)  # the outage's length, not synchronisation
        finally:
            await undo()

    async def _begin_outage(
        self, fault: Fault, proxy: FaultProxy | None
    ) -> Callable[[], Awaitable[None]]:
        """Start a freeze, blip, link-down or kill; the coroutine function that ends it."""
        kind, device = fault.kind, fault.device
        if kind == "kill":
            server = self.served.simulator.servers[device]
            await server.stop()
            return server.start
        if device == "press":
            line = self.served.simulator.servers["press"]
            assert isinstance(line, ModbusRtuSimServer)
            line.freeze(True)
            return _undo(lambda: line.freeze(False))
        assert proxy is not None
        if kind == "link-down":
            proxy.refuse(True)
            proxy.drop()
            return _undo(lambda: proxy.refuse(False))
        proxy.freeze(True)
        return _undo(lambda: proxy.freeze(False))

    async def _detect(self, fault: Fault, began: float) -> None:
        """Wait for the device's comm-loss trip (at most the bound with room, + 0.5 s)."""
        bound = self.bounds[fault.device]
        name = COMM_LOSS + fault.device
        deadline = time.monotonic() + with_room(bound) + 0.5
        tripped: float | None = began if _standing(self.events, name) else None
        while tripped is None and time.monotonic() < deadline:
            found = [
                e.at
                for e in self.events
                if isinstance(e, Tripped) and e.interlock == name and e.at >= began - 0.01
            ]
            if found:
                tripped = found[0]
                break
            await asyncio.sleep(0.01)  # a poll interval; the deadline rules
        self.detections.append(Detection(fault, began, tripped, bound))
        took = "NOT tripped" if tripped is None else f"tripped {tripped - began:.3f} s after it"
        self.note(f"{name} {took}")


def _at(moment: Moment) -> float:
    return moment.at


def _tells(event: Event) -> bool:
    """An event a chaos timeline shows."""
    return isinstance(
        event, StateChanged | Tripped | TripCleared | SafeStateWritten | UnholdAsks | BatchEnded
    )


def _told(event: Event) -> str:
    """An event, short."""
    if isinstance(event, StateChanged):
        return f"-> {event.target} ({event.cause})" if event.cause else f"-> {event.target}"
    if isinstance(event, Tripped):
        return f"tripped {event.interlock}: {event.message}"
    if isinstance(event, TripCleared):
        return f"cleared {event.interlock}"
    if isinstance(event, SafeStateWritten):
        failed = [f"{r.tag} ({r.error})" for r in event.results if r.error]
        return f"safe state ({event.reason}): " + (f"failed {failed}" if failed else "ok")
    if isinstance(event, UnholdAsks):
        return f"asks: {event.question}"
    return repr(event)


def _standing(events: list[Event], interlock: str) -> bool:
    """True when `interlock` tripped and has not cleared since (a fault on a device already
    lost is detected already)."""
    standing = False
    for event in events:
        if isinstance(event, Tripped) and event.interlock == interlock:
            standing = True
        elif isinstance(event, TripCleared) and event.interlock == interlock:
            standing = False
    return standing


def _undo(action: Callable[[], None]) -> Callable[[], Awaitable[None]]:
    """`action` as a coroutine function, so that every outage is ended alike."""

    async def undo() -> None:
        action()

    return undo


# --- witnesses ----------------------------------------------------------------------------------


async def raw_value(served: Served, tag: str) -> Value:
    """What the simulator of the tag's device holds, read straight from it: a raw pymodbus
    client of our own for Modbus TCP, a raw asyncua client for OPC UA, the simulator's own
    store for the RTU line (a pty carries one client: ours would take the driver's bytes)."""
    cell: Cell = served.cell
    spec = cell.tags[tag]
    device = cell.devices[spec.device]
    if isinstance(device, OpcuaDevice):
        return await opcua_value(cell, tag)
    if not isinstance(device, ModbusTcpDevice):
        return served.simulator.images[spec.device].get(tag)
    from pymodbus.client import AsyncModbusTcpClient

    point = point_for(cell, tag)
    assert isinstance(point, ModbusPoint)
    client = AsyncModbusTcpClient(device.host, port=device.port, timeout=1.0, retries=0)
    try:
        assert await client.connect(), f"{spec.device} at {device.host}:{device.port}: no answer"
        if point.table is ModbusTable.COIL:
            bits = await client.read_coils(point.address, count=1, device_id=device.unit)
            assert not bits.isError(), bits
            return bool(bits.bits[0])
        words = await client.read_holding_registers(
            point.address, count=point.width, device_id=device.unit
        )
        assert not words.isError(), words
        if point.bit is not None:
            return get_bit(int(words.registers[0]), point.bit)
        return decode_registers(point.datatype, list(words.registers), point.word_order)
    finally:
        client.close()


async def unsafe_tags(served: Served) -> dict[str, Value]:
    """The safe-state tags whose device does not hold the safe value now (read raw)."""
    cell = served.cell
    wrong: dict[str, Value] = {}
    for tag, wanted in cell.safe_state.items():
        found = await raw_value(served, tag)
        if found != wanted:
            wrong[tag] = found
    return wrong


async def safe_state_held(served: Served, within: float = SAFE_WITHIN) -> dict[str, Value]:
    """Wait until every device holds the safe state (read raw); what does not after `within`
    s (empty: safe)."""
    deadline = time.monotonic() + within
    while True:
        wrong = await unsafe_tags(served)
        if not wrong or time.monotonic() > deadline:
            return wrong
        await asyncio.sleep(0.05)  # a poll interval; the deadline rules


def journal_rows(journal: Path) -> list[JournalRow]:
    """Every row of the journal, in order."""
    store = SqliteStore(journal, readonly=True)
    try:
        return list(store.rows(None))
    finally:
        store.close()


@dataclass(frozen=True)
class Intent:
    """A recorded write: tag, value, and whether its device confirmed it."""

    id: str
    tag: str
    value: Value
    ok: bool


def intents(rows: list[JournalRow]) -> list[Intent]:
    """The journal's write intents in order, each with its confirmation's verdict."""
    verdicts: dict[str, bool] = {}
    for row in rows:
        if row.kind == Kind.CONFIRMED:
            data = row.data()
            verdicts[str(data["intent"])] = bool(data["ok"])
    found = []
    for row in rows:
        if row.kind == Kind.INTENT:
            data = row.data()
            intent = str(data["intent"])
            found.append(
                Intent(intent, str(data["tag"]), data["value"], verdicts.get(intent, False))
            )
    return found


def order_problems(
    device_writes: list[ClientWrite],
    recorded: list[Intent],
    safe: dict[str, Value],
    skip: frozenset[str],
) -> list[str]:
    """Where the device's writes and the journal's intents disagree (the module docstring's
    definition), per tag; empty when they agree."""
    problems: list[str] = []
    tags = {w.tag for w in device_writes} | {i.tag for i in recorded}
    for tag in sorted(tags - skip):
        at_device = [w.value for w in device_writes if w.tag == tag]
        wanted = [i for i in recorded if i.tag == tag]
        problems += _tag_order(tag, at_device, wanted, safe.get(tag, _NOTHING))
    return problems


_NOTHING = object()


def _tag_order(tag: str, at_device: list[Value], wanted: list[Intent], safe: object) -> list[str]:
    """Whether the device's writes of one tag can be accounted for by the journal's intents
    (a search over the ways to match them: a value may match several intents)."""
    furthest = [0]

    @functools.cache
    def fits(i: int, j: int) -> bool:
        furthest[0] = max(furthest[0], i)
        if i == len(at_device):
            return not any(intent.ok for intent in wanted[j:])  # nothing confirmed is lost
        value = at_device[i]
        for k in range(j, len(wanted)):
            if wanted[k].value == value and fits(i + 1, k + 1):
                return True
            if wanted[k].ok:
                break  # a confirmed intent is not passed over
        again = i > 0 and at_device[i - 1] == value
        return (again or value == safe) and fits(i + 1, j)

    if fits(0, 0):
        return []
    where = (
        f"device write #{furthest[0] + 1} = {at_device[furthest[0]]!r} is no intent's in the "
        "journal's order (duplicated or reordered)"
        if furthest[0] < len(at_device)
        else "a confirmed intent never reached the device"
    )
    return [f"{tag}: {where} (device: {at_device}; journal: {wanted})"]


def skipped(rows: list[JournalRow]) -> bool:
    """True when an operator chose to skip a step (Unhold's choice, or resume's)."""
    return any(
        row.data().get("choice") == "skip"
        for row in rows
        if row.kind in (Kind.COMMAND, Kind.NOTICE)
    )


def step_choices(rows: list[JournalRow]) -> dict[str, int]:
    """How many times the operator chose to run a step again (retry), by step id: Unhold
    commands with a choice, matched to the step the batch was held at (its last started)."""
    reruns: dict[str, int] = {}
    current: str | None = None
    for row in rows:
        data = row.data() if row.kind in (Kind.STEP_STARTED, Kind.COMMAND) else {}
        if row.kind == Kind.STEP_STARTED:
            current = cast(str | None, data.get("step_id"))
        elif row.kind == Kind.COMMAND and data.get("choice") == "retry" and current:
            reruns[current] = reruns.get(current, 0) + 1
    return reruns


@contextlib.contextmanager
def counting(served: Served) -> Iterator[dict[str, dict[str, int]]]:
    """The plant models' counts made during the block (filled in at its end), by device."""
    before = served.on_loop(lambda: {n: dict(m.counts) for n, m in served.simulator.models.items()})
    made: dict[str, dict[str, int]] = {}
    try:
        yield made
    finally:
        after = served.on_loop(
            lambda: {n: dict(m.counts) for n, m in served.simulator.models.items()}
        )
        for name, counts in after.items():
            made[name] = {k: v - before[name].get(k, 0) for k, v in counts.items()}
