"""A server (the OPC UA surface, the web view) on a thread of its own, with its own asyncio
loop, kept current from the control loop: the machinery both surfaces share.

What crosses between the loops is immutable and crosses only through `call_soon_threadsafe`
(cellctl.service.bridge): the backend's listeners hand each status and tag batch over,
coalesced (one pending status, the latest; one pending tag batch, newer values replacing older
ones), and a pump on the server's loop applies them. If the server's loop dies after it
started, `on_failure(error)` runs on the control loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Generic, TypeVar

from cellctl.errors import CellctlError
from cellctl.service.api import Backend, ServiceStatus
from cellctl.service.bridge import on_loop, settle
from cellctl.values import TagValue

#: Seconds the server thread has to close every connection and end.
STOP_DEADLINE = 10.0

B = TypeVar("B", bound=Backend)
#: What each status hands over to the server's loop.
P = TypeVar("P")


class ServerThread(Generic[B, P]):
    """A server of `backend` served from a thread: the subclass says how it opens, serves,
    applies what it is handed and closes; `await start()` and `await stop()` on the control
    loop."""

    #: How log lines and errors name the server, and its thread.
    _name = "the server"
    _thread_label = "the server thread"
    _thread_name = "cellctl-server"
    _pump_name = "server-pump"
    _log = logging.getLogger("cellctl.service")

    def __init__(self, backend: B, on_failure: Callable[[BaseException], None]) -> None:
        self._backend = backend
        self._on_failure = on_failure
        self._control: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._url = ""
        # Set on the server thread before `_loop` (whose events they are).
        self._wake: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Read by the server thread: set before any stop is handed over.
        self._stopping = False
        # Handed from the control loop to the pump on the server loop.
        self._lock = threading.Lock()
        self._pending_status: P | None = None
        self._pending_tags: dict[str, TagValue] = {}

    @property
    def url(self) -> str:
        """The URL clients reach the server at ('' before start)."""
        return self._url

    # -- what differs ----------------------------------------------------------------------------

    def _handed(self, status: ServiceStatus) -> P:
        """What a new status hands over (on the control loop)."""
        raise NotImplementedError

    async def _open(self) -> str:
        """On the server loop: start serving (cleaning up after itself when it cannot); its
        URL."""
        raise NotImplementedError

    def _serving(self) -> dict[str, Coroutine[Any, Any, None]]:
        """On the server loop, once open: the tasks that serve (by name), besides the pump."""
        raise NotImplementedError

    def _closing(self) -> None:
        """On the server loop, when it stops, before its tasks are cancelled."""

    async def _close(self) -> None:
        """On the server loop, once its tasks have ended: close the server."""
        raise NotImplementedError

    async def _apply(self, status: P | None, tags: dict[str, TagValue]) -> None:
        """On the server loop: apply the status (if any) and tag values handed over."""
        raise NotImplementedError

    # -- control loop ----------------------------------------------------------------------------

    async def _launch(
        self,
        started: asyncio.Future[str],
        deadline: float,
        late: Callable[[], CellctlError],
        closing: Callable[[], None] | None = None,
    ) -> str:
        """Run the server's thread (`closing` once its loop has ended); its URL once it listens
        (`late()` after `deadline` s, or why it could not), then listen to the backend."""
        assert self._control is not None
        self._ended = self._control.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(started, closing), name=self._thread_name, daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(deadline):
                self._url = await started
        except TimeoutError:
            await self.stop()
            raise late() from None
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
            self._log.error("%s did not stop within %g s", self._thread_label, STOP_DEADLINE)
            return
        thread.join(timeout=1.0)  # it has handed `ended` over as its last act

    def _on_status(self, status: ServiceStatus) -> None:
        """A new status (on the control loop): the latest one waits for the pump."""
        handed = self._handed(status)
        with self._lock:
            self._pending_status = handed
        self._poke()

    def _on_tags(self, values: Mapping[str, TagValue]) -> None:
        """Changed tag values (on the control loop): merged into the batch waiting."""
        with self._lock:
            self._pending_tags.update(values)
        self._poke()

    def _poke(self) -> None:
        """Wake the pump on the server loop."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not serving yet: start() hands the values over once it is
        with contextlib.suppress(RuntimeError):  # ended: on_failure or stop() says why
            loop.call_soon_threadsafe(wake.set)

    def _ended_with(self, error: BaseException | None, started: asyncio.Future[str]) -> None:
        """On the control loop: the thread has ended, after a stop or with `error` (which
        `start` raises when the server never listened)."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if not started.done():
            started.set_exception(error or RuntimeError(f"{self._thread_label} ended"))
        elif error is not None:
            if self._stopping:
                self._log.error("%s failed while stopping", self._name, exc_info=error)
            else:
                self._on_failure(error)

    # -- the server thread -----------------------------------------------------------------------

    def _run(self, started: asyncio.Future[str], closing: Callable[[], None] | None) -> None:
        """The thread: the server's loop until stopped; a failure goes to on_failure."""
        assert self._control is not None
        error: BaseException | None = None
        try:
            asyncio.run(self._serve(started))
        except BaseException as err:
            error = err
        finally:
            if closing is not None:
                closing()
            on_loop(self._control, self._ended_with, error, started)

    async def _serve(self, started: asyncio.Future[str]) -> None:
        """Open the server, keep it current until stopped, then close it."""
        assert self._control is not None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            url = await self._open()
        except Exception as err:
            on_loop(self._control, settle, started, "", err)
            return
        on_loop(self._control, settle, started, url, None)
        if self._stopping:  # stop() came while it was starting
            self._stop_requested.set()
        serving = {**self._serving(), self._pump_name: self._pump()}
        workers = {asyncio.create_task(work, name=name) for name, work in serving.items()}
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            done, _ = await asyncio.wait({*workers, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._closing()
            for task in (*workers, stop):
                task.cancel()
            await asyncio.gather(*workers, stop, return_exceptions=True)
            await self._close()
        for task in done & workers:
            task.result()  # the failure that ended it
            raise RuntimeError(f"{self._name}'s {task.get_name()} task ended")

    async def _pump(self) -> None:
        """Apply each status and tag batch handed over."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                status, self._pending_status = self._pending_status, None
                tags, self._pending_tags = self._pending_tags, {}
            if status is not None or tags:
                await self._apply(status, tags)
