"""The controller of one cell as a service: connected for its whole life, one batch after
another, and the command layer every surface goes through, `(Caller, Request) -> Accepted |
Refused`, where roles are checked and every request is recorded with its user.

A batch is loaded (its record opened, its controller made in the state the cell is in), reset,
started, and ends Complete, Stopped or Aborted; its controller stays in charge of the cell,
with its record open, until the next load (the Reset after Complete is on that record too).
Before the first load a standby watches the interlocks (cellctl.service.standby).

Its parts: batches.py (loading a batch, taking one up, the events of the one in charge),
served.py (one batch), record.py (the service's own record), status.py (the status and its
listeners), handlers.py (each request but a load).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellctl.cell import Cell
from cellctl.control.journal.rows import Kind
from cellctl.control.machine import Mode
from cellctl.errors import BadValue, CellctlError, UnknownTag, ValidationFailed
from cellctl.io.session import TagIO
from cellctl.service import handlers
from cellctl.service.api import (
    REQUIRED_ROLE,
    Accepted,
    Action,
    Caller,
    RefusalKind,
    Refused,
    Request,
    ServiceStatus,
)
from cellctl.service.batches import ServedBatches
from cellctl.service.detail import recipe_info
from cellctl.service.record import ServiceRecord
from cellctl.service.served import Alarm, ServedBatch, retire, stop_served
from cellctl.service.shelf import RecipeShelf
from cellctl.service.standby import Standby
from cellctl.service.status import StatusFeed, build_status
from cellctl.values import TagValue

__all__ = ["CellService", "ServedBatch", "ServiceOptions"]

log = logging.getLogger("cellctl.service")

#: Seconds close() waits for a request under way (a load, a force) to end before it stops.
REQUEST_WAIT = 60.0


@dataclass
class ServiceOptions:
    """How the service runs: its journal, its recipes, what a client is told of security."""

    journal: Path
    recipes: Path
    security: str
    sim: bool = False
    #: Seconds a stop waits for the safe state to be confirmed before it says what is not.
    safe_wait: float = 300.0


class CellService(ServedBatches):
    """The cell's controller as a service: batches one after another, the command layer."""

    def __init__(self, cell: Cell, io: TagIO, options: ServiceOptions) -> None:
        self.cell = cell
        self.io = io
        self.options = options
        self.shelf = RecipeShelf(cell, options.recipes)
        self.recipes: tuple[str, ...] = ()
        #: The released recipes with their parameters (recipes_info), as last looked at.
        self.recipe_infos: list[dict[str, Any]] = []
        self.mode = Mode.PRODUCTION
        self.served: ServedBatch | None = None
        self.standby = Standby(cell, io, self._event)
        self.alarms: dict[str, Alarm] = {}
        self.forced: dict[str, str] = {}
        self.failure: BaseException | None = None
        #: The service's own record, and where a request is recorded.
        self.record = ServiceRecord(options.journal, lambda: self.served)
        #: The status and tag values handed to the surfaces.
        self.feed = StatusFeed(self.status, lambda: self.served)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unlisten: Callable[[], None] | None = None
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
        self.record.open()
        await self.look_at_recipes()
        self._unlisten = self.io.board.listen(list(self.io.tags), self.feed.tag_changed)
        self.io.watch()
        await self.standby.open()
        self.record.note(
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
            unconfirmed = await stop_served(served, self.options.safe_wait, self._waiting)
            await retire(served)
            self.served = None
        else:
            unconfirmed = await self.standby.confirm(self.options.safe_wait)
        await self.standby.close()
        if self._unlisten is not None:
            self._unlisten()
        self.feed.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        self.record.note(Kind.NOTICE, {"text": "service stopped", "unconfirmed": unconfirmed})
        await self.record.close()
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
            self.record.note(Kind.NOTICE, {"text": why, "level": "error"})
            if self.on_failure is not None:  # nothing else would ever end or show it
                self.on_failure(why)
            self._changed()

        task.add_done_callback(done)
        return task

    # -- what the surfaces see (cellctl.service.api.Backend) ----------------------------------

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login or certificate."""
        self.record.security_refused(what, who, peer, reason)

    def _changed(self) -> None:
        """Something a status shows changed: the listeners hear of it once this loop turn."""
        self.feed.changed()

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """Be told of each new status and of changed tag values; returns the stop."""
        return self.feed.listen(on_status, on_tags)

    async def look_at_recipes(self) -> None:
        """Find the released recipes again (at the start and at each load)."""
        released = await asyncio.to_thread(self.shelf.released)
        self.recipes = tuple(loaded.recipe.recipe for loaded in released)
        self.recipe_infos = [recipe_info(loaded) for loaded in released]

    def recipes_info(self) -> list[dict[str, Any]]:
        """The released recipes with their parameters (type, range, unit, default)."""
        return list(self.recipe_infos)

    def batch_detail(self) -> dict[str, Any] | None:
        """The loaded batch's step tree, each step's state, its wait and last safe state."""
        served = self.served
        if served is None or served.detail is None:
            return None
        return served.detail.to_json()

    def tag_values(self) -> Mapping[str, TagValue]:
        """The latest value of every tag that has one."""
        return {t: v for t in self.io.tags if (v := self.io.board.latest(t)) is not None}

    def status(self) -> ServiceStatus:
        """The status now."""
        return build_status(
            cell=self.cell.cell,
            mode=self.mode,
            security=self.options.security,
            alarms=self.alarms,
            forced=self.forced,
            recipes=self.recipes,
            seq=self.feed.seq,
            served=self.served,
            io=self.io,
        )

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
            self.record.request(caller, request, answer)
        self._changed()
        return answer

    def _heard(self) -> None:
        self._heard_by_batch = True

    async def _carry_out(self, caller: Caller, request: Request) -> Accepted | Refused:
        action = request.action
        if action is Action.LOAD:
            return await self._load(caller, request)
        if action is Action.MODE:
            mode = handlers.parse_mode(request.value)
            answer = handlers.set_mode(self.served, mode)
            if isinstance(answer, Accepted):
                self.mode = mode
            return answer
        if action is Action.ACK:
            return handlers.acknowledge(self.alarms)
        if action is Action.FORCE:
            return await handlers.force(
                caller,
                request.name,
                request.value,
                cell=self.cell,
                io=self.io,
                journal=self.options.journal,
                mode=self.mode,
                served=self.served,
                forced=self.forced,
            )
        if action is Action.UNFORCE:
            return handlers.unforce(self.forced, request.name)
        served = self.served
        if served is None:
            return Refused(
                f"{request.describe()}: no recipe is loaded (Stopped): load one first",
                RefusalKind.STATE,
            )
        if action is Action.COMMAND:
            assert request.command is not None
            return await handlers.packml_command(caller, served, request, self.alarms, self._heard)
        if action is Action.ANSWER:
            return Accepted(served.operator.give_answer(request.name, request.value))
        if action is Action.STEP:
            return handlers.step(served, request.value or "run")
        return handlers.set_breakpoint(served, request.name, add=action is Action.BREAK_ADD)
