"""The service's batches, one after another: the next one loaded (its record started, its
controller opened in the state the cell is in), one taken up after a crash, and the events of
the batch in charge (and of the standby before it): its alarms, step, stop reason and end.

A part of CellService (cellctl.service.core), as ActingStates is of the Controller: the
batches and the service share its state (the batch in charge, the standby, the alarm list).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from cellctl.cell import Cell
from cellctl.control.batch_record import hold_on_failure, start_record
from cellctl.control.controller import END_STATES
from cellctl.control.events import (
    Event,
    StateChanged,
    StepEnded,
    StepStarted,
    TripCleared,
    Tripped,
    WaitProgress,
)
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.journal.store import SqliteStore
from cellctl.control.machine import Mode, State
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe
from cellctl.recipe.plan import make_plan
from cellctl.service.api import Accepted, Caller, RefusalKind, Refused, Request
from cellctl.service.detail import BatchDetail
from cellctl.service.served import Alarm, ServedBatch, finish, make_served, retire
from cellctl.service.shelf import RecipeShelf
from cellctl.service.standby import Standby
from drivers.base import Value

if TYPE_CHECKING:
    from cellctl.service.core import ServiceOptions

#: States from which the next batch may be loaded (the last one has ended, or never started).
LOAD_STATES = frozenset({State.STOPPED, State.IDLE, State.COMPLETE, State.ABORTED})


class ServedBatches:
    """CellService's batches: loaded, taken up, and the events of the one in charge."""

    # What the batches use of the service (set by CellService.__init__).
    cell: Cell
    io: TagIO
    options: ServiceOptions
    shelf: RecipeShelf
    recipes: tuple[str, ...]
    mode: Mode
    served: ServedBatch | None
    standby: Standby
    alarms: dict[str, Alarm]

    if TYPE_CHECKING:

        def _changed(self) -> None: ...

        def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]: ...

        async def look_at_recipes(self) -> None: ...

    # -- events of the batch ------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        """Every event of the batch's controller (and the standby's)."""
        served = self.served
        shown = served is not None and served.detail is not None and served.detail.apply(event)
        if isinstance(event, WaitProgress) and not shown:
            return  # a wait looked again, no status changes: every poll cycle would rebuild it
        if isinstance(event, Tripped):
            self.alarms[event.interlock] = Alarm(event.message)
        elif isinstance(event, TripCleared):
            alarm = self.alarms.get(event.interlock)
            if alarm is not None:
                alarm.active = False
                if alarm.acknowledged:
                    del self.alarms[event.interlock]
        elif served is not None and isinstance(event, StepStarted):
            served.step = f"{event.path} {event.label}"
        elif (
            served is not None
            and isinstance(event, StepEnded)
            and served.step.startswith(f"{event.path} ")
        ):
            served.step = ""
        elif isinstance(event, StateChanged) and served is not None:
            taken_up = event.target is State.HELD and event.source is State.STOPPED  # resumed
            if event.target in (State.HOLDING, State.STOPPING, State.ABORTING) or taken_up:
                served.stop_reason = event.cause or ""
                who = served.given_by.get(event.cause or "")
                if event.command is not None and who is not None:  # a client's, not a trip's
                    served.stop_reason = f"{event.command} by {who} ({event.cause})"
            if (
                event.target in END_STATES
                and served.controller.started_at is not None
                and served.ended is None
                and served.finishing is None
            ):
                served.finishing = self._spawn(self._finish(served), "the batch's end")
        self._changed()

    async def _finish(self, served: ServedBatch) -> None:
        """The batch ended: the parts counted, batch_ended on disk."""
        await finish(served, self.io)
        self._changed()

    # -- loading a batch -------------------------------------------------------------------------

    async def _load(self, caller: Caller, request: Request) -> Accepted | Refused:
        served = self.served
        state = served.controller.state if served is not None else State.STOPPED
        if served is not None and (
            state not in LOAD_STATES
            or (served.controller.started_at is not None and served.ended is None)
        ):
            return Refused(
                f"load {request.name}: batch {served.recorder.batch} is {state}; a recipe is "
                "loaded only when no batch runs (Idle, Stopped, Complete or Aborted)",
                RefusalKind.STATE,
            )
        loaded = await asyncio.to_thread(self.shelf.load, request.name)
        plan = make_plan(loaded, list(request.parameters))  # BadValue names the parameter
        parameters = {p.name: p.value for p in plan.parameters}
        if served is not None:
            await retire(served)
            self.served = None
        else:
            await self.standby.close()
        self.alarms = {n: a for n, a in self.alarms.items() if a.active}
        try:
            await self.look_at_recipes()
            self.served = await self._open_batch(caller, loaded, parameters, state)
            self.served.detail = BatchDetail.of(plan)
        except Exception:
            if self.served is None:  # no batch holds the cell: a standby watches it again
                self.standby = Standby(self.cell, self.io, self._event)
                await self.standby.open()
            raise
        identity = loaded.identity
        return Accepted(
            f"loaded {identity.name} v{identity.version} as batch "
            f"{self.served.recorder.batch} ({state})"
        )

    async def _open_batch(
        self,
        caller: Caller,
        loaded: LoadedRecipe,
        parameters: dict[str, Value],
        state: State,
    ) -> ServedBatch:
        """A new batch: its record started (batch_started on disk), its controller opened in
        the state the cell is in."""
        holder: list[ServedBatch] = []
        recorder = await asyncio.to_thread(
            start_record,
            self.options.journal,
            loaded,
            parameters,
            operator=caller.name,
            mode=self.mode,
            sim=self.options.sim,
            open_store=SqliteStore,
            on_failure=lambda reason: self.journal_failed(holder, reason),
        )
        served = self.make_served(loaded, parameters, recorder, caller.name, state)
        holder.append(served)
        self.served = served
        await served.controller.open()
        return served

    def journal_failed(self, holder: list[ServedBatch], reason: str) -> None:
        """The batch's writer failed: the batch fails closed (Held with the safe state)."""
        if holder:
            hold_on_failure(holder[0].controller, holder[0].recorder, reason)

    def make_served(
        self,
        loaded: LoadedRecipe,
        parameters: dict[str, Value],
        recorder: BatchRecorder,
        operator_name: str | None,
        state: State,
    ) -> ServedBatch:
        """A batch's controller (not opened yet) with its record, operator and listeners."""
        return make_served(
            loaded,
            parameters,
            recorder,
            operator_name,
            state,
            cell=self.cell,
            io=self.io,
            mode=self.mode,
            changed=self._changed,
            on_event=self._event,
        )

    async def take_up(
        self, served: ServedBatch, resume: Callable[[], Coroutine[Any, Any, Any]]
    ) -> None:
        """Put a batch taken up after a crash in charge (cellctl.service.resuming): the
        standby ends, the controller opens, `resume()` runs in a task of the service."""
        await self.standby.close()
        served.resumed = True
        self.served = served
        await served.controller.open()

        async def resuming() -> None:
            await resume()

        self._spawn(resuming(), "the resumed batch")
        self._changed()
