"""The PackML machine against a reference table written out here (not imported from the code):
every (state, command) pair, state complete, modes, the listener, and a stateful model test."""

from __future__ import annotations

import logging

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from cellctl.control.events import StateChanged
from cellctl.control.machine import (
    Command,
    IllegalCommand,
    IllegalModeChange,
    MachineError,
    Mode,
    PackMLMachine,
    State,
    mermaid,
    state_table_rows,
)

# PackML (ISA-TR88.00.02-2015) written out by hand: state -> {command or "SC": target}.
# Hold from Starting, Unholding, Suspending, Suspended and Unsuspending is the optional
# extension of OPC 30050 that cellctl takes.
_STOP, _ABORT = {"Stop": "Stopping"}, {"Abort": "Aborting"}
REFERENCE: dict[str, dict[str, str]] = {
    "Stopped": {"Reset": "Resetting", **_ABORT},
    "Starting": {**_STOP, "Hold": "Holding", **_ABORT, "SC": "Execute"},
    "Idle": {"Start": "Starting", **_STOP, **_ABORT},
    "Execute": {**_STOP, "Hold": "Holding", "Suspend": "Suspending", **_ABORT, "SC": "Completing"},
    "Completing": {**_STOP, **_ABORT, "SC": "Complete"},
    "Complete": {"Reset": "Resetting", **_STOP, **_ABORT},
    "Resetting": {**_STOP, **_ABORT, "SC": "Idle"},
    "Holding": {**_STOP, **_ABORT, "SC": "Held"},
    "Held": {**_STOP, "Unhold": "Unholding", **_ABORT},
    "Unholding": {**_STOP, "Hold": "Holding", **_ABORT, "SC": "Execute"},
    "Suspending": {**_STOP, "Hold": "Holding", **_ABORT, "SC": "Suspended"},
    "Suspended": {**_STOP, "Hold": "Holding", "Unsuspend": "Unsuspending", **_ABORT},
    "Unsuspending": {**_STOP, "Hold": "Holding", **_ABORT, "SC": "Execute"},
    "Stopping": {**_ABORT, "SC": "Stopped"},
    "Aborting": {"SC": "Aborted"},
    "Aborted": {"Clear": "Clearing"},
    "Clearing": {**_ABORT, "SC": "Stopped"},
}
COMMAND_ORDER = [
    "Reset",
    "Start",
    "Stop",
    "Hold",
    "Unhold",
    "Suspend",
    "Unsuspend",
    "Abort",
    "Clear",
]
MODE_ALLOWS: dict[str, set[str]] = {
    "Production": set(COMMAND_ORDER),
    "Maintenance": set(COMMAND_ORDER),
    "Manual": {"Reset", "Stop", "Abort", "Clear"},
}
MODE_CHANGE_IN = ["Stopped", "Idle", "Complete", "Aborted"]


def reference_legal(state: str, mode: str) -> list[str]:
    """The legal commands by the reference, in command order."""
    return [c for c in COMMAND_ORDER if c in REFERENCE[state] and c in MODE_ALLOWS[mode]]


class Recorder:
    """A listener that keeps every event it hears."""

    def __init__(self) -> None:
        self.events: list[StateChanged] = []

    def __call__(self, event: StateChanged) -> None:
        self.events.append(event)


def machine_in(state: str, mode: str = "Production") -> tuple[PackMLMachine, Recorder]:
    """A machine put in `state` and `mode`, and the recorder listening to it."""
    recorder = Recorder()
    return PackMLMachine(recorder, state=State(state), mode=Mode(mode)), recorder


def test_reference_covers_the_seventeen_states_and_nine_commands() -> None:
    assert sorted(REFERENCE) == sorted(s.value for s in State)
    assert [c.value for c in Command] == COMMAND_ORDER


