"""The demo's fault script (`cellctl demo --fault`, `run --sim --fault`): a plant fault raised
mid-batch and cleared again, the demo then playing the operator who unholds."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cellctl.control.commands import Commands, OperatorCommand
from cellctl.control.controller import Controller
from cellctl.control.events import Event, StepStarted, TagWritten, TripCleared
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice

if TYPE_CHECKING:  # imported when --sim is given: it loads every simulator
    from cellctl.io.sim import CellSimulator

#: Who the batch record names for the demo's Unhold.
DEMO_USER = "demo"
#: Seconds the hold and its safe state stay on show before the fault is cleared.
SHOW_HOLD = 1.5


class DemoFault:
    """One plant fault of the demo, raised as the second round begins and cleared once Held."""

    def __init__(
        self, commands: Commands, simulator: CellSimulator, device: str, name: str
    ) -> None:
        self.commands = commands
        self.controller: Controller = commands.controller
        self.simulator = simulator
        self.device = device
        self.name = name
        #: True while the hold is the demo's own: it unholds by itself (nobody else need).
        self.busy = False

    async def run(self) -> None:
        """Raise the fault as the second round begins, clear it once Held, then Unhold
        (re-running the held step when the safe state undid its writes: the demo's choice).
        A round that begins with a set step has it raised once that step's first write is
        confirmed: the hold lands after that write, never just before it."""
        controller = self.controller
        second_round = asyncio.Event()
        cleared = asyncio.Event()
        first: list[StepStarted] = []  # the second round's first step

        def watch(event: Event) -> None:
            if isinstance(event, StepStarted) and event.round == 2:
                if first or event.kind != "set":
                    second_round.set()  # a step that does not write, or the next one
                else:
                    first.append(event)
            elif isinstance(event, TagWritten) and first and event.path == first[0].path:
                second_round.set()
            if isinstance(event, TripCleared) and not controller.interlocks.active:
                cleared.set()  # every trip is gone, not only one of them

        controller.listeners.append(watch)
        try:
            await second_round.wait()
            self.busy = True  # this hold is the demo's own: it unholds by itself
            self.simulator.fault(self.device, self.name, True)
            await controller.wait_for({State.HELD, State.STOPPED, State.ABORTED})
            if controller.state is not State.HELD:
                return
            # Let the people watching see the hold and the safe state before it is cleared.
            await asyncio.sleep(SHOW_HOLD)
            self.simulator.fault(self.device, self.name, False)
            await cleared.wait()
            await self.commands.submit(self._unhold())  # a refusal changes nothing
        finally:
            self.busy = False
            controller.wake_waiters()  # a run_batch waiting in Held looks again

    def _unhold(self) -> OperatorCommand:
        """The demo's Unhold, with its choice when the safe state undid the held step."""
        cause = f"demo: {self.device} {self.name} restored"
        choice = None
        if (question := self.controller.executor.failure) is not None and question.undone:
            # The demo plays the operator: the safe state undid the step, so it runs again.
            choice = FailureChoice.RETRY
            cause += f"; the demo's choice: re-run ({question.message})"
        return OperatorCommand(DEMO_USER, Command.UNHOLD, cause, choice)
