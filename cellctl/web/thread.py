"""The web view on a thread of its own, with its own asyncio loop (uvicorn serving the Starlette
app), so that browsers (slow readers, password hashing at login) never hold up the control loop.

As for the OPC UA surface (cellctl.service.opcua_thread), what crosses between the loops is
immutable and crosses only through the control bridge (cellctl.service.bridge) and
`call_soon_threadsafe`: the backend's listeners hand each status (with the batch detail, read
on the control loop) and tag batch over, coalesced, and a pump on the web loop puts them into
the Hub that the event streams read. If the web loop dies after it started, `on_failure(error)`
runs on the control loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import uvicorn

from cellctl import exitcodes
from cellctl.errors import CellctlError
from cellctl.service.api import ServiceStatus
from cellctl.service.bridge import ControlBridge, on_loop, settle
from cellctl.values import TagValue
from cellctl.web.app import Login, WebBackend, WebContext, create_app
from cellctl.web.events import PING, SLOW_CLIENT, Hub
from cellctl.web.sessions import SessionStore
from cellctl.web.tls import HttpsRequired
from drivers.config import is_loopback

__all__ = ["WebStartFailed", "WebThread", "url_of"]

log = logging.getLogger("cellctl.web")

#: Seconds a request waits for the controller's answer.
SUBMIT_DEADLINE = 30.0
#: Seconds the server has to listen, and to close its connections and end.
START_DEADLINE = 10.0
STOP_DEADLINE = 10.0
#: Seconds open connections get to finish when the server stops (event streams end at once).
GRACEFUL = 2

Detail = dict[str, Any] | None


class WebStartFailed(CellctlError):
    """The web view could not listen (a port in use, an address not here, a bad certificate)."""

    exit_code = exitcodes.DEVICE_FAILURE


def url_of(host: str, port: int, tls: bool) -> str:
    """The URL of a server on host:port (an IPv6 address in brackets)."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"{'https' if tls else 'http'}://{shown}:{port}"


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, listening; WebStartFailed naming why it cannot be."""
    try:
        infos = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as error:
        raise WebStartFailed(
            f"the web view cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as error:
        sock.close()
        raise WebStartFailed(
            f"the web view cannot listen on {host}:{port}: {error.strerror or error}"
            + (
                " (another program has that port: choose another with --http)"
                if error.errno == 98
                else ""
            )
        ) from None
    sock.setblocking(False)
    return sock


class WebThread:
    """The web view of `backend` served from a thread: `await start()` (its URL) and
    `await stop()` on the control loop."""

    def __init__(
        self,
        backend: WebBackend,
        addr: str,
        port: int,
        login: Login,
        tls: tuple[Path, Path] | None,
        on_failure: Callable[[BaseException], None],
        *,
        submit_deadline: float = SUBMIT_DEADLINE,
        ping: float = PING,
        slow_client: float = SLOW_CLIENT,
    ) -> None:
        self._backend = backend
        self._addr = addr
        self._port = port
        self._login = login
        self._tls = tls
        self._on_failure = on_failure
        self._submit_deadline = submit_deadline
        self._ping = ping
        self._slow_client = slow_client
        self._control: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ended: asyncio.Future[None] | None = None
        self._unlisten: Callable[[], None] | None = None
        self._url = ""
        self.hub = Hub(backend.cell)
        # Set on the web thread before `_loop` (whose events they are).
        self._wake: asyncio.Event | None = None
        self._stop_requested: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        # Handed from the control loop to the pump on the web loop.
        self._lock = threading.Lock()
        self._pending_status: tuple[ServiceStatus, Detail] | None = None
        self._pending_tags: dict[str, TagValue] = {}

    @property
    def url(self) -> str:
        """The URL browsers open ('' before start)."""
        return self._url

    async def start(self) -> str:
        """Listen and serve on the thread; returns the URL once it listens (HttpsRequired
        beyond loopback without TLS, WebStartFailed when it cannot listen)."""
        if self._thread is not None:
            raise RuntimeError("the web view was started already")
        if self._tls is None and not is_loopback(self._addr):
            raise HttpsRequired(
                f"refusing to serve the web view on {self._addr}: beyond loopback it speaks "
                "HTTPS only (give `cellctl serve` the service's certificate: --certs DIR)"
            )
        control = asyncio.get_running_loop()
        self._control = control
        sock = _listen(self._addr, self._port)
        try:
            config = self._config(ControlBridge(self._backend, control, self._submit_deadline))
        except BaseException:
            sock.close()
            raise
        port = sock.getsockname()[1]
        self._ended = control.create_future()
        started: asyncio.Future[str] = control.create_future()
        url = url_of(self._addr, port, self._tls is not None)
        # On the control loop, in one go: the hub starts from the state now.
        self.hub.set_status(self._backend.status())
        self.hub.set_detail(self._backend.batch_detail())
        self.hub.set_tags(self._backend.tag_values())
        self._thread = threading.Thread(
            target=self._run, args=(config, sock, url, started), name="cellctl-web", daemon=True
        )
        self._thread.start()
        try:
            async with asyncio.timeout(START_DEADLINE):
                self._url = await started
        except TimeoutError:
            await self.stop()
            raise WebStartFailed(
                f"the web view on {url} did not start within {START_DEADLINE:g} s"
            ) from None
        except BaseException:
            await self.stop()
            raise
        self._unlisten = self._backend.listen(self._on_status, self._on_tags)
        self._on_status(self._backend.status())
        self._on_tags(self._backend.tag_values())
        return self._url

    def _config(self, bridge: ControlBridge) -> uvicorn.Config:
        """uvicorn's configuration of the app (its TLS context loaded now: a bad certificate
        fails the start)."""
        context = WebContext(
            backend=self._backend,
            bridge=bridge,
            hub=self.hub,
            sessions=SessionStore(),
            login=self._login,
            secure=self._tls is not None,
            ping=self._ping,
            slow_client=self._slow_client,
        )
        config = uvicorn.Config(
            create_app(context),
            loop="asyncio",
            http="h11",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,
            access_log=False,
            server_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=GRACEFUL,
            ssl_certfile=str(self._tls[0]) if self._tls else None,
            ssl_keyfile=str(self._tls[1]) if self._tls else None,
        )
        try:
            config.load()
        except (OSError, ValueError) as error:  # ssl.SSLError is an OSError
            raise WebStartFailed(
                f"the web view cannot use its certificate and key: {error}"
            ) from None
        return config

    async def stop(self) -> None:
        """Stop listening to the backend, end the event streams, close the server and join its
        thread (bounded)."""
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
            log.error("the web view's thread did not stop within %g s", STOP_DEADLINE)
            return
        thread.join(timeout=1.0)  # it has handed `ended` over as its last act

    # -- control loop → web loop -----------------------------------------------------------------

    def _on_status(self, status: ServiceStatus) -> None:
        """A new status (on the control loop), with the batch detail read now: the latest one
        waits for the pump."""
        detail = self._backend.batch_detail()
        with self._lock:
            self._pending_status = (status, detail)
        self._poke()

    def _on_tags(self, values: Mapping[str, TagValue]) -> None:
        """Changed tag values (on the control loop): merged into the batch waiting."""
        with self._lock:
            self._pending_tags.update(values)
        self._poke()

    def _poke(self) -> None:
        """Wake the pump on the web loop."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return  # not serving yet: start() hands the values over once it is
        with contextlib.suppress(RuntimeError):  # ended: on_failure or stop() says why
            loop.call_soon_threadsafe(wake.set)

    # -- the web thread --------------------------------------------------------------------------

    def _run(
        self, config: uvicorn.Config, sock: socket.socket, url: str, started: asyncio.Future[str]
    ) -> None:
        """The thread: the web loop until stopped; a failure goes to on_failure."""
        assert self._control is not None
        error: BaseException | None = None
        try:
            asyncio.run(self._serve(config, sock, url, started))
        except BaseException as err:
            error = err
        finally:
            sock.close()
            on_loop(self._control, self._ended_with, error, started)

    def _ended_with(self, error: BaseException | None, started: asyncio.Future[str]) -> None:
        """On the control loop: the thread has ended, after a stop or with `error`."""
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)
        if not started.done():
            started.set_exception(error or RuntimeError("the web view's thread ended"))
        elif error is not None:
            if self._stopping:
                log.error("the web view failed while stopping", exc_info=error)
            else:
                self._on_failure(error)

    async def _serve(
        self, config: uvicorn.Config, sock: socket.socket, url: str, started: asyncio.Future[str]
    ) -> None:
        """Serve until stopped, keeping the hub current; then end the streams and close."""
        assert self._control is not None
        self._wake = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        server = uvicorn.Server(config)
        try:
            # serve()'s steps, taken one by one: startup() raises when it cannot serve.
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
        except Exception as err:
            on_loop(self._control, settle, started, "", err)
            return
        on_loop(self._control, settle, started, url, None)
        if self._stopping:  # stop() came while it was starting
            self._stop_requested.set()
        workers = {
            asyncio.create_task(server.main_loop(), name="web-server"),
            asyncio.create_task(self._pump(), name="web-pump"),
        }
        stop = asyncio.create_task(self._stop_requested.wait())
        try:
            done, _ = await asyncio.wait({*workers, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.hub.close()  # every event stream ends: their connections can close
            server.should_exit = True
            for task in (*workers, stop):
                task.cancel()
            await asyncio.gather(*workers, stop, return_exceptions=True)
            await server.shutdown(sockets=[sock])
        for task in done & workers:
            task.result()  # the failure that ended it
            raise RuntimeError(f"the web view's {task.get_name()} task ended")

    async def _pump(self) -> None:
        """Put each status, detail and tag batch handed over into the hub."""
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            with self._lock:
                pending, self._pending_status = self._pending_status, None
                tags, self._pending_tags = self._pending_tags, {}
            if pending is not None:
                status, detail = pending
                self.hub.set_status(status)
                if detail != self.hub.detail:
                    self.hub.set_detail(detail)
            if tags:
                self.hub.set_tags(tags)
