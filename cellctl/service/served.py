"""One batch of the service and its alarm list: the batch's data, its controller made, stopped
as the service stops, its end on record, and its retirement when the next one is loaded."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.control.batch_record import close_record, end_record, parts_count
from cellctl.control.commands import Commands, OperatorCommand
from cellctl.control.controller import END_STATES, Controller
from cellctl.control.events import BatchEnded, Event
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.machine import Command, Mode, State
from cellctl.control.parts import PartsCount, read_count
from cellctl.errors import CellctlError
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe
from cellctl.service.detail import BatchDetail
from cellctl.service.operator import RemoteOperator
from drivers.base import Value

# The service's logger, not this module's: its lines read as the service's wherever they come from.
log = logging.getLogger("cellctl.service")


@dataclass
class ServedBatch:
    """One batch of the service: its recipe, parameters, controller and record."""

    loaded: LoadedRecipe
    parameters: dict[str, Value]
    controller: Controller
    recorder: BatchRecorder
    operator: RemoteOperator
    commands: Commands
    parts: PartsCount | None
    ended: BatchEnded | None = None
    step: str = ""
    stop_reason: str = ""
    #: The record's end (batch_ended on disk), once the batch ended.
    finishing: asyncio.Task[None] | None = None
    #: Taken up after a crash: its controller's resume_batch says when it ended.
    resumed: bool = False
    #: Who gave commands from where: source (surface and peer) -> user, for the stop reason.
    given_by: dict[str, str] = field(default_factory=dict)
    #: The step tree with each step's state, for the clients that draw it (the web view).
    detail: BatchDetail | None = None


@dataclass
class Alarm:
    """A trip as the alarm list shows it: active until it clears, listed until acknowledged."""

    text: str
    active: bool = True
    acknowledged: bool = False


def make_served(
    loaded: LoadedRecipe,
    parameters: dict[str, Value],
    recorder: BatchRecorder,
    operator_name: str | None,
    state: State,
    *,
    cell: Cell,
    io: TagIO,
    mode: Mode,
    changed: Callable[[], None],
    on_event: Callable[[Event], None],
) -> ServedBatch:
    """A batch's controller (not opened yet) with its record, operator and listeners."""
    operator = RemoteOperator(operator_name, changed)
    controller = Controller(
        loaded,
        parameters,
        io,
        operator,
        mode=mode,
        comm_devices=list(cell.devices),
        ledger=recorder,
        state=state,
    )
    commands = Commands(controller)
    controller.listeners.append(recorder.event)
    commands.heard.append(recorder.command)
    controller.listeners.append(on_event)
    return ServedBatch(
        loaded, parameters, controller, recorder, operator, commands, parts_count(loaded)
    )


async def stop_served(
    served: ServedBatch, safe_wait: float, waiting: Callable[[list[str]], None]
) -> dict[str, str]:
    """Stop the batch as `run` does on SIGTERM, wait for its end and its record's end, and for
    the safe state to be confirmed (at most safe_wait); what is unconfirmed."""
    controller = served.controller
    running = controller.started_at is not None and served.ended is None
    if controller.before_start:
        # As `run` on SIGTERM before its start: Resetting writes nothing more (and
        # stops waiting for `ready`), Start is never issued.
        served.commands.submit_soon(
            OperatorCommand("service", Command.STOP, "SIGTERM before the batch started")
        )
    elif (running or controller.state is State.RESETTING) and (controller.state not in END_STATES):
        with contextlib.suppress(CellctlError):
            await served.commands.submit(
                OperatorCommand("service", Command.STOP, "SIGTERM: the service stops")
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(safe_wait):
                await controller.wait_for(END_STATES)
    if served.finishing is not None:
        await asyncio.wait({served.finishing}, timeout=30)
    return await controller.safe.confirm(safe_wait, asyncio.Event(), waiting=waiting)


async def finish(served: ServedBatch, io: TagIO) -> None:
    """The batch ended: the parts counted, batch_ended on disk."""
    controller = served.controller
    await controller.wait_for(END_STATES)
    if served.parts is not None:
        served.parts.end, served.parts.end_error = await read_count(io, served.parts.counter)
    failed = controller.state is not State.COMPLETE
    started = controller.started_at or time.time()
    ended = BatchEnded(
        state=controller.state,
        duration=time.time() - started,
        steps_done=controller.executor.steps_done,
        faults=tuple(controller.faults),
        cause=(served.stop_reason or controller.cause) if failed else None,
    )
    if not served.resumed:  # resume_batch emits its own
        controller.emit(ended)
    served.ended = ended
    code = exitcodes.OK if not failed else exitcodes.BATCH_NOT_COMPLETE
    await end_record(served.recorder, ended, code, served.parts)


async def retire(served: ServedBatch) -> None:
    """The batch gives the cell up: its controller closed, its record closed."""
    await served.controller.close()
    code = exitcodes.OK
    if served.ended is not None and served.ended.state is not State.COMPLETE:
        code = exitcodes.BATCH_NOT_COMPLETE
    problem = await close_record(served.recorder, served.controller, code, served.parts)
    if problem is not None:
        log.error("batch %s: its record could not be closed: %s", served.recorder.batch, problem)


def produced(served: ServedBatch, io: TagIO) -> int:
    """Parts made so far: the counter now (or at the end) less its start."""
    parts = served.parts
    if parts is None or parts.start is None:
        return 0
    if parts.end is None:
        latest = io.board.latest(parts.counter)
        if latest is None or not isinstance(latest.value, int | float):
            return 0
        now = replace(parts, end=int(latest.value))
        return now.made() or 0
    return parts.made() or 0
