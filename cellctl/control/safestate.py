"""The cell's safe state, kept: written on demand (every device attempted, each result on
record), what failed kept due and written again, device by device, until the devices confirm
it, and read back before a run may end.

A device whose health says it fails (lost, or degraded by a request it did not answer) is not
waited for: its whole safe state is due, and the keeper writes it every SAFE_RETRY s and at
once when the device answers again. One writer at a time per device, so a lost one never holds
up the others. When the recipe decides the outputs again (Starting, Unholding, Resetting),
`end_writers` ends every writer: no late safe-state write lands under the recipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import defaultdict
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any

import structlog

from cellctl.cell import Cell
from cellctl.control.events import Event, SafeStateWritten, SafeWrite
from cellctl.errors import CellctlError
from cellctl.io.session import TagIO
from drivers.base import Health, HealthState, Quality, Value
from drivers.codecs import same_value

log = structlog.get_logger("cellctl.control.safestate")

#: Seconds between two attempts at a device's safe state that is still due.
SAFE_RETRY = 1.0
#: Seconds `end_writers` waits for the writers it cancelled.
END_WAIT = 10.0


def _holds(read: Value, wanted: Value) -> bool:
    """True when a value read back is the safe value written: numbers as the device stores
    them (a float32 0.1 reads back 0.10000000149, a scaled 0 as 0.0), others exactly."""
    numbers = (int, float)
    if isinstance(read, bool) or isinstance(wanted, bool):
        return read is wanted or (type(read) is type(wanted) and read == wanted)
    if isinstance(read, numbers) and isinstance(wanted, numbers):
        return math.isclose(read, wanted, rel_tol=1e-6, abs_tol=1e-9)
    return same_value(read, wanted)


class SafeState:
    """Writes a cell's safe state and keeps it: what fails is written again until confirmed."""

    def __init__(
        self,
        cell: Cell,
        io: TagIO,
        *,
        emit: Callable[[Event], None],
        fault: Callable[[str], None],
        task_done: Callable[[asyncio.Task[None]], None],
    ) -> None:
        self.cell = cell
        self.io = io
        self._emit = emit
        self._fault = fault
        self._task_done = task_done
        #: Safe-state tags still due (a lost device, a failed write): the keeper writes them.
        self.due: dict[str, Value] = {}
        #: One safe-state writer at a time per device (a lost one never holds up the others).
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Writers started outside an acting state (a trip in Held, the keeper).
        self._writers: set[asyncio.Task[None]] = set()
        self._keeper: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._reason = ""
        self._errors: dict[str, str] = {}  # the last failure of each tag still due
        #: Set after every write (counted): confirm() looks again.
        self._changed = asyncio.Event()
        self._generation = 0
        #: Bumped by end_writers: a writer of an earlier epoch is void.
        self._epoch = 0
        #: The safe state was asked for since the recipe last decided the outputs.
        self.asked = False

    def track(self, writer: asyncio.Task[None]) -> None:
        """A writer started outside an acting state: end_writers() ends it."""
        self._writers.add(writer)
        writer.add_done_callback(self._writers.discard)

    async def write(self, reason: str) -> None:
        """Write the whole safe state and record it: every device attempted, a failing one by
        the keeper."""
        if self.cell.safe_state:
            self._emit(await self._write(reason, list(self.cell.safe_state)))

    def trip_cleared(self, name: str) -> None:
        """A trip cleared: a device that is back gets what is due at once."""
        if self.due:
            self._kick(f"{name} cleared, written again")

    def health_changed(self, device: str, health: Health) -> None:
        """A device that answers again gets what is due at once."""
        due = {self.cell.tags[t].device for t in self.due}
        if health.state is HealthState.CONNECTED and device in due:
            self._kick(f"{device} answers again, written again")

    async def end_writers(self) -> None:
        """The recipe decides the outputs again: no late safe-state write may follow.

        Every writer started before is cancelled and waited for (a write on the wire ends
        first), and whatever it still does is void: it writes no further tag and leaves
        nothing due. A writer started meanwhile (a new trip) is a new demand and goes on.
        """
        self._epoch += 1
        self.due.clear()
        self._errors.clear()
        self._reason = ""
        self.asked = False
        writers = [t for t in self._writers if not t.done()]
        for writer in writers:
            writer.cancel()
        if writers:
            _, pending = await asyncio.wait(writers, timeout=END_WAIT)
            if pending:
                # Void all the same: they write no further tag (see write_safe_state's `valid`).
                self._fault("a safe-state write did not end after its cancel")
                log.error("a safe-state write did not end after its cancel")

    def stop(self) -> asyncio.Task[None] | None:
        """Stop the keeper (the run no longer waits for the safe state); the task, if any."""
        if self._keeper is not None:
            self._keeper.cancel()
        return self._keeper

    def _lost_devices(self) -> set[str]:
        """Devices whose health says they fail (lost, or degraded by a failed request), or
        that are not connected at all: the keeper attempts them, nobody waits for them."""
        lost = set()
        for device in {self.cell.tags[t].device for t in self.cell.safe_state}:
            driver = self.io.drivers.get(device)
            if driver is None or driver.health.state is not HealthState.CONNECTED:
                lost.add(device)
        return lost

    async def _write(
        self, reason: str, tags: list[str], *, attempt_lost: bool = False
    ) -> SafeStateWritten:
        """Write these safe-state tags, each device under its own lock; a lost device is left
        to the keeper (unless `attempt_lost`); what fails becomes due, device by device."""
        epoch = self._epoch
        self.asked = True
        lost = set() if attempt_lost else self._lost_devices()
        # On record as due before any write is awaited: a lost device that answers while the
        # others are written finds its tags due, and the keeper writes them.
        for tag in tags:
            if self.cell.tags[tag].device in lost:
                self.due[tag] = self.cell.safe_state[tag]
        if lost:
            self._kick(f"{', '.join(sorted(lost))} lost, written when it answers")
        written = await write_safe_state(
            self.io,
            self.cell,
            reason,
            tags=tags,
            lost=lost,
            locks=self._locks,
            valid=lambda: epoch == self._epoch,
        )
        if epoch != self._epoch:
            return written  # ended meanwhile (the recipe decides): nothing becomes due
        failed = {self.cell.tags[r.tag].device for r in written.results if r.error is not None}
        for result in written.results:
            device = self.cell.tags[result.tag].device
            if result.error is None and device not in failed:
                self.due.pop(result.tag, None)
                self._errors.pop(result.tag, None)
            elif result.error is not None:
                if result.tag not in self._errors:  # once per tag until it is written
                    self._fault(f"safe state {result.tag}: {result.error}")
                self._errors[result.tag] = result.error
        # A device with one failed write owes its whole safe state again.
        for tag, value in self.cell.safe_state.items():
            if self.cell.tags[tag].device in failed:
                self.due[tag] = value
        if self.due and not attempt_lost:  # the keeper itself is the one attempting
            self._kick(self._reason or "written again")
        self._generation += 1
        self._changed.set()
        return written

    def _kick(self, reason: str) -> None:
        """Have the keeper try the due safe state now (started when none runs)."""
        self._reason = reason
        self._wake.set()
        if self._keeper is None or self._keeper.done():
            # Not one of the controller's queued tasks (_tasks): a run's end waits for the
            # keeper only through confirm(), within --safe-wait.
            self._keeper = asyncio.ensure_future(self._keep_safe())
            self._keeper.add_done_callback(self._task_done)
            self.track(self._keeper)

    async def _keep_safe(self) -> None:
        """Write the whole safe state of every device that still owes it, every SAFE_RETRY s
        and at once when kicked, until each is confirmed (or Unholding/Resetting end it)."""
        reported: set[str] = set()
        epoch = self._epoch
        while self.due and epoch == self._epoch:
            self._wake.clear()
            devices = {self.cell.tags[t].device for t in self.due}
            tags = [t for t in self.cell.safe_state if self.cell.tags[t].device in devices]
            reason, self._reason = self._reason or "written again", ""
            written = await self._write(reason, tags, attempt_lost=True)
            failed = {r.tag for r in written.results if r.error is not None}
            if not failed or failed != reported:
                self._emit(written)  # every success, a failure once (not every retry)
            reported = failed
            if not self.due:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(SAFE_RETRY):
                    await self._wake.wait()

    async def confirm(
        self, within: float, give_up: asyncio.Event, *, waiting: Callable[[list[str]], None]
    ) -> dict[str, str]:
        """When the safe state was asked for in this batch, wait (at most `within` s, or until
        `give_up` is set) until every device confirmed it and it reads back as written; returns
        what is still unconfirmed, tag -> why ({} when all is confirmed). `waiting(tags)` is
        called once if it has to wait."""
        if not self.asked or not self.cell.safe_state:
            return {}
        told = False
        # Until a read-back shows otherwise, nothing is confirmed.
        unconfirmed = {t: "not read back yet" for t in self.cell.safe_state}

        async def settle() -> None:
            nonlocal told, unconfirmed
            while True:
                self._changed.clear()
                if self.due:
                    unconfirmed = {t: self._errors.get(t, "not written yet") for t in self.due}
                    tell()
                    if self._keeper is None or self._keeper.done():
                        self._kick("still due, written again")  # a keeper that ended early
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(SAFE_RETRY):
                            await self._changed.wait()
                    continue
                generation = self._generation
                unconfirmed = await self._read_back()
                busy = any(not w.done() for w in self._writers)
                if not unconfirmed and not self.due and not busy:
                    if generation == self._generation:
                        return
                    continue  # written meanwhile: read back what it wrote
                for tag in unconfirmed:
                    self.due[tag] = self.cell.safe_state[tag]
                self._kick("read back other than written, written again")
                tell()
                # Read back again only after a retry period: a device that changes the value
                # on its own must not be written as fast as the bus allows.
                await asyncio.sleep(SAFE_RETRY)

        def tell() -> None:
            nonlocal told
            if not told:
                told = True
                waiting(list(unconfirmed))

        if await _ended_within(settle(), within, give_up):
            return {}
        due = self.due or unconfirmed
        return {t: self._errors.get(t) or unconfirmed.get(t) or "not confirmed" for t in due}

    def _stored(self, tag: str, wanted: Value) -> Value:
        """The safe value as the device stores it (a scaled tag holds whole raw steps)."""
        spec = self.cell.tags[tag]
        return spec.from_raw(spec.to_raw(spec.check_value(wanted)))

    async def _read_back(self) -> dict[str, str]:
        """Read the safe state back: tag -> why, for each tag that does not hold its value."""
        tags = list(self.cell.safe_state)
        read = await self.io.read(tags)
        wrong: dict[str, str] = {}
        for tag in tags:
            value, wanted = read[tag], self.cell.safe_state[tag]
            if value.quality is Quality.BAD or value.value is None:
                wrong[tag] = value.error or "no value read back"
            elif not _holds(value.value, self._stored(tag, wanted)):
                wrong[tag] = f"reads back {value.value!r}, not {wanted!r}"
        return wrong


