"""The PackML machine: follows the table of cellctl.control.packml, says which commands are
legal now and refuses the others with a message that names the state, the mode and the legal
commands.

The machine is a synchronous `transitions` Machine whose callbacks only record the change and
tell a listener; the controller does the work of each acting state in its own tasks (see
DESIGN §7: async callbacks could be cancelled or reordered and cut a safe-state write short).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from transitions import EventData, Machine

from cellctl.control.events import StateChanged
from cellctl.control.packml import (
    MODE_CHANGE_STATES,
    MODE_COMMANDS,
    STATE_COMPLETE,
    TRANSITIONS,
    Command,
    IllegalCommand,
    IllegalModeChange,
    MachineError,
    Mode,
    State,
)

__all__ = [
    "MODE_CHANGE_STATES",
    "MODE_COMMANDS",
    "STATE_COMPLETE",
    "TRANSITIONS",
    "Command",
    "IllegalCommand",
    "IllegalModeChange",
    "MachineError",
    "Mode",
    "PackMLMachine",
    "State",
    "mermaid",
    "state_table_rows",
]


#: The trigger name of "state complete": an acting state's work is done (PackML's "SC").
SC = "SC"

log = logging.getLogger("cellctl.control.machine")


def _transition_config() -> list[dict[str, str]]:
    """TRANSITIONS and STATE_COMPLETE as `transitions` transition configs, in table order."""
    configs = [
        {"trigger": command.value, "source": source.value, "dest": target.value}
        for (source, command), target in TRANSITIONS.items()
    ]
    configs += [
        {"trigger": SC, "source": source.value, "dest": target.value}
        for source, target in STATE_COMPLETE.items()
    ]
    return configs


class _Model:
    """The object `transitions` keeps its state on (so its dynamic attributes stay off the API)."""


class PackMLMachine:
    """The PackML state machine of one unit: commands, state complete and the unit mode.

    Synchronous: every call finishes the change before it returns, then tells the listener.
    A refused command or mode change raises and changes nothing. A listener that raises
    does not undo the change (the machine is whole, in the new state): its error is logged
    and propagates to the caller of `command` or `state_complete`, because a change the
    controller did not hear about must not pass silently.
    """

    def __init__(
        self,
        listener: Callable[[StateChanged], None] | None = None,
        *,
        state: State = State.STOPPED,
        mode: Mode = Mode.PRODUCTION,
    ) -> None:
        self._listener = listener
        self._mode = mode
        self._model = _Model()
        self._changed: StateChanged | None = None
        # send_event: the callback gets the EventData (source, dest, trigger, cause) it records.
        self._machine = Machine(
            model=self._model,
            states=[s.value for s in State],
            transitions=_transition_config(),
            initial=state.value,
            auto_transitions=False,
            queued=False,
            send_event=True,
            after_state_change=self._record,
        )

    @property
    def state(self) -> State:
        """The current state."""
        return State(self._machine.get_model_state(self._model).name)

    @property
    def mode(self) -> Mode:
        """The current unit mode."""
        return self._mode

    def legal_commands(self) -> list[Command]:
        """The commands legal now (the table and the mode allow them), in Command order."""
        return [c for c in Command if self.is_legal(c)]

    def is_legal(self, command: Command) -> bool:
        """Whether `command` is legal in the current state and mode."""
        return (self.state, command) in TRANSITIONS and command in MODE_COMMANDS[self._mode]

    def may_step(self) -> bool:
        """Whether stepping and breakpoints are allowed (any mode but Production)."""
        return self._mode is not Mode.PRODUCTION

    def check(self, command: Command) -> None:
        """IllegalCommand naming the state, the mode and the legal commands, unless legal now."""
        if not self.is_legal(command):
            raise IllegalCommand(self._refusal(command))

    def command(self, command: Command, cause: str = "", interlock: str | None = None) -> State:
        """Carry out `command` (taken by the trip of `interlock`, if one); the new state.
        IllegalCommand (nothing changed) if not legal."""
        self.check(command)
        return self._fire(command.value, command, cause, interlock)

    def state_complete(self, cause: str = "") -> State:
        """The acting state's work is done: go on to its next state; the new state."""
        state = self.state
        if state not in STATE_COMPLETE:
            acting = ", ".join(STATE_COMPLETE)
            raise MachineError(
                f"state complete is not legal in {state}: it is not an acting state"
                f" (acting states: {acting})"
            )
        return self._fire(SC, None, cause)

    def set_mode(self, mode: Mode) -> None:
        """Change the unit mode; IllegalModeChange outside Stopped, Idle, Complete and Aborted.

        Setting the mode the unit is already in changes nothing and is never refused.
        """
        if mode is self._mode:
            return
        if self.state not in MODE_CHANGE_STATES:
            allowed = ", ".join(s for s in State if s in MODE_CHANGE_STATES)
            raise IllegalModeChange(
                f"the mode cannot change from {self._mode} to {mode} in {self.state};"
                f" it may change only in {allowed}"
            )
        self._mode = mode

    def _refusal(self, command: Command) -> str:
        """Why `command` is refused now, naming the state, the mode and what is legal."""
        state = self.state
        legal = ", ".join(self.legal_commands()) or "none"
        if state in STATE_COMPLETE and legal == "none":
            legal += f" ({state} completes by itself)"
        if (state, command) in TRANSITIONS:  # the table allows it: the mode is what forbids it
            return (
                f"{command} is not allowed in {self._mode} mode (state {state}); legal now: {legal}"
            )
        return f"{command} is not legal in {state} (mode {self._mode}); legal now: {legal}"

    def _fire(
        self, trigger: str, command: Command | None, cause: str, interlock: str | None = None
    ) -> State:
        """Run one `transitions` trigger, then tell the listener what changed."""
        self._changed = None
        # Checked legal above, so the trigger cannot be refused or fail a condition.
        done = self._machine.events[trigger].trigger(
            self._model, command=command, cause=cause, interlock=interlock
        )
        changed = self._changed
        if not done or changed is None:  # a table or `transitions` bug, never an operator's
            raise MachineError(f"{trigger} did not change {self.state}")
        if self._listener is not None:
            try:
                self._listener(changed)
            except Exception:
                log.exception(
                    "state change listener failed on %s -> %s", changed.source, changed.target
                )
                raise
        return changed.target

    def _record(self, event: EventData) -> None:
        """The `transitions` callback: only record the change (the listener runs after)."""

        assert event.transition is not None
        self._changed = StateChanged(
            source=State(event.transition.source),
            target=self.state,
            command=event.kwargs["command"],
            cause=event.kwargs["cause"],
            interlock=event.kwargs["interlock"],
        )


