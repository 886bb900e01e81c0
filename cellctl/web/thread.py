"""The web view on a thread of its own, with its own asyncio loop (uvicorn serving the Starlette
app), so that browsers (slow readers, password hashing at login) never hold up the control loop.

As for the OPC UA surface (the machinery both share: cellctl.service.server_thread), what
crosses between the loops is immutable and crosses only through the control bridge
(cellctl.service.bridge) and `call_soon_threadsafe`: the backend's listeners hand each status
(with the batch detail, read on the control loop) and tag batch over, coalesced, and a pump on
the web loop puts them into the Hub that the event streams read. If the web loop dies after it
started, `on_failure(error)` runs on the control loop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import uvicorn

from cellctl import exitcodes
from cellctl.errors import CellctlError
from cellctl.service.api import ServiceStatus
from cellctl.service.bridge import ControlBridge
from cellctl.service.server_thread import STOP_DEADLINE, ServerThread
from cellctl.values import TagValue
from cellctl.web.app import Login, WebBackend, WebContext, create_app
from cellctl.web.events import PING, SLOW_CLIENT, Hub
from cellctl.web.protocol import REQUEST_DEADLINE, guarded_protocol
from cellctl.web.sessions import SessionStore
from cellctl.web.tls import HttpsRequired
from drivers.config import is_loopback

__all__ = ["STOP_DEADLINE", "WebStartFailed", "WebThread", "url_of"]

log = logging.getLogger("cellctl.web")

#: Seconds a request waits for the controller's answer.
SUBMIT_DEADLINE = 30.0
#: Seconds the server has to listen (STOP_DEADLINE: to close its connections and end).
START_DEADLINE = 10.0
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


class WebThread(ServerThread[WebBackend, tuple[ServiceStatus, Detail]]):
    """The web view of `backend` served from a thread: `await start()` (its URL) and
    `await stop()` on the control loop."""

    _name = "the web view"
    _thread_label = "the web view's thread"
    _thread_name = "cellctl-web"
    _pump_name = "web-pump"
    _log = log

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
        request_deadline: float = REQUEST_DEADLINE,
    ) -> None:
        super().__init__(backend, on_failure)
        self._addr = addr
        self._port = port
        self._login = login
        self._tls = tls
        self._submit_deadline = submit_deadline
        self._ping = ping
        self._slow_client = slow_client
        self._request_deadline = request_deadline
        self.hub = Hub(backend.cell)
        # Made on the control loop at start, served from the web thread.
        self._config_made: uvicorn.Config | None = None
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._url_served = ""

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
        started: asyncio.Future[str] = control.create_future()
        url = url_of(self._addr, port, self._tls is not None)
        self._config_made, self._sock, self._url_served = config, sock, url
        # On the control loop, in one go: the hub starts from the state now.
        self.hub.set_status(self._backend.status())
        self.hub.set_detail(self._backend.batch_detail())
        self.hub.set_tags(self._backend.tag_values())
        return await self._launch(
            started,
            START_DEADLINE,
            lambda: WebStartFailed(
                f"the web view on {url} did not start within {START_DEADLINE:g} s"
            ),
            closing=sock.close,
        )

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
            # h11 with a deadline for each request and a cap on connections (uvicorn has none).
            http=guarded_protocol(self._request_deadline),
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

    # -- the web thread --------------------------------------------------------------------------

    def _handed(self, status: ServiceStatus) -> tuple[ServiceStatus, Detail]:
        """A new status, with the batch detail read now (on the control loop)."""
        return status, self._backend.batch_detail()

    async def _open(self) -> str:
        """Start serving on the socket; the URL."""
        config, sock = self._config_made, self._sock
        assert config is not None and sock is not None
        server = uvicorn.Server(config)
        # serve()'s steps, taken one by one: startup() raises when it cannot serve.
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[sock])
        self._server = server
        return self._url_served

    def _serving(self) -> dict[str, Coroutine[Any, Any, None]]:
        """uvicorn's main loop."""
        assert self._server is not None
        return {"web-server": self._server.main_loop()}

    def _closing(self) -> None:
        """End every event stream (so that their connections can close) and the server."""
        assert self._server is not None
        self.hub.close()
        self._server.should_exit = True

    async def _close(self) -> None:
        """Close the server's connections."""
        assert self._server is not None and self._sock is not None
        await self._server.shutdown(sockets=[self._sock])

    async def _apply(
        self, pending: tuple[ServiceStatus, Detail] | None, tags: dict[str, TagValue]
    ) -> None:
        """Put the status, its detail and the tag values into the hub."""
        if pending is not None:
            status, detail = pending
            self.hub.set_status(status)
            if detail != self.hub.detail:
                self.hub.set_detail(detail)
        if tags:
            self.hub.set_tags(tags)