@pytest.mark.parametrize("command", COMMAND_ORDER)
@pytest.mark.parametrize("state", list(REFERENCE))
def test_every_state_and_command(state: str, command: str) -> None:
    for mode in MODE_ALLOWS:
        machine, recorder = machine_in(state, mode)
        legal = reference_legal(state, mode)
        assert [c.value for c in machine.legal_commands()] == legal
        assert machine.is_legal(Command(command)) is (command in legal)
        if command in legal:
            target = REFERENCE[state][command]
            assert machine.command(Command(command), cause="operator") == State(target)
            assert machine.state == State(target)
            assert [(e.source, e.target, e.command, e.cause) for e in recorder.events] == [
                (State(state), State(target), Command(command), "operator")
            ]
            continue
        with pytest.raises(IllegalCommand) as refused:
            machine.command(Command(command))
        message = str(refused.value)
        assert message.startswith(f"{command} is not ")
        assert f"legal now: {', '.join(legal) or 'none'}" in message
        if command in REFERENCE[state]:  # the table allows it: the mode refuses it
            assert f"not allowed in {mode} mode (state {state})" in message
        else:
            assert f"not legal in {state} (mode {mode})" in message
        assert (machine.state, machine.mode, recorder.events) == (State(state), Mode(mode), [])


@pytest.mark.parametrize("state", list(REFERENCE))
def test_state_complete_in_every_state(state: str) -> None:
    machine, recorder = machine_in(state, "Manual")  # the mode never stops an acting state
    target = REFERENCE[state].get("SC")
    if target is None:
        with pytest.raises(MachineError, match=f"not legal in {state}: it is not an acting state"):
            machine.state_complete()
        assert (machine.state, recorder.events) == (State(state), [])
        return
    assert machine.state_complete(cause="done") == State(target)
    assert machine.state == State(target)
    assert [(e.source, e.target, e.command, e.cause) for e in recorder.events] == [
        (State(state), State(target), None, "done")
    ]


@pytest.mark.parametrize("state", list(REFERENCE))
def test_mode_changes_only_in_stopped_idle_complete_aborted(state: str) -> None:
    for new in ("Maintenance", "Manual"):
        machine, recorder = machine_in(state)
        if state in MODE_CHANGE_IN:
            machine.set_mode(Mode(new))
            assert machine.mode == Mode(new)
        else:
            with pytest.raises(IllegalModeChange) as refused:
                machine.set_mode(Mode(new))
            assert str(refused.value) == (
                f"the mode cannot change from Production to {new} in {state};"
                " it may change only in Stopped, Idle, Complete, Aborted"
            )
            assert machine.mode == Mode.PRODUCTION
        machine.set_mode(machine.mode)  # the same mode is no change, allowed anywhere
        assert (machine.state, recorder.events) == (State(state), [])


def test_stepping_only_outside_production() -> None:
    assert [PackMLMachine(mode=mode).may_step() for mode in Mode] == [False, True, True]


def test_manual_refuses_a_start_by_naming_the_mode() -> None:
    machine, _ = machine_in("Idle", "Manual")
    with pytest.raises(IllegalCommand) as refused:
        machine.command(Command.START)
    assert (
        str(refused.value)
        == "Start is not allowed in Manual mode (state Idle); legal now: Stop, Abort"
    )


def test_refusal_in_a_state_with_no_command_says_it_completes_by_itself() -> None:
    machine, _ = machine_in("Aborting")
    with pytest.raises(IllegalCommand) as refused:
        machine.command(Command.CLEAR)
    assert str(refused.value) == (
        "Clear is not legal in Aborting (mode Production); legal now: none"
        " (Aborting completes by itself)"
    )


def test_a_batch_tells_the_listener_once_per_change_in_order() -> None:
    machine, recorder = machine_in("Stopped")
    steps: list[Command | None] = [Command.RESET, None, Command.START, None, Command.HOLD, None]
    steps += [Command.UNHOLD, None, None, None, Command.RESET, None]
    for step in steps:
        if step is None:
            machine.state_complete()
        else:
            machine.command(step)
    path = [e.source.value for e in recorder.events] + [machine.state.value]
    assert path == [
        "Stopped", "Resetting", "Idle", "Starting", "Execute", "Holding", "Held",
        "Unholding", "Execute", "Completing", "Complete", "Resetting", "Idle",
    ]  # fmt: skip
    assert [e.command for e in recorder.events] == steps
    assert all(
        a.target == b.source for a, b in zip(recorder.events[:-1], recorder.events[1:], strict=True)
    )


