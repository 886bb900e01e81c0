"""The PackML state model as data (ISA-TR88.00.02-2015 / OPC 30050): the 17 states, the 9
commands, the unit modes, the transition table and what each mode allows."""

from __future__ import annotations

import enum

from cellctl.errors import CellctlError


class State(enum.StrEnum):
    """The 17 PackML states."""

    STOPPED = "Stopped"
    STARTING = "Starting"
    IDLE = "Idle"
    EXECUTE = "Execute"
    COMPLETING = "Completing"
    COMPLETE = "Complete"
    RESETTING = "Resetting"
    HOLDING = "Holding"
    HELD = "Held"
    UNHOLDING = "Unholding"
    SUSPENDING = "Suspending"
    SUSPENDED = "Suspended"
    UNSUSPENDING = "Unsuspending"
    STOPPING = "Stopping"
    ABORTING = "Aborting"
    ABORTED = "Aborted"
    CLEARING = "Clearing"


class Command(enum.StrEnum):
    """The 9 PackML commands."""

    RESET = "Reset"
    START = "Start"
    STOP = "Stop"
    HOLD = "Hold"
    UNHOLD = "Unhold"
    SUSPEND = "Suspend"
    UNSUSPEND = "Unsuspend"
    ABORT = "Abort"
    CLEAR = "Clear"


class Mode(enum.StrEnum):
    """Unit modes: Production runs released recipes; Maintenance also steps and breaks; Manual
    runs no recipe (commissioning by hand: read, force, reset, stop)."""

    PRODUCTION = "Production"
    MAINTENANCE = "Maintenance"
    MANUAL = "Manual"


S, C = State, Command

#: Acting states and the state each goes to by itself once its work is done ("state complete").
STATE_COMPLETE: dict[State, State] = {
    S.STARTING: S.EXECUTE,
    S.EXECUTE: S.COMPLETING,  # the recipe has run to its end
    S.COMPLETING: S.COMPLETE,
    S.RESETTING: S.IDLE,
    S.HOLDING: S.HELD,
    S.UNHOLDING: S.EXECUTE,
    S.SUSPENDING: S.SUSPENDED,
    S.UNSUSPENDING: S.EXECUTE,
    S.STOPPING: S.STOPPED,
    S.ABORTING: S.ABORTED,
    S.CLEARING: S.STOPPED,
}

_STOPPABLE = (
    S.IDLE, S.STARTING, S.EXECUTE, S.COMPLETING, S.COMPLETE, S.RESETTING, S.HOLDING, S.HELD,
    S.UNHOLDING, S.SUSPENDING, S.SUSPENDED, S.UNSUSPENDING,
)  # fmt: skip
# Hold from Starting, Unholding and the Suspend states is the optional extension of the 2015
# model (the dashed lines of OPC 30050 figure 15): an interlock that holds must be able to
# hold the batch in every state that leads to Execute.
_HOLDABLE = (S.STARTING, S.EXECUTE, S.UNHOLDING, S.SUSPENDING, S.SUSPENDED, S.UNSUSPENDING)

#: (state, command) -> target state. A pair that is not here is refused.
TRANSITIONS: dict[tuple[State, Command], State] = {
    (S.STOPPED, C.RESET): S.RESETTING,
    (S.COMPLETE, C.RESET): S.RESETTING,
    (S.IDLE, C.START): S.STARTING,
    **{(state, C.STOP): S.STOPPING for state in _STOPPABLE},
    **{(state, C.HOLD): S.HOLDING for state in _HOLDABLE},
    (S.HELD, C.UNHOLD): S.UNHOLDING,
    (S.EXECUTE, C.SUSPEND): S.SUSPENDING,
    (S.SUSPENDED, C.UNSUSPEND): S.UNSUSPENDING,
    **{(state, C.ABORT): S.ABORTING for state in State if state not in (S.ABORTING, S.ABORTED)},
    (S.ABORTED, C.CLEAR): S.CLEARING,
}

#: The commands each mode allows (Manual runs no recipe: nothing starts, holds or suspends).
MODE_COMMANDS: dict[Mode, frozenset[Command]] = {
    Mode.PRODUCTION: frozenset(Command),
    Mode.MAINTENANCE: frozenset(Command),
    Mode.MANUAL: frozenset({C.RESET, C.STOP, C.ABORT, C.CLEAR}),
}

#: The states in which the mode may change.
MODE_CHANGE_STATES = frozenset({S.STOPPED, S.IDLE, S.COMPLETE, S.ABORTED})


class MachineError(CellctlError):
    """A command or mode change the machine refuses; nothing changed."""


class IllegalCommand(MachineError):
    """A command that is not legal in the current state and mode."""


class IllegalModeChange(MachineError):
    """A mode change outside Stopped, Idle, Complete and Aborted."""
