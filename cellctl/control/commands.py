"""The command layer: every operator command reaches the controller here, `(user, command) ->
accepted | refused(reason)`, and the rules that refuse one (the state, a standing trip, a
choice Unhold needs) are written here once.

The terminal's keys, the signals and the demo's fault script all submit through `Commands`; a
refusal changes nothing and is on record as a CommandRefused event.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cellctl.control.executor import StepFailure
from cellctl.control.interlocks import BLOCKED_COMMANDS
from cellctl.control.machine import Command, IllegalCommand, State
from cellctl.control.operator import FailureChoice
from cellctl.errors import CellctlError

if TYPE_CHECKING:  # the controller carries commands out through this module
    from cellctl.control.controller import Controller


class CommandBlocked(CellctlError):
    """A command an active interlock (or a pending choice) refuses; nothing changed."""


async def vet(controller: Controller, command: Command, choice: FailureChoice | None) -> None:
    """Raise IllegalCommand (the state) or CommandBlocked (a trip, a pending choice, a batch run
    already) when `command` may not be carried out now."""
    controller.machine.check(command)
    if command is Command.START and controller.ran:
        raise CommandBlocked(
            f"Start: this controller ran its batch already ({controller.state}); "
            "a new batch is a new run"
        )
    if command in BLOCKED_COMMANDS:
        await controller.interlocks.check_now()
        message = controller.interlocks.blocking_message(command)
        if message:
            raise CommandBlocked(message)
        controller.machine.check(command)  # the state may have moved on meanwhile
    failure = controller.executor.failure
    if command is Command.UNHOLD and failure is not None and choice is None:
        raise CommandBlocked(_choice_needed(failure))


def _choice_needed(failure: StepFailure) -> str:
    """Why Unhold needs a choice for a failed step, or one whose writes the safe state undid."""
    if failure.undone:
        how = "every write again, the wait afresh"
    else:
        unknown = "its outcome is unknown: " if failure.outcome_unknown else ""
        how = f"{unknown}a retry runs the whole step again"
    return f"Unhold: {failure.message}; choose {failure.choices} ({how})"


@dataclass(frozen=True)
class OperatorCommand:
    """A command as an operator gave it: who, which, its cause on record, Unhold's choice."""

    user: str
    command: Command
    cause: str
    choice: FailureChoice | None = None


@dataclass(frozen=True)
class Accepted:
    """The command was carried out: the state it led to."""

    state: State


@dataclass(frozen=True)
class Refused:
    """The command was refused and nothing changed: why, as its CommandRefused event says."""

    reason: str


class Commands:
    """One controller's operator commands: each one accepted, or refused with its reason."""

    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        #: Told of every command as it is given, before it is carried out (the batch record).
        self.heard: list[Callable[[OperatorCommand], None]] = []

    def _given(self, order: OperatorCommand) -> None:
        for listener in self.heard:
            listener(order)

    async def submit(self, order: OperatorCommand) -> Accepted | Refused:
        """Carry the command out now; a refusal is returned, never raised."""
        self._given(order)
        try:
            state = await self.controller.command(
                order.command, cause=order.cause, choice=order.choice, user=order.user
            )
        except (IllegalCommand, CommandBlocked) as refused:
            return Refused(str(refused))
        return Accepted(state)

    def submit_soon(self, order: OperatorCommand) -> None:
        """From a synchronous context (a key, a signal): carried out in a task of the
        controller's, a refusal an event. A Stop before the batch started ends the run there:
        Reset and Start are not issued, nothing of the recipe is written."""
        self._given(order)
        controller = self.controller
        if order.command is Command.STOP and controller.before_start:
            controller.refuse_start(order.cause)
            return
        controller.request(order.command, cause=order.cause, choice=order.choice, user=order.user)