def test_a_listener_that_raises_leaves_the_change_made_and_the_error_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[State] = []

    def failing(event: StateChanged) -> None:
        heard.append(event.target)
        raise RuntimeError("queue full")

    machine = PackMLMachine(failing, state=State.EXECUTE)
    with (
        caplog.at_level(logging.ERROR, logger="cellctl.control.machine"),
        pytest.raises(RuntimeError, match="queue full"),
    ):
        machine.command(Command.ABORT)
    assert machine.state == State.ABORTING
    assert heard == [State.ABORTING]
    assert "state change listener failed on Execute -> Aborting" in caplog.text
    with pytest.raises(RuntimeError):
        machine.state_complete()  # the machine goes on working
    assert (machine.state, heard) == (State.ABORTED, [State.ABORTING, State.ABORTED])


def test_machines_do_not_share_state() -> None:
    first, second = PackMLMachine(), PackMLMachine()
    first.command(Command.RESET)
    assert (first.state, second.state) == (State.RESETTING, State.STOPPED)


def test_state_table_rows_are_the_reference() -> None:
    rows = state_table_rows()
    assert rows[0] == ("State", *COMMAND_ORDER, "SC")
    expected = [
        (state, *(targets.get(c, "") for c in [*COMMAND_ORDER, "SC"]))
        for state, targets in REFERENCE.items()
    ]
    assert sorted(rows[1:]) == sorted(expected)


def test_mermaid_draws_every_transition_once() -> None:
    text = mermaid()
    assert "stateDiagram-v2" in text
    edges = {line.strip() for line in text.splitlines() if " --> " in line and "[*]" not in line}
    assert edges == {
        f"{state} --> {target}: {trigger}"
        for state, targets in REFERENCE.items()
        for trigger, target in targets.items()
    }
    assert "[*] --> Stopped" in text


class MachineAgainstReference(RuleBasedStateMachine):
    """Any command, state complete or mode change: the machine does what the reference does."""

    @initialize(state=st.sampled_from(list(REFERENCE)), mode=st.sampled_from(list(MODE_ALLOWS)))
    def start(self, state: str, mode: str) -> None:
        self.recorder = Recorder()
        self.machine = PackMLMachine(self.recorder, state=State(state), mode=Mode(mode))
        self.state, self.mode = state, mode

    def _expect_change(self, source: str, target: str, command: str | None) -> None:
        event = self.recorder.events.pop()
        assert self.recorder.events == []
        assert (event.source, event.target) == (State(source), State(target))
        assert event.command == (None if command is None else Command(command))
        self.state = target

    @rule(command=st.sampled_from(COMMAND_ORDER))
    def command(self, command: str) -> None:
        if command in reference_legal(self.state, self.mode):
            target = REFERENCE[self.state][command]
            assert self.machine.command(Command(command)) == State(target)
            self._expect_change(self.state, target, command)
        else:
            with pytest.raises(IllegalCommand):
                self.machine.command(Command(command))
            assert self.recorder.events == []

    @rule()
    def state_complete(self) -> None:
        target = REFERENCE[self.state].get("SC")
        if target is None:
            with pytest.raises(MachineError):
                self.machine.state_complete()
            assert self.recorder.events == []
        else:
            assert self.machine.state_complete() == State(target)
            self._expect_change(self.state, target, None)

    @rule(mode=st.sampled_from(list(MODE_ALLOWS)))
    def set_mode(self, mode: str) -> None:
        if mode == self.mode or self.state in MODE_CHANGE_IN:
            self.machine.set_mode(Mode(mode))
            self.mode = mode
        else:
            with pytest.raises(IllegalModeChange):
                self.machine.set_mode(Mode(mode))

    @invariant()
    def same_state_mode_and_legal_commands(self) -> None:
        assert (self.machine.state, self.machine.mode) == (State(self.state), Mode(self.mode))
        legal = [c.value for c in self.machine.legal_commands()]
        assert legal == reference_legal(self.state, self.mode)
        assert self.machine.may_step() is (self.mode != "Production")


TestMachineAgainstReference = MachineAgainstReference.TestCase
# 50 runs of up to 50 steps reach every state in every mode; keeps the module under 3 s.
TestMachineAgainstReference.settings = settings(max_examples=50, stateful_step_count=50)