def state_table_rows() -> list[tuple[str, ...]]:
    """The transition table for `cellctl states`: a header row, then one row per state with
    the target of each command ('' where refused) and of state complete (SC)."""
    rows: list[tuple[str, ...]] = [("State", *(c.value for c in Command), SC)]
    for state in State:
        targets = [TRANSITIONS.get((state, command)) for command in Command]
        targets.append(STATE_COMPLETE.get(state))
        rows.append((state.value, *(t.value if t else "" for t in targets)))
    return rows


def mermaid() -> str:
    """The state model as a mermaid stateDiagram-v2 (drawn by transitions, no graphviz)."""
    # Imported here: the diagram extension is only needed by `cellctl states --mermaid`.
    from transitions.extensions import GraphMachine

    machine = GraphMachine(
        states=[s.value for s in State],
        transitions=_transition_config(),
        initial=State.STOPPED.value,
        auto_transitions=False,
        graph_engine="mermaid",
    )
    text = str(machine.get_combined_graph().draw(None))
    # transitions writes its title as a bare front-matter line, which mermaid ignores (it
    # reads YAML): keep the diagram and give it valid front matter.
    if text.startswith("---\n"):
        text = text.split("\n---\n", 1)[1]
    return "---\ntitle: PackML state model\n---\n" + text
