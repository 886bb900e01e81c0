"""The operator's hands on a running batch: the terminal's keys, Ctrl-C and SIGTERM, each turned
into a command through the command layer (cellctl.control.commands), and the key hint that the
live view shows (only keys whose command the machine allows now)."""

from __future__ import annotations

from cellctl.cli.keys import TerminalKeys, TerminalOperator
from cellctl.cli.views.run import RunModel
from cellctl.control.commands import Commands, OperatorCommand
from cellctl.control.controller import Controller
from cellctl.control.events import Event, StateChanged, UnholdAsks
from cellctl.control.executor import StepFailure
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice

#: The key hint of the live view after `u` in Held with a failed step (OperatorHands.keys_now
#: builds the others from what the key loop and the machine accept now).
HINT_CHOICE = "the step failed: r retry it · s skip it · any other key: back"
#: How the hint names each command a key asks for.
_DOES = {
    Command.HOLD: "hold",
    Command.UNHOLD: "unhold",
    Command.SUSPEND: "suspend",
    Command.UNSUSPEND: "unsuspend",
    Command.STOP: "stop",
    Command.ABORT: "abort",
}
#: What r and s choose for a failed or undone step on Unhold.
_CHOICE_KEYS = {"r": FailureChoice.RETRY, "s": FailureChoice.SKIP}


class OperatorHands:
    """The keys and signals of one `cellctl run`, as commands to its controller."""

    def __init__(
        self,
        commands: Commands,
        model: RunModel,
        terminal: TerminalOperator | None,
        user: str | None,
        *,
        interactive: bool,
    ) -> None:
        self.commands = commands
        self.controller: Controller = commands.controller
        self.model = model
        #: The operator at the terminal, when there is one (it takes every key while it waits).
        self.terminal = terminal
        #: Who gives the commands, as the batch record names them.
        self.user = user or "the operator"
        self.interactive = interactive
        self.interrupts = 0
        #: `u` was pressed in Held with a failed step: the next key chooses retry or skip.
        self.choosing = False

    # -- what the view shows ----------------------------------------------------------------

    def state_changed(self, event: Event) -> None:
        """The controller's listener: the question Unhold asks, and Ctrl-C's count, kept."""
        if isinstance(event, UnholdAsks):
            # Asked while held, after Held was entered (a lost device's safe state confirmed
            # later undid the step): the question and its keys show now.
            self._show_question(self.controller.state)
            return
        if not isinstance(event, StateChanged):
            return
        self.choosing = False
        self._show_question(event.target)
        if event.target is State.EXECUTE:
            self.interrupts = 0  # running again: the next Ctrl-C holds again

    def _show_question(self, state: State) -> None:
        """Held with a step whose writes the safe state undid: the question the executor asks
        first (the one an answer goes to) shows, with its keys; otherwise none."""
        question = self._undone() if state is State.HELD else None
        self.model.question = question.message if question is not None else None

    def keys_now(self) -> str:
        """The live view's hint: the keys that act now, as the key loop (read_keys) and Ctrl-C
        (on_sigint) take them, each only where the machine allows its command now."""
        controller = self.controller
        if self.model.ended is not None:
            return ""
        if controller.before_start:
            return "Ctrl-C cancel the batch"  # on_sigint: the batch is not started
        legal = controller.machine.is_legal
        acts: dict[str, list[str]] = {}

        def add(key: str, command: Command) -> None:
            if legal(command):
                acts.setdefault(_DOES[command], []).append(key)

        # A prompt or a step pause takes every key typed (their own rows name them).
        typed = self.terminal is None or not self.terminal.waiting
        if typed and controller.state is State.HELD:
            if self._undone() is not None:
                return ""  # the question's own row names its keys
            if self.choosing:
                return HINT_CHOICE
            add("u", Command.UNHOLD)
            add("a", Command.ABORT)  # as Ctrl-C does in Held
        else:
            on_sigint = self._sigint_command()
            add("Ctrl-C", on_sigint)
            if typed:
                add("h", Command.HOLD)
                add("p", Command.SUSPEND)
                add("p", Command.UNSUSPEND)
            if on_sigint is not Command.ABORT:
                add("Ctrl-C twice", Command.ABORT)
        return " · ".join(f"{' or '.join(keys)} {does}" for does, keys in acts.items())

    def _sigint_command(self) -> Command:
        """What the next Ctrl-C asks for: Abort after an earlier one or in Held, else Hold
        where it is legal, else Stop."""
        controller = self.controller
        if self.interrupts >= 1 or controller.state is State.HELD:
            return Command.ABORT
        return Command.HOLD if controller.machine.is_legal(Command.HOLD) else Command.STOP

    def _undone(self) -> StepFailure | None:
        """The question Unhold asks now: a held step whose writes the safe state undid."""
        failure = self.controller.executor.failure
        return failure if failure is not None and failure.undone else None

    # -- commands ---------------------------------------------------------------------------

    def _command(self, command: Command, how: str, choice: FailureChoice | None = None) -> None:
        # A refusal is an event (CommandRefused) that the view shows.
        cause = f"{self.user} ({how})"
        self.commands.submit_soon(OperatorCommand(self.user, command, cause, choice))

    def on_sigint(self) -> None:
        """Ctrl-C or SIGINT: before the start, no batch; then Hold (or Stop), then Abort."""
        if self.controller.before_start:
            # A Stop before the start: Reset and Start are not issued, nothing is written.
            cause = "SIGINT before the batch started"
            self.commands.submit_soon(OperatorCommand(self.user, Command.STOP, cause))
            return
        command = self._sigint_command()
        self.interrupts += 1
        self._command(command, "Ctrl-C" if self.interactive else "SIGINT")

    def on_sigterm(self) -> None:
        """SIGTERM: before the start, no batch (nothing written); then Stop."""
        if self.controller.before_start:
            cause = "SIGTERM before the batch started"
            self.commands.submit_soon(OperatorCommand(self.user, Command.STOP, cause))
            return
        self._command(Command.STOP, "SIGTERM")

    async def read_keys(self, keys: TerminalKeys) -> None:
        """Take the terminal's keys until its input ends (then nobody can Unhold any more)."""
        while (key := await keys.get()) != "":
            if self.terminal is not None and self.terminal.waiting:
                self.terminal.feed(key)
            else:
                self._key(key)

    def _key(self, key: str) -> None:
        """One key typed while no prompt or step pause waits for keys."""
        state = self.controller.state
        if state is State.HELD and self._undone() is not None and key in ("r", "s", "u"):
            # Asked at once: r re-runs the step from its start, s skips it (a aborts).
            if key != "u":
                self._command(Command.UNHOLD, f"key {key}", _CHOICE_KEYS[key])
        elif self.choosing:
            self.choosing = False
            if key in _CHOICE_KEYS:
                self._command(Command.UNHOLD, f"key u, then {key}", _CHOICE_KEYS[key])
        elif key == "h":
            self._command(Command.HOLD, "key h")
        elif key == "p":  # an external cause (starved, blocked): pause, write nothing
            suspended = state is State.SUSPENDED
            self._command(Command.UNSUSPEND if suspended else Command.SUSPEND, "key p")
        elif key == "u" and state is State.HELD:
            if self.controller.executor.failure is not None:
                self.choosing = True
            else:
                self._command(Command.UNHOLD, "key u")
        elif key == "a" and state is State.HELD:
            self._command(Command.ABORT, "key a")