async def write_safe_state(
    io: TagIO,
    cell: Cell,
    reason: str,
    *,
    tags: Collection[str] | None = None,
    lost: Collection[str] = (),
    locks: Mapping[str, asyncio.Lock] | None = None,
    valid: Callable[[], bool] = lambda: True,
) -> SafeStateWritten:
    """Write the cell's safe state (`tags`: only those), devices in parallel, each device's
    tags in cell-file order, every write attempted whatever the others did; never raises for a
    device error, each result is recorded.

    Devices in `lost` are not waited for: their tags are recorded as not written, for the
    caller to write again once the device answers. `locks`: each device's writes are made
    holding its lock (one safe-state writer per device at a time). Once `valid()` is false
    (the recipe decides the outputs again), no further tag is written.
    """
    wanted = [t for t in cell.safe_state if tags is None or t in tags]
    by_device: dict[str, list[str]] = {}
    for tag in wanted:
        by_device.setdefault(cell.tags[tag].device, []).append(tag)

    async def write_device(device: str, tags: Iterable[str]) -> dict[str, str | None]:
        if locks is None or device in lost:
            return await write_tags(device, tags)
        async with locks[device]:
            return await write_tags(device, tags)

    async def write_tags(device: str, tags: Iterable[str]) -> dict[str, str | None]:
        errors: dict[str, str | None] = {}
        for tag in tags:
            if device not in io.drivers:
                errors[tag] = f"write {tag}: device {device} is not connected"
                continue
            if device in lost:
                errors[tag] = f"{device} is lost: written when it answers again"
                continue
            if not valid():
                errors[tag] = f"write {tag}: not written: the recipe decides the outputs again"
                continue
            try:
                await io.write(tag, cell.safe_state[tag])
            except CellctlError as err:  # DeviceFailed, OutOfRange: recorded, the rest go on
                errors[tag] = str(err)
            except Exception as err:  # a bug must not leave the other tags unwritten either
                log.exception("safe state: writing a tag failed", tag=tag)
                errors[tag] = f"write {tag}: internal error: {type(err).__name__}: {err}"
            else:
                errors[tag] = None
        return errors

    done = await asyncio.gather(*(write_device(d, tags) for d, tags in by_device.items()))
    errors = {tag: error for group in done for tag, error in group.items()}
    results = tuple(SafeWrite(tag, cell.safe_state[tag], errors[tag]) for tag in wanted)
    return SafeStateWritten(reason=reason, results=results)


async def _ended_within(
    work: Coroutine[Any, Any, None], within: float, give_up: asyncio.Event
) -> bool:
    """Run `work` until it ends, `within` s pass or `give_up` is set (then it is cancelled);
    True when it ended by itself (its error, if any, is raised)."""
    ending = asyncio.ensure_future(work)
    gave_up = asyncio.ensure_future(give_up.wait())
    try:
        await asyncio.wait({ending, gave_up}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (ending, gave_up):
            task.cancel()
        await asyncio.gather(ending, gave_up, return_exceptions=True)
    if ending.done() and not ending.cancelled():
        ending.result()  # an error of ours is raised, not taken for "confirmed"
        return True
    return False
