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
If the surface's loop dies after it started, `on_failure(error)` runs on the control loop (the
machinery the web view shares: cellctl.service.server_thread).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from cellctl.cell import Cell
from cellctl.service.api import Backend, Caller, ServiceStatus
from cellctl.service.bridge import ControlBridge
from cellctl.service.logins import LoginRefused
from cellctl.service.opcua_surface import ChannelSecurity, OpcuaSurface, SurfaceStartFailed
from cellctl.service.server_thread import STOP_DEADLINE, ServerThread
from cellctl.values import TagValue

__all__ = ["START_DEADLINE", "STOP_DEADLINE", "SUBMIT_DEADLINE", "Login", "SurfaceThread"]

log = logging.getLogger("cellctl.service.opcua")

#: Seconds a method call waits for the controller's answer (then BadTimeout).
SUBMIT_DEADLINE = 30.0
#: Seconds the server has to build its address space and listen (1-2 s without the cache).
START_DEADLINE = 30.0

#: The service's login: (user name or None, password or None, peer) -> Caller or a refusal.
Login = Callable[[str | None, str | None, str], Caller | LoginRefused]


class SurfaceThread(ServerThread[Backend, ServiceStatus]):
    """The OPC UA surface of `backend` served from a thread: `await start()` and `await stop()`
    on the control loop."""

    _name = "the OPC UA server"
    _thread_label = "the OPC UA server thread"
    _thread_name = "cellctl-opcua"
    _pump_name = "opcua-pump"
    _log = log

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
        super().__init__(backend, on_failure)
        self._endpoint = endpoint
        self._security = security
        self._login = login
        self._submit_deadline = submit_deadline
        self._bridge: ControlBridge | None = None
        # Read on the control loop at start, served from the surface thread.
        self._initial: tuple[Cell, ServiceStatus, dict[str, TagValue]] | None = None
        self._surface: OpcuaSurface | None = None

    async def start(self) -> str:
        """Start the server on its thread; returns its URL once it listens (SurfaceStartFailed
        and the like when it cannot)."""
        if self._thread is not None:
            raise RuntimeError("the OPC UA surface was started already")
        control = asyncio.get_running_loop()
        self._control = control
        self._bridge = ControlBridge(self._backend, control, self._submit_deadline)
        started: asyncio.Future[str] = control.create_future()
        self._initial = (
            self._backend.cell,
            self._backend.status(),
            dict(self._backend.tag_values()),
        )
        return await self._launch(
            started,
            START_DEADLINE,
            lambda: SurfaceStartFailed(
                f"the OPC UA server on {self._endpoint} did not start within {START_DEADLINE:g} s"
            ),
        )

    # -- the surface thread ----------------------------------------------------------------------

    def _handed(self, status: ServiceStatus) -> ServiceStatus:
        """A new status hands itself over."""
        return status

    async def _open(self) -> str:
        """Build the address space and listen; the URL."""
        assert self._bridge is not None and self._initial is not None
        cell, status, tags = self._initial
        surface: OpcuaSurface | None = None
        try:
            surface = OpcuaSurface(
                self._bridge, self._endpoint, self._security, self._login_of, cell
            )
            url = await surface.start(status, tags)
        except Exception:
            if surface is not None:
                await surface.stop()
            raise
        self._surface = surface
        return url

    def _serving(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The surface's clock."""
        assert self._surface is not None
        return {"opcua-clock": self._surface.run_clock()}

    async def _close(self) -> None:
        """Close every session and the server."""
        assert self._surface is not None
        await self._surface.stop()

    async def _apply(self, status: ServiceStatus | None, tags: dict[str, TagValue]) -> None:
        """Write the status and tag values into the address space."""
        assert self._surface is not None
        if status is not None:
            await self._surface.apply_status(status)
        if tags:
            await self._surface.apply_tags(tags)

    def _login_of(self, name: str | None, password: str | None, peer: str) -> Caller | None:
        """The login on the surface thread; a refusal goes on record (on the control loop)."""
        answer = self._login(name, password, peer)
        if isinstance(answer, LoginRefused):
            assert self._bridge is not None
            self._bridge.security_refused("login", name or "anonymous", peer, answer.reason)
            return None
        return answer
