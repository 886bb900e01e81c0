"""The handlers of the command layer's requests but a load: a PackML command, mode, ack,
step, breakpoints, force and unforce. Each is given what it reads and changes; bad input raises
BadValue or UnknownTag (the command layer refuses it as input), a refusal is returned."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from pathlib import Path

from cellctl.cell import Cell
from cellctl.cell.tags import parse_value
from cellctl.control.commands import Accepted as CommandAccepted
from cellctl.control.commands import OperatorCommand
from cellctl.control.events import ModeChanged
from cellctl.control.journal.recorder import WriteRecord
from cellctl.control.journal.store import SqliteStore
from cellctl.control.machine import Command, IllegalModeChange, Mode, State
from cellctl.control.operator import FailureChoice, StepChoice
from cellctl.errors import BadValue, CellctlError
from cellctl.io.session import TagIO
from cellctl.recipe import step_ids
from cellctl.service.api import Accepted, Caller, RefusalKind, Refused, Request
from cellctl.service.served import Alarm, ServedBatch

#: States in which no step of a recipe runs: a force may be written then.
FORCE_STATES = frozenset(
    {State.STOPPED, State.IDLE, State.HELD, State.SUSPENDED, State.COMPLETE, State.ABORTED}
)

#: What Unhold's question calls a choice, for the FailureChoice it is.
_SAID = {"re-run": "retry", "rerun": "retry"}


async def packml_command(
    caller: Caller,
    served: ServedBatch,
    request: Request,
    alarms: Mapping[str, Alarm],
    heard: Callable[[], None],
) -> Accepted | Refused:
    """A PackML command, through the batch's command layer; `heard()` is called once that
    layer has it (its record has the command from there on)."""
    command = request.command
    assert command is not None
    choice = None
    if request.choice:
        try:
            # Unhold's question says "re-run" for a step the safe state undid: the same choice.
            said = request.choice.strip().lower()
            choice = FailureChoice(_SAID.get(said, said))
        except ValueError:
            raise BadValue(f"choice {request.choice!r}: write retry (re-run) or skip") from None
    if command is Command.RESET:
        unacknowledged = [n for n, a in alarms.items() if not a.acknowledged]
        if unacknowledged:
            return Refused(
                f"Reset: trips not acknowledged: {', '.join(unacknowledged)} "
                "(acknowledge them first)",
                RefusalKind.STATE,
            )
    controller = served.controller
    if command is Command.START and controller.state is State.IDLE and served.parts:
        # The count before the batch, read fresh and on disk before Start (as `run`).
        from cellctl.control.batch_record import count_start

        await count_start(served.parts, controller, served.recorder)
    source = " ".join(p for p in (caller.via, caller.peer) if p)
    heard()  # the batch's record has it from here on
    if len(served.given_by) < 1000:  # bounded: one entry per client connection
        served.given_by[source] = caller.name
    answer = await served.commands.submit(OperatorCommand(caller.name, command, source, choice))
    if isinstance(answer, CommandAccepted):
        return Accepted(str(answer.state))
    return Refused(answer.reason, RefusalKind.STATE)


def parse_mode(text: str) -> Mode:
    """The mode a client wrote (BadValue names the modes)."""
    try:
        return Mode(text.strip().capitalize())
    except ValueError:
        raise BadValue(f"mode {text!r}: write {', '.join(m.value for m in Mode)}") from None


def set_mode(served: ServedBatch | None, mode: Mode) -> Accepted | Refused:
    """Put the loaded batch (if any) in `mode`; the service takes it when accepted."""
    dropped: list[str] = []
    if served is not None:
        try:
            served.controller.machine.set_mode(mode)
        except IllegalModeChange as illegal:
            return Refused(str(illegal), RefusalKind.STATE)
        executor = served.controller.executor
        if mode is Mode.PRODUCTION:
            # Production never pauses: stepping ends and the breakpoints go with it.
            executor.step_mode = False
            dropped, executor.breakpoints = sorted(executor.breakpoints), frozenset()
        served.controller.emit(ModeChanged(mode=mode))
    if dropped:
        return Accepted(f"mode {mode} (breakpoints removed: {', '.join(dropped)})")
    return Accepted(f"mode {mode}")


def acknowledge(alarms: dict[str, Alarm]) -> Accepted:
    """Every trip acknowledged: the cleared ones leave the list, the active ones stay."""
    cleared = [n for n, a in alarms.items() if not a.active]
    for name in cleared:
        del alarms[name]
    for alarm in alarms.values():
        alarm.acknowledged = True
    active = ", ".join(alarms) or "none"
    return Accepted(f"acknowledged {len(cleared)} cleared trips; active now: {active}")


def step(served: ServedBatch, text: str) -> Accepted | Refused:
    """The paused step decided (run, skip, ...), or stepping begun (Maintenance only)."""
    try:
        choice = StepChoice(text.strip().lower())
    except ValueError:
        raise BadValue(f"step {text!r}: write {', '.join(c.value for c in StepChoice)}") from None
    controller = served.controller
    if not controller.machine.may_step():
        return Refused(
            f"step: stepping needs Maintenance mode, not {controller.machine.mode}",
            RefusalKind.STATE,
        )
    if served.operator.paused is not None:
        return Accepted(served.operator.decide(choice))
    if choice is StepChoice.RUN and controller.state in (
        State.EXECUTE,
        State.IDLE,
        State.STOPPED,
        State.HELD,
    ):
        controller.executor.step_mode = True
        return Accepted("stepping: the batch pauses before its next step")
    return Refused(f"step {choice}: no step is paused", RefusalKind.STATE)


def set_breakpoint(served: ServedBatch, step_id: str, *, add: bool) -> Accepted | Refused:
    """A breakpoint added before a step of the recipe (Maintenance only), or removed."""
    controller = served.controller
    executor = controller.executor
    if add:
        ids = step_ids(served.loaded.recipe)
        if step_id not in ids:
            from cellctl.errors import did_you_mean

            raise BadValue(
                f"recipe {served.loaded.identity.name} has no step {step_id!r}"
                f"{did_you_mean(step_id, ids)}"
            )
        if not controller.machine.may_step():
            return Refused(
                f"break add {step_id}: breakpoints need Maintenance mode, not "
                f"{controller.machine.mode}",
                RefusalKind.STATE,
            )
        executor.breakpoints = executor.breakpoints | {step_id}
        return Accepted(f"breakpoint at {step_id}")
    if step_id not in executor.breakpoints:
        raise BadValue(f"no breakpoint at {step_id!r}")
    executor.breakpoints = executor.breakpoints - {step_id}
    return Accepted(f"breakpoint at {step_id} removed")


async def force(
    caller: Caller,
    tag: str,
    text: str,
    *,
    cell: Cell,
    io: TagIO,
    journal: Path,
    mode: Mode,
    served: ServedBatch | None,
    forced: dict[str, str],
) -> Accepted | Refused:
    """A tag written by hand (not in Production, not while a recipe runs), its intent and
    outcome on record; `forced` lists it."""
    value = parse_value(cell, tag, text)  # UnknownTag, BadValue: bad input
    if mode is Mode.PRODUCTION:
        return Refused(
            f"force {tag}: forcing needs Maintenance or Manual mode, not Production",
            RefusalKind.STATE,
        )
    state = served.controller.state if served is not None else State.STOPPED
    if state not in FORCE_STATES:
        return Refused(
            f"force {tag}: not while a recipe runs ({state}); hold it first",
            RefusalKind.STATE,
        )
    record = WriteRecord(
        SqliteStore(journal),
        {"cell": cell.cell, "operator": caller.name, "forced": True},
    )
    try:
        intent = await asyncio.to_thread(record.intent, tag, value)
        error: str | None = None
        try:
            await io.write(tag, value)
        except Exception as failed:  # the device's answer, recorded and returned
            error = f"{type(failed).__name__}: {failed}"
        await asyncio.to_thread(record.confirmed, intent, error)
    finally:
        await asyncio.to_thread(record.close)
    if error is not None:
        raise CellctlError(f"force {tag}: the device refused or did not answer: {error}")
    forced[tag] = text
    return Accepted(f"forced {tag} = {value}")


def unforce(forced: dict[str, str], tag: str) -> Accepted:
    """A tag no longer listed as forced (its value stays until written)."""
    if tag not in forced:
        raise BadValue(f"unforce {tag}: tag {tag!r} is not forced")
    del forced[tag]
    return Accepted(f"unforced {tag} (the device keeps its value until written)")
