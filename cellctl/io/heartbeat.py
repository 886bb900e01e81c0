"""The controller's heartbeat: a life signal written to each watching device while it runs.

A real cell has each device's PLC watch the line controller's heartbeat: when the value has not
changed for the heartbeat's `timeout`, the PLC brings its outputs to their safe state by itself.
So a controller that dies (kill -9, a power cut, a hung machine) leaves a cell that makes itself
safe. The writer here is supervised: a device that does not answer is logged once per outage,
never ends the writer, and never reaches the caller.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType

from cellctl import cell as cellfile
from cellctl.errors import CellctlError
from cellctl.io.drivers import DeviceFailed
from cellctl.io.session import TagIO
from drivers import codecs
from drivers.base import Value
from drivers.errors import DriverError
from drivers.points import DataType
from drivers.tasks import cancel_and_wait

log = logging.getLogger("cellctl.io.heartbeat")


def next_beat(datatype: DataType, value: Value) -> Value:
    """The value after `value`: a bool toggles, an integer counts up and wraps at its type's end."""
    if datatype is DataType.BOOL:
        return not value
    low, high = codecs.INT_RANGES[datatype]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value < high:
        return low  # at the top (or not a count at all): wrap, as a PLC counter does
    return value + 1


class Heartbeat:
    """Writes each heartbeat of a cell through a TagIO every `period` while entered.

    One task per heartbeat (each has its own period). A beat reads the tag once after every
    outage (and at the start), so the next value always differs from what the device holds.
    """

    def __init__(self, io: TagIO, beats: Sequence[cellfile.Heartbeat]) -> None:
        self.io = io
        self.beats = list(beats)
        self._tasks: list[asyncio.Task[None]] = []
        self._failing: dict[str, str] = {}

    @property
    def failing(self) -> Mapping[str, str]:
        """The heartbeats whose last beat failed, with the reason (tag -> error)."""
        return dict(self._failing)

    async def __aenter__(self) -> Heartbeat:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def start(self) -> None:
        """Start one writer task per heartbeat (no-op when they run already)."""
        if self._tasks:
            return
        for beat in self.beats:
            # On record: the heartbeat is written from now on (every beat would flood the log).
            log.info(
                "heartbeat %s on device %s: written every %g s from now on (the device's "
                "timeout: %g s)",
                beat.tag,
                self.io.cell.tags[beat.tag].device,
                beat.period,
                beat.timeout,
            )
            task = asyncio.create_task(self._run(beat), name=f"heartbeat {beat.tag}")
            task.add_done_callback(self._ended)
            self._tasks.append(task)

    async def stop(self) -> None:
        """Stop every writer and wait for it; the last value written stays on the device."""
        tasks, self._tasks = self._tasks, []
        # Not `await task` under suppress: a cancel aimed at the caller must reach it.
        await cancel_and_wait(tasks)

    @staticmethod
    def _ended(task: asyncio.Task[None]) -> None:
        # A writer ends only when stopped; anything else would leave a device to trip unseen.
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended: %s", task.get_name(), task.exception())

    async def _run(self, beat: cellfile.Heartbeat) -> None:
        loop = asyncio.get_running_loop()
        held: Value | None = None  # what the device holds, as far as the last beat knows
        due = loop.time()
        while True:
            started = loop.time()
            try:
                # A beat later than the device's timeout is worth nothing: bound it there.
                async with asyncio.timeout(beat.timeout):
                    held = await self._beat(beat.tag, held)
            except (CellctlError, DriverError, TimeoutError) as err:
                held = None
                self._failed(beat.tag, str(err) or f"no answer within {beat.timeout:g} s")
            except Exception as err:
                # A bug must not stop the heartbeat (the cell would trip); it is logged once.
                held = None
                self._failed(beat.tag, f"internal error: {err!r}", exc_info=True)
            else:
                self._written(beat.tag)
            # One period after this beat began (or was due, if on time): a slow write beats
            # again at once, a late wake-up does not beat twice in a row (a toggling bit would
            # cancel out), and no burst ever catches up.
            due = max(due, started) + beat.period
            await asyncio.sleep(max(0.0, due - loop.time()))

    async def _beat(self, tag: str, held: Value | None) -> Value:
        """Write the value after `held` (read from the device when unknown); the value written."""
        if held is None:
            current = (await self.io.read([tag]))[tag]
            if current.error is not None or current.value is None:
                raise DeviceFailed(
                    f"read {tag}: {current.error or 'no value'}", device=current.device
                )
            held = current.value
        value = next_beat(self.io.cell.tags[tag].datatype, held)
        await self.io.write(tag, value)
        return value

    def _failed(self, tag: str, why: str, *, exc_info: bool = False) -> None:
        if tag not in self._failing:
            device = self.io.cell.tags[tag].device
            # An error, so that the console shows it: the device is about to stop by itself.
            log.error(
                "heartbeat %s on device %s not written: %s (logged once until written again; "
                "the device brings its outputs to their safe state after its timeout)",
                tag,
                device,
                why,
                exc_info=exc_info,
            )
        self._failing[tag] = why

    def _written(self, tag: str) -> None:
        if self._failing.pop(tag, None) is not None:
            log.info("heartbeat %s written again", tag)
