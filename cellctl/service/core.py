"""The controller of one cell as a service: connected for its whole life, one batch after
another, and the command layer every surface goes through, `(Caller, Request) -> Accepted |
Refused`, where roles are checked and every request is recorded with its user.

A batch is loaded (its record opened, its controller made in the state the cell is in), reset,
started, and ends Complete, Stopped or Aborted; its controller stays in charge of the cell,
with its record open, until the next load (the Reset after Complete is on that record too).
Before the first load a standby watches the interlocks (cellctl.service.standby).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cellctl import exitcodes
from cellctl.cell import Cell
from cellctl.cell.tags import parse_value
from cellctl.control.batch_record import (
    close_record,
    end_record,
    hold_on_failure,
    parts_count,
    start_record,
)
from cellctl.control.commands import Accepted as CommandAccepted
from cellctl.control.commands import Commands, OperatorCommand
from cellctl.control.controller import END_STATES, Controller
from cellctl.control.events import (
    BatchEnded,
    Event,
    ModeChanged,
    StateChanged,
    StepEnded,
    StepStarted,
    TripCleared,
    Tripped,
)
from cellctl.control.journal.events import command_body
from cellctl.control.journal.recorder import BatchRecorder, WriteRecord
from cellctl.control.journal.rows import Kind
from cellctl.control.journal.store import JournalUnavailable, SqliteStore
from cellctl.control.journal.writer import JournalWriter
from cellctl.control.machine import Command, IllegalModeChange, Mode, State
from cellctl.control.operator import FailureChoice, StepChoice
from cellctl.control.parts import PartsCount, read_count
from cellctl.errors import BadValue, CellctlError, UnknownTag, ValidationFailed
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe, step_ids
from cellctl.recipe.plan import make_plan
from cellctl.service.api import (
    REQUIRED_ROLE,
    Accepted,
    Action,
    Caller,
    Prompt,
    RefusalKind,
    Refused,
    Request,
    ServiceStatus,
)
from cellctl.service.operator import RemoteOperator
from cellctl.service.shelf import RecipeShelf
from cellctl.service.standby import Standby
from cellctl.values import TagValue
from drivers.base import Value

log = logging.getLogger("cellctl.service")

#: How often changed tag values are handed to the surfaces, at most (seconds).
TAG_PERIOD = 0.1
#: States in which no step of a recipe runs: a force may be written then.
FORCE_STATES = frozenset(
    {State.STOPPED, State.IDLE, State.HELD, State.SUSPENDED, State.COMPLETE, State.ABORTED}
)
#: States from which the next batch may be loaded (the last one has ended, or never started).
LOAD_STATES = frozenset({State.STOPPED, State.IDLE, State.COMPLETE, State.ABORTED})
#: Seconds close() waits for a request under way (a load, a force) to end before it stops.
REQUEST_WAIT = 60.0


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


@dataclass
class Alarm:
    """A trip as the alarm list shows it: active until it clears, listed until acknowledged."""

    text: str
    active: bool = True
    acknowledged: bool = False


@dataclass
class ServiceOptions:
    """How the service runs: its journal, its recipes, what a client is told of security."""

    journal: Path
    recipes: Path
    security: str
    sim: bool = False
    #: Seconds a stop waits for the safe state to be confirmed before it says what is not.
    safe_wait: float = 300.0


class CellService:
    """The cell's controller as a service: batches one after another, the command layer."""

    def __init__(self, cell: Cell, io: TagIO, options: ServiceOptions) -> None:
        self.cell = cell
        self.io = io
        self.options = options
        self.shelf = RecipeShelf(cell, options.recipes)
        self.recipes: tuple[str, ...] = ()
        self.mode = Mode.PRODUCTION
        self.served: ServedBatch | None = None
        self.standby = Standby(cell, io, self._event)
        self.alarms: dict[str, Alarm] = {}
        self.forced: dict[str, str] = {}
        self.failure: BaseException | None = None
        self._seq = 0
        self._status_listeners: list[Callable[[ServiceStatus], None]] = []
        self._tag_listeners: list[Callable[[Mapping[str, TagValue]], None]] = []
        self._pending_tags: dict[str, TagValue] = {}
        self._tag_flush: asyncio.TimerHandle | None = None
        self._notify_soon = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unlisten: Callable[[], None] | None = None
        self._record: JournalWriter | None = None
        self._lock = asyncio.Lock()  # one request carried out at a time
        #: The request carried out now reached the batch's command layer (which records it).
        self._heard_by_batch = False
        #: What close() found unconfirmed, once it has run (it runs once).
        self.closed: dict[str, str] | None = None
        #: Set when close() begins: a request that comes later is refused (nothing new starts).
        self._closing = False
        #: Told why when a task of the service fails (the runner ends the service then).
        self.on_failure: Callable[[str], None] | None = None

    # -- life ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the service's own record, watch the tags and the interlocks (standby)."""
        self._record = JournalWriter(SqliteStore(self.options.journal), on_failure=self._unrecorded)
        self.recipes = tuple(await asyncio.to_thread(self.shelf.names))
        self._unlisten = self.io.board.listen(list(self.io.tags), self._tag_changed)
        self.io.watch()
        await self.standby.open()
        self._note(
            Kind.NOTICE,
            {
                "text": f"service started on cell {self.cell.cell}",
                "security": self.options.security,
            },
        )
        self._changed()

    async def close(self) -> dict[str, str]:
        """Stop the batch that runs (as `run` stops on SIGTERM), wait for its end and for the
        safe state to be confirmed (at most safe_wait), close everything; what is unconfirmed.
        A request carried out now ends first (what a load opens is closed here too); one that
        comes later is refused."""
        if self.closed is not None:
            return self.closed
        self._closing = True
        locked = False
        try:
            async with asyncio.timeout(REQUEST_WAIT):
                await self._lock.acquire()
            locked = True
        except TimeoutError:
            log.error(
                "a request still runs after %g s: the service stops all the same", REQUEST_WAIT
            )
        try:
            return await self._close_now()
        finally:
            if locked:
                self._lock.release()

    async def _close_now(self) -> dict[str, str]:
        if self.closed is not None:  # closed while this one waited for the request to end
            return self.closed
        unconfirmed: dict[str, str] = {}
        served = self.served
        if served is not None:
            controller = served.controller
            running = controller.started_at is not None and served.ended is None
            if controller.before_start:
                # As `run` on SIGTERM before its start: Resetting writes nothing more (and
                # stops waiting for `ready`), Start is never issued.
                served.commands.submit_soon(
                    OperatorCommand("service", Command.STOP, "SIGTERM before the batch started")
                )
            elif (running or controller.state is State.RESETTING) and (
                controller.state not in END_STATES
            ):
                with contextlib.suppress(CellctlError):
                    await served.commands.submit(
                        OperatorCommand("service", Command.STOP, "SIGTERM: the service stops")
                    )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.options.safe_wait):
                        await controller.wait_for(END_STATES)
            if served.finishing is not None:
                await asyncio.wait({served.finishing}, timeout=30)
            unconfirmed = await controller.safe.confirm(
                self.options.safe_wait, asyncio.Event(), waiting=self._waiting
            )
            await self._retire(served)
            self.served = None
        else:
            unconfirmed = await self.standby.confirm(self.options.safe_wait)
        await self.standby.close()
        if self._unlisten is not None:
            self._unlisten()
        if self._tag_flush is not None:
            self._tag_flush.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._record is not None:
            self._note(Kind.NOTICE, {"text": "service stopped", "unconfirmed": unconfirmed})
            with contextlib.suppress(JournalUnavailable):
                await asyncio.to_thread(self._record.close)
        self.closed = unconfirmed
        return unconfirmed

    def _waiting(self, tags: list[str]) -> None:
        log.warning("waiting for the safe state of %s to be confirmed", ", ".join(tags))

    def _spawn(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A task of the service whose failure is logged, recorded and ends the service."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            error = task.exception()
            log.error("%s failed", what, exc_info=error)
            self.failure = error
            why = f"{what} failed: {type(error).__name__}: {error}"
            self._note(Kind.NOTICE, {"text": why, "level": "error"})
            if self.on_failure is not None:  # nothing else would ever end or show it
                self.on_failure(why)
            self._changed()

        task.add_done_callback(done)
        return task

    # -- the record of what is not a batch's ----------------------------------------------

    def _unrecorded(self, reason: str) -> None:
        log.error("the service's record cannot be written: %s", reason)

    def _note(self, kind: str, body: Mapping[str, Any]) -> None:
        """A row of the service's own (no batch): started, stopped, requests outside a batch,
        refused logins and certificates."""
        if self._record is not None:
            self._record.append(None, kind, body)

    def _writer(self) -> tuple[JournalWriter | None, str | None]:
        """Where a request is recorded: the batch's record while one is loaded, else the
        service's."""
        served = self.served
        if served is not None and served.recorder.writer.on_failure is not None:
            return served.recorder.writer, served.recorder.batch
        return self._record, None

    def _record_request(self, caller: Caller, request: Request, answer: Accepted | Refused) -> None:
        """Every request, accepted or refused, on record with its user."""
        writer, batch = self._writer()
        if writer is None:
            return
        source = " ".join(p for p in (caller.via, caller.peer) if p)
        if isinstance(answer, Accepted):
            body = command_body(request.describe(), caller.name, source)
            body.update(role=caller.role.label, result=answer.result)
            writer.append(batch, Kind.COMMAND, body)
        else:
            writer.append(
                batch,
                Kind.REFUSED,
                {
                    "command": request.describe(),
                    "reason": answer.reason,
                    "blocked": answer.kind is not RefusalKind.STATE,
                    "operator": caller.name,
                    "role": caller.role.label,
                    "source": source,
                    "refusal": answer.kind.value,
                },
            )

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login or certificate."""
        log.warning("%s refused: %s from %s: %s", what, who, peer, reason)
        writer, batch = self._writer()
        if writer is not None:
            writer.append(
                batch,
                Kind.REFUSED,
                {
                    "command": what,
                    "reason": reason,
                    "blocked": True,
                    "operator": who,
                    "source": peer,
                    "refusal": "login" if what == "login" else "certificate",
                },
            )

    # -- status ------------------------------------------------------------------------------

    def _changed(self) -> None:
        """Something a status shows changed: the listeners hear of it once this loop turn."""
        self._seq += 1
        if self._notify_soon:
            return
        self._notify_soon = True
        asyncio.get_running_loop().call_soon(self._notify)

    def _notify(self) -> None:
        self._notify_soon = False
        status = self.status()
        for listener in list(self._status_listeners):
            try:
                listener(status)
            except Exception:
                log.error("a status listener failed", exc_info=True)

    def _tag_changed(self, value: TagValue) -> None:
        self._pending_tags[value.tag] = value
        if self._tag_flush is None:
            self._tag_flush = asyncio.get_running_loop().call_later(TAG_PERIOD, self._flush_tags)

    def _flush_tags(self) -> None:
        self._tag_flush = None
        values, self._pending_tags = self._pending_tags, {}
        for listener in list(self._tag_listeners):
            try:
                listener(values)
            except Exception:
                log.error("a tag listener failed", exc_info=True)
        served = self.served
        if served is not None and served.parts is not None and served.parts.counter in values:
            self._changed()  # the parts made so far

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """Be told of each new status and of changed tag values; returns the stop."""
        self._status_listeners.append(on_status)
        self._tag_listeners.append(on_tags)

        def stop() -> None:
            with contextlib.suppress(ValueError):
                self._status_listeners.remove(on_status)
            with contextlib.suppress(ValueError):
                self._tag_listeners.remove(on_tags)

        return stop

    def tag_values(self) -> Mapping[str, TagValue]:
        """The latest value of every tag that has one."""
        return {t: v for t in self.io.tags if (v := self.io.board.latest(t)) is not None}

    def status(self) -> ServiceStatus:
        """The status now."""
        served = self.served
        trips = [
            f"{name}: {alarm.text}" + ("" if alarm.active else " (cleared, not acknowledged)")
            for name, alarm in self.alarms.items()
        ]
        common: dict[str, Any] = {
            "cell": self.cell.cell,
            "mode": self.mode.value,
            "security": self.options.security,
            "trips": tuple(trips),
            "forced": dict(self.forced),
            "recipes": self.recipes,
            "seq": self._seq,
        }
        if served is None:
            return ServiceStatus(state=State.STOPPED.value, legal=(), **common)
        controller, operator = served.controller, served.operator
        identity = served.loaded.identity
        prompt = None
        if operator.prompt is not None:
            wants = operator.prompt.answer
            prompt = Prompt(
                operator.prompt.step_id,
                operator.prompt.text,
                wants.describe_range() if wants is not None else "any text",
            )
        paused = operator.paused
        return ServiceStatus(
            state=controller.state.value,
            legal=tuple(c.value for c in controller.machine.legal_commands()),
            batch=served.recorder.batch,
            recipe=identity.name,
            recipe_version=int(identity.version),
            recipe_sha256=identity.sha256,
            parameters={k: str(v) for k, v in served.parameters.items()},
            step=served.step,
            produced=self._produced(served),
            stop_reason=served.stop_reason,
            prompt=prompt,
            paused="" if paused is None else f"{paused.path} {paused.label}",
            breakpoints=tuple(sorted(controller.executor.breakpoints)),
            **common,
        )

    def _produced(self, served: ServedBatch) -> int:
        """Parts made so far: the counter now (or at the end) less its start."""
        parts = served.parts
        if parts is None or parts.start is None:
            return 0
        if parts.end is None:
            latest = self.io.board.latest(parts.counter)
            if latest is None or not isinstance(latest.value, int | float):
                return 0
            now = replace(parts, end=int(latest.value))
            return now.made() or 0
        return parts.made() or 0

    # -- events of the batch ------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        """Every event of the batch's controller (and the standby's)."""
        served = self.served
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
        controller = served.controller
        await controller.wait_for(END_STATES)
        if served.parts is not None:
            served.parts.end, served.parts.end_error = await read_count(
                self.io, served.parts.counter
            )
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
        self._changed()

    # -- the command layer ----------------------------------------------------------------------

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """Carry `request` out for `caller`, or refuse it (the role, the state, bad input);
        both go on record with the user. Never raises for a refusal."""
        needed = REQUIRED_ROLE[request.action]
        answer: Accepted | Refused
        heard = False
        if caller.role < needed:
            answer = Refused(
                f"{request.describe()}: needs the {needed.label} role; "
                f"{caller.name} is {caller.role.label}",
                RefusalKind.ROLE,
            )
        else:
            async with self._lock:
                self._heard_by_batch = False
                try:
                    if self._closing:  # checked under the lock: close() may have waited for it
                        raise CellctlError("the service is stopping")
                    answer = await self._carry_out(caller, request)
                except (BadValue, UnknownTag) as bad:
                    answer = Refused(f"{request.describe()}: {bad}", RefusalKind.INPUT)
                except ValidationFailed as bad:
                    lines = [str(p) for p in bad.problems] or [str(bad)]
                    answer = Refused("; ".join(lines), RefusalKind.INPUT)
                except CellctlError as refused:
                    answer = Refused(f"{request.describe()}: {refused}", RefusalKind.STATE)
                except Exception as error:  # a bug of ours: said, logged and on record
                    log.error("%s failed", request.describe(), exc_info=error)
                    answer = Refused(
                        f"{request.describe()}: internal error: {type(error).__name__}: "
                        f"{error} (the service's log has the details)",
                        RefusalKind.INTERNAL,
                    )
                heard = self._heard_by_batch
        if not heard:
            # A PackML command the batch's command layer heard is on its record already; one
            # refused before it (a role, an unacknowledged trip, a bad choice) is recorded here.
            self._record_request(caller, request, answer)
        self._changed()
        return answer

    async def _carry_out(self, caller: Caller, request: Request) -> Accepted | Refused:
        action = request.action
        if action is Action.LOAD:
            return await self._load(caller, request)
        if action is Action.MODE:
            return self._set_mode(request.value)
        if action is Action.ACK:
            return self._acknowledge()
        if action is Action.FORCE:
            return await self._force(caller, request.name, request.value)
        if action is Action.UNFORCE:
            return self._unforce(request.name)
        served = self.served
        if served is None:
            return Refused(
                f"{request.describe()}: no recipe is loaded (Stopped): load one first",
                RefusalKind.STATE,
            )
        if action is Action.COMMAND:
            assert request.command is not None
            return await self._command(caller, served, request)
        if action is Action.ANSWER:
            return Accepted(served.operator.give_answer(request.name, request.value))
        if action is Action.STEP:
            return self._step(served, request.value or "run")
        return self._breakpoint(served, request.name, add=action is Action.BREAK_ADD)

    async def _command(
        self, caller: Caller, served: ServedBatch, request: Request
    ) -> Accepted | Refused:
        command = request.command
        assert command is not None
        choice = None
        if request.choice:
            try:
                choice = FailureChoice(request.choice.strip().lower())
            except ValueError:
                raise BadValue(f"choice {request.choice!r}: write retry or skip") from None
        if command is Command.RESET:
            unacknowledged = [n for n, a in self.alarms.items() if not a.acknowledged]
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
        self._heard_by_batch = True  # the batch's record has it from here on
        if len(served.given_by) < 1000:  # bounded: one entry per client connection
            served.given_by[source] = caller.name
        answer = await served.commands.submit(OperatorCommand(caller.name, command, source, choice))
        if isinstance(answer, CommandAccepted):
            return Accepted(str(answer.state))
        return Refused(answer.reason, RefusalKind.STATE)

    def _set_mode(self, text: str) -> Accepted | Refused:
        try:
            mode = Mode(text.strip().capitalize())
        except ValueError:
            raise BadValue(f"mode {text!r}: write {', '.join(m.value for m in Mode)}") from None
        served = self.served
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
        self.mode = mode
        if dropped:
            return Accepted(f"mode {mode} (breakpoints removed: {', '.join(dropped)})")
        return Accepted(f"mode {mode}")

    def _acknowledge(self) -> Accepted:
        cleared = [n for n, a in self.alarms.items() if not a.active]
        for name in cleared:
            del self.alarms[name]
        for alarm in self.alarms.values():
            alarm.acknowledged = True
        active = ", ".join(self.alarms) or "none"
        return Accepted(f"acknowledged {len(cleared)} cleared trips; active now: {active}")

    def _step(self, served: ServedBatch, text: str) -> Accepted | Refused:
        try:
            choice = StepChoice(text.strip().lower())
        except ValueError:
            raise BadValue(
                f"step {text!r}: write {', '.join(c.value for c in StepChoice)}"
            ) from None
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

    def _breakpoint(self, served: ServedBatch, step_id: str, *, add: bool) -> Accepted | Refused:
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

    async def _force(self, caller: Caller, tag: str, text: str) -> Accepted | Refused:
        value = parse_value(self.cell, tag, text)  # UnknownTag, BadValue: bad input
        if self.mode is Mode.PRODUCTION:
            return Refused(
                f"force {tag}: forcing needs Maintenance or Manual mode, not Production",
                RefusalKind.STATE,
            )
        state = self.served.controller.state if self.served is not None else State.STOPPED
        if state not in FORCE_STATES:
            return Refused(
                f"force {tag}: not while a recipe runs ({state}); hold it first",
                RefusalKind.STATE,
            )
        record = WriteRecord(
            SqliteStore(self.options.journal),
            {"cell": self.cell.cell, "operator": caller.name, "forced": True},
        )
        try:
            intent = await asyncio.to_thread(record.intent, tag, value)
            error: str | None = None
            try:
                await self.io.write(tag, value)
            except Exception as failed:  # the device's answer, recorded and returned
                error = f"{type(failed).__name__}: {failed}"
            await asyncio.to_thread(record.confirmed, intent, error)
        finally:
            await asyncio.to_thread(record.close)
        if error is not None:
            raise CellctlError(f"force {tag}: the device refused or did not answer: {error}")
        self.forced[tag] = text
        return Accepted(f"forced {tag} = {value}")

    def _unforce(self, tag: str) -> Accepted:
        if tag not in self.forced:
            raise BadValue(f"unforce {tag}: tag {tag!r} is not forced")
        del self.forced[tag]
        return Accepted(f"unforced {tag} (the device keeps its value until written)")

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
            await self._retire(served)
            self.served = None
        else:
            await self.standby.close()
        self.alarms = {n: a for n, a in self.alarms.items() if a.active}
        try:
            self.recipes = tuple(await asyncio.to_thread(self.shelf.names))
            self.served = await self._open_batch(caller, loaded, parameters, state)
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
        operator = RemoteOperator(operator_name, self._changed)
        controller = Controller(
            loaded,
            parameters,
            self.io,
            operator,
            mode=self.mode,
            comm_devices=list(self.cell.devices),
            ledger=recorder,
            state=state,
        )
        commands = Commands(controller)
        controller.listeners.append(recorder.event)
        commands.heard.append(recorder.command)
        controller.listeners.append(self._event)
        return ServedBatch(
            loaded, parameters, controller, recorder, operator, commands, parts_count(loaded)
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

    async def _retire(self, served: ServedBatch) -> None:
        """The batch gives the cell up: its controller closed, its record closed."""
        await served.controller.close()
        code = exitcodes.OK
        if served.ended is not None and served.ended.state is not State.COMPLETE:
            code = exitcodes.BATCH_NOT_COMPLETE
        problem = await close_record(served.recorder, served.controller, code, served.parts)
        if problem is not None:
            log.error(
                "batch %s: its record could not be closed: %s", served.recorder.batch, problem
            )
