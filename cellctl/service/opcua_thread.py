"""The OPC UA surface on a thread of its own, with its own asyncio loop, so that its clients
(idle sessions, slow subscribers, password hashing in asyncua's synchronous login hook) never
hold up the control loop.

What crosses between the loops is immutable (statuses, tag values, requests, answers) and
crosses only through `call_soon_threadsafe` and `run_coroutine_threadsafe`:
- control → surface: the backend's listeners hand each status and tag batch over, coalesced
  (one pending status, the latest; one pending tag batch, newer values replacing older ones),
  and a pump on the surface loop writes them into the address space;
- surface → control: each method call or tag write is `backend.submit` run on the control loop
  and awaited with a deadline; refused logins and certificates go to
  `backend.security_refused` there.
If the surface's loop dies after it started, `on_failure(error)` runs on the control loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping

from cellctl.cell import Cell
from cellctl.service.api import Backend, Caller, ServiceStatus
from cellctl.service.bridge import ControlBridge, on_loop, settle
from cellctl.service.logins import LoginRefused
from cellctl.service.opcua_surface import ChannelSecurity, OpcuaSurface, SurfaceStartFailed
from cellctl.values import TagValue

log = logging.getLogger("cellctl.service.opcua")

#: Seconds a method call waits for the controller's answer (then BadTimeout).
SUBMIT_DEADLINE = 30.0
#: Seconds the server has to build its address space and listen (1-2 s without the cache).
START_DEADLINE = 30.0
#: Seconds the server thread has to close every session and end.
STOP_DEADLINE = 10.0

#: The service's login: (user name or None, password or None, peer) -> Caller or a refusal.
Login = Callable[[str | None, str | None, str], Caller | LoginRefused]


class SurfaceThread:
    """The OPC UA surface of `backend` served from a thread: `await start()` and `await stop()`
    on the control loop."""

    def __init__(
        self,
        backend: Backend,
        endpoint: str,
        security: ChannelSecurity,
        login: Login,
        on_failure: Callable[[BaseException], None],
        *,
        submit_deadline: float = SUBMIT_DEADLINE,
    ) -> None:
        self._backend = backend
        self._endpoint = endpoint
        self._security = security
        self._login = login
        self._on_failure = on_failure
        self._submit_deadline = submit_deadline
        self._control: asyncio.AbstractEventLoop | None = None
        self._bridge: ControlBridge | None = None
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._url = ""
        # Set on the surface thread before `_loop` (whose events they are).
        self._wake: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Read by the surface thread: set before any stop is handed over.
        self._stopping = False
        # Handed from the control loop to the pump on the surface loop.
        self._lock = threading.Lock()
        self._pending_status: ServiceStatus | None = None
        self._pending_tags: dict[str, TagValue] = {}

    @property
    def url(self) -> str:
        """The URL clients reach the server at ('' before start)."""
        return self._url

    async def start(self) -> str:
        """Start the server on its thread; returns its URL once it listens (SurfaceStartFailed
        and the like when it cannot)."""
        if self._thread is not None:
            raise RuntimeError("the OPC UA surface was started already")
        control = asyncio.get_running_loop()
        self._control = control
        self._bridge = ControlBridge(self._backend, control, self._submit_deadline)
        self._ended = control.create_future()
        started: asyncio.Future[str] = control.create_future()
        initial = (self._backend.cell, self._backend.status(), dict(self._backend.tag_values()))
        self._thread = threading.Thread(
            target=self._run, args=(*initial, started), name="cellctl-opcua", daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(START_DEADLINE):
                self._url = await started
        except TimeoutError:
            await self.stop()
            raise SurfaceStartFailed(
                f"the OPC UA server on {self._endpoint} did not start within {START_DEADLINE:g} s"
            ) from None
        except BaseException:
            await self.stop()
            raise
        # On the control loop, in one go: no status can change between these calls.
        self._unlisten = self._backend.listen(self._on_status, self._on_tags)
        self._on_status(self._backend.status())
        self._on_tags(self._backend.tag_values())
        return self._url

    async def stop(self) -> None:
        """Stop listening to the backend, close the server and join its thread (bounded)."""
        self._stopping = True
        if self._unlisten is not None:
            self._unlisten()
            self._unlisten = None
        thread, ended = self._thread, self._ended
        if thread is None or ended is None:
            return
        loop, stop = self._loop, self._stop_requested
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has ended already
                loop.call_soon_threadsafe(stop.set)
        try:
            async with asyncio.timeout(STOP_DEADLINE):
                await asyncio.shield(ended)
        except TimeoutError:
            log.error("the OPC UA server thread did not stop within %g s", STOP_DEADLINE)
            return
        thread.join(timeout=1.0)  # it has handed `ended` over as its last act

    # -- control loop → surface ------------------------------------------------------------------

    def _on_status(self, status: ServiceStatus) -> None:
        """A new status (on the control loop): the latest one waits for the pump."""
        with self._lock:
            self._pending_status = status
        self._poke()

    def _on_tags(self, values: Mapping[str, TagValue]) -> None:
        """Changed tag values (on the control loop): merged into the batch waiting."""
        with self._lock:
            self._pending_tags.update(values)
        self._poke()

    def _poke(self) -> None:
        """Wake the pump on the surface loop."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not listening yet: start() hands the values over once it is
        with contextlib.suppress(RuntimeError):  # ended: on_failure or stop() says why
            loop.call_soon_threadsafe(wake.set)

    # -- the surface thread ----------------------------------------------------------------------

    def _run(
        self,
        cell: Cell,
        status: ServiceStatus,
        tags: dict[str, TagValue],
        started: asyncio.Future[str],
    ) -> None:
        """The thread: the surface's loop until stopped; a failure goes to on_failure."""
        assert self._control is not None
        error: BaseException | None = None
        try:
            asyncio.run(self._serve(cell, status, tags, started))
        except BaseException as err:
            error = err
        finally:
            on_loop(self._control, self._ended_with, error, started)

    def _ended_with(self, error: BaseException | None, started: asyncio.Future[str]) -> None:
        """On the control loop: the thread has ended, after a stop or with `error` (which
        `start` raises when the server never listened)."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if not started.done():
            started.set_exception(error or RuntimeError("the OPC UA server thread ended"))
        elif error is not None:
            if self._stopping:
                log.error("the OPC UA server failed while stopping", exc_info=error)
            else:
                self._on_failure(error)

    async def _serve(
        self,
        cell: Cell,
        status: ServiceStatus,
        tags: dict[str, TagValue],
        started: asyncio.Future[str],
    ) -> None:
        """Start the surface, keep it current until stopped, then close it."""
        assert self._control is not None and self._bridge is not None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        surface: OpcuaSurface | None = None
        try:
            surface = OpcuaSurface(
                self._bridge, self._endpoint, self._security, self._login_of, cell
            )
            url = await surface.start(status, tags)
        except Exception as err:
            if surface is not None:
                await surface.stop()
            on_loop(self._control, settle, started, "", err)
            return
        on_loop(self._control, settle, started, url, None)
        if self._stopping:  # stop() came while it was starting
            self._stop_requested.set()
        workers = {
            asyncio.create_task(surface.run_clock(), name="opcua-clock"),
            asyncio.create_task(self._pump(surface), name="opcua-pump"),
        }
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            done, _ = await asyncio.wait({*workers, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*workers, stop):
                task.cancel()
            await asyncio.gather(*workers, stop, return_exceptions=True)
            await surface.stop()
        for task in done & workers:
            task.result()  # the failure that ended it
            raise RuntimeError(f"the OPC UA server's {task.get_name()} task ended")

    async def _pump(self, surface: OpcuaSurface) -> None:
        """Write each status and tag batch handed over into the address space."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                status, self._pending_status = self._pending_status, None
                tags, self._pending_tags = self._pending_tags, {}
            if status is not None:
                await surface.apply_status(status)
            if tags:
                await surface.apply_tags(tags)

    def _login_of(self, name: str | None, password: str | None, peer: str) -> Caller | None:
        """The login on the surface thread; a refusal goes on record (on the control loop)."""
        answer = self._login(name, password, peer)
        if isinstance(answer, LoginRefused):
            assert self._bridge is not None
            self._bridge.security_refused("login", name or "anonymous", peer, answer.reason)
            return None
        return answer
