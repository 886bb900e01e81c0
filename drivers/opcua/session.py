"""The OPC UA driver's session: connect, keep-alive, reconnect, and the background tasks."""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Coroutine
from typing import Any

from asyncua.client.client import Client
from asyncua.ua.uaerrors import UaError

from drivers.base import ConnectProgress, ConnectTry, HealthState
from drivers.errors import ConnectFailed, DeviceTimeout, DriverError, NotConnected, PointMismatch
from drivers.health import Backoff, connect_with_backoff
from drivers.opcua.faults import Refused, error_text, failure_text, permanent
from drivers.opcua.requests import MAX_MESSAGE_SIZE, RECONNECT_CAP, OpcuaRequests
from drivers.opcua.security import secure
from drivers.opcua.watch import Watch
from drivers.tasks import cancel_and_wait

log = logging.getLogger("drivers.opcua")

# Sessions of a controller that died without closing them expire on the server after this long.
SESSION_TIMEOUT_MS = 60_000
# asyncua's own liveness probe, behind our keep-alive (seconds).
BACKSTOP_PROBE = 30.0
# The size of the chunks a message arrives in (asyncua's receive buffer).
CHUNK_SIZE = 65535


class _Unbound:
    """Marks a background task that serves no session (its failure is only logged)."""


_UNBOUND = _Unbound()


class OpcuaSession(OpcuaRequests, ABC):
    """The session with one OPC UA server, opened again in the background after a loss."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def connect(self, progress: ConnectProgress | None = None) -> None:
        """Connect within limits.worst_case, check every point and method; raise on any mismatch.
        `progress` hears of each try to open a session as it starts.

        After a connect that failed for a passing reason (nothing listening, no answer, the
        connection lost) health is LOST and the driver keeps connecting in the background
        until close(), as Modbus does. A refused session or a mismatch is final.
        """
        if self._running:
            if self._client is not None:
                return
            # A background connect is running: this one takes over.
            self._running = False
            await self._shutdown()
        client: Client | None = None
        try:
            client = await self._open(progress)
            problems = await self._check(client)
            if problems:
                raise self._mismatch(problems)
            # A subscription request without answer fails the connect (below: LOST, and the
            # reconnect loop subscribes again); a refused one is retried on this session.
            for watch in list(self._watches):
                await self._activate(watch, client)
            if self._client is not client:
                raise ConnectFailed.about(self.name, f"connection to {self.config.endpoint} lost")
        except Refused as refused:
            await self._shutdown()
            self._tracker.set(HealthState.DISCONNECTED, str(refused.error))
            raise refused.error from refused.error.__cause__
        except BaseException as err:
            # A background task that failed the session while connect() ran dropped it
            # without closing it (_on_lost, _session_failed): its socket and server session
            # would stay open.
            dropped = client if client is not None and client is not self._client else None
            await self._shutdown()
            if dropped is not None:
                await self._dispose(dropped)
            if not isinstance(err, DriverError) or isinstance(err, PointMismatch):
                self._tracker.set(HealthState.DISCONNECTED, str(err))
                raise
            # A request of the checks failed: to the caller, the connect did.
            error = (
                err
                if isinstance(err, ConnectFailed)
                else ConnectFailed.about(self.name, f"connecting to {self.config.endpoint}: {err}")
            )
            self._running = True
            self._set_lost(str(error), error.reason)
            self._spawn_reconnect(None)
            if error is err:
                raise
            raise error from err
        self._verified = True
        self._running = True
        self._failures.reset()
        self._tracker.set(HealthState.CONNECTED)

    async def verify(self) -> list[str]:
        """Every difference between declared points/methods and the server; connects if needed."""
        try:
            client = self._client or await self._open()
        except Refused as refused:
            raise refused.error from refused.error.__cause__
        return await self._check(client)

    async def close(self) -> None:
        """Delete subscriptions, close the session and stop every background task."""
        self._running = False
        await self._shutdown()
        self._tracker.set(HealthState.DISCONNECTED)

    async def _shutdown(self) -> None:
        """Drop the client and cancel background tasks; watches stay registered for a reconnect."""
        # The client goes first: tasks tied to it (the keep-alive) end even if a library
        # swallowed their cancellation.
        client, self._client = self._client, None
        self._forget_session()
        await cancel_and_wait(list(self._tasks))
        if client is not None:
            await self._dispose(client)

    def _forget_session(self) -> None:
        """Everything tied to one session: its subscriptions and resolved method ids."""
        self._method_ids.clear()
        for watch in self._watches:
            watch.detach()

    async def _open(self, progress: ConnectProgress | None = None) -> Client:
        """Open a session, retrying for at most limits.worst_case; Refused when retry is futile.
        `progress` hears of each try as it starts."""
        if self._client is not None:
            return self._client  # opened by verify()
        deadline = self.config.limits.worst_case
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline

        async def attempt() -> None:
            try:
                await self._open_session(max(end - loop.time(), 0.001))
            except ConnectFailed as err:
                if permanent(err):
                    raise Refused(err) from err
                raise

        def tell(number: int, error: str | None) -> None:
            if progress is not None:
                progress(ConnectTry(self.name, self.config.endpoint, number, end, error))

        await connect_with_backoff(
            attempt,
            device=self.name,
            endpoint=self.config.endpoint,
            deadline=deadline,
            on_try=tell,
        )
        assert self._client is not None
        return self._client

    async def _open_session(self, budget: float) -> None:
        """One connect attempt with a fresh client, bounded by `budget` seconds."""
        # asyncua notices a closed connection at once; a silent server is found by our own
        # keep-alive (asyncua's watchdog would take up to twice its interval): its probe is
        # left as a slow backstop.
        client = Client(
            self.config.endpoint,
            timeout=self.config.limits.timeout,
            watchdog_intervall=BACKSTOP_PROBE,
        )
        client.session_timeout = SESSION_TIMEOUT_MS
        # Told to the server in the Hello: an answer larger than this is refused (BadResponse
        # from _request, and asyncua closes the connection), never allocated in full.
        client.max_messagesize = MAX_MESSAGE_SIZE
        client.max_chunkcount = MAX_MESSAGE_SIZE // CHUNK_SIZE + 1

        async def start() -> None:
            await secure(client, self.config)
            await client.connect()

        try:
            async with asyncio.timeout(budget):
                await start()
        except BaseException as err:
            client.disconnect_socket()  # a cancelled connect leaves its socket open
            if isinstance(err, TimeoutError):
                raise TimeoutError(f"no answer within {budget:.3g} s") from err
            if isinstance(err, UaError):
                raise ConnectFailed(
                    f"{self.name}: {self.config.endpoint} refused the session: {error_text(err)}"
                ) from err
            raise
        client.connection_lost_callback = lambda exc: self._on_lost(client, exc)
        self._client = client
        self._spawn(self._keep_alive(client), "keep-alive", client)

    async def _on_lost(self, client: Client, exc: Exception) -> None:
        """asyncua's supervisor saw the connection die: report LOST, reconnect in the background."""
        if client is not self._client:
            return
        self._client = None
        self._forget_session()
        if not self._running:
            return  # connect() is still running and will fail on its next request
        self._set_lost(f"connection to {self.config.endpoint} lost: {error_text(exc)}")
        # Delayed like a failed session: a connection that dies again at once (a server that
        # sends a message over the size limit to every new subscription) must not spin.
        self._spawn_reconnect(client, self._failures.next_delay())

    async def _keep_alive(self, client: Client) -> None:
        """Probe the server every publishing interval; no answer within the limits → lost.

        A server that stopped answering is so found within limits.worst_case plus one
        publishing interval; a subscription that stopped publishing (no data change, no
        keep-alive) within the server's keep-alive period plus limits.worst_case plus one
        publishing interval (Watch.silent_for).
        """
        limits = self.config.limits
        state = client.nodes.server_state
        started = time.monotonic()
        while self._client is client:
            await asyncio.sleep(self.config.publishing_interval)
            try:
                await self._request(
                    "keep-alive", lambda _c: state.read_value(), attempts=limits.retries + 1
                )
            except (DeviceTimeout, NotConnected) as err:
                await self._on_lost(client, err)
                return
            except DriverError:
                pass  # an answer, even a bad one, proves the server is there
            silence = self._silence(client)
            if silence is not None:
                log.error("%s: %s", self.name, silence)
                self._session_failed(client, silence)
                return
            # What the controller's watchdog looks for: only the keep-alive's own answers, so
            # other requests cannot hide a keep-alive that stopped.
            self._tracker.answered()
            if time.monotonic() - started >= RECONNECT_CAP:
                # A session that lasts: restarts are not spinning, the next one starts at once.
                self._failures.reset()

    def _silence(self, client: Client) -> str | None:
        """Why a subscription on this session counts as stopped, if one does: the server
        answers requests but has sent it nothing for longer than it promised."""
        now = time.monotonic()
        for watch in self._watches:
            if watch.client is not client:
                continue
            quiet = watch.silent_for(now)
            if quiet is not None:
                return (
                    f"subscription silent: nothing from {self.config.endpoint} for "
                    f"{quiet:.1f} s, not even a keep-alive (due within {watch.silent_after:.3g} s)"
                )
        return None

    def _set_lost(self, cause: str, reason: str | None = None) -> None:
        """Health LOST naming `cause`; on the transition every subscriber hears BAD for each
        point it watches, for `reason` (the cause without the device's name, when it has it)."""
        was = self._tracker.health.state
        self._tracker.set(HealthState.LOST, cause)
        self._lost_reason = cause if reason is None else reason
        if was is not HealthState.LOST:
            for watch in list(self._watches):
                watch.deliver_bad(watch.points, self._lost_reason)

    def _spawn_reconnect(self, old: Client | None, delay: float = 0.0) -> None:
        """Start the reconnect loop, itself supervised: if it dies it is started again."""
        self._spawn(self._reconnect(old, delay), "reconnect", None)

    async def _reconnect(self, old: Client | None, delay: float = 0.0) -> None:
        """Reconnect with backoff and jitter until it works or the driver is closed.

        Nodes not yet checked against the cell file (the first connect failed) are checked
        first; a mismatch ends the loop, with health LOST naming every difference.
        """
        if old is not None:
            await self._dispose(old)
        if delay:
            await asyncio.sleep(delay)
        backoff = Backoff(cap=RECONNECT_CAP)
        while self._running:
            client: Client | None = None
            try:
                await self._open_session(self.config.limits.worst_case)
                client = self._client
                if client is None:
                    return  # lost again at once; that loss started its own reconnect
                problems = [] if self._verified else await self._check(client)
            except (DriverError, OSError, TimeoutError) as err:
                if client is not None:
                    if self._client is not client:
                        return  # lost during the checks; that loss started its own reconnect
                    self._client = None
                    self._forget_session()
                    await self._dispose(client)
                self._set_lost(f"reconnect to {self.config.endpoint}: {err}")
                await asyncio.sleep(backoff.next_delay())
                continue
            if self._client is not client:
                return  # lost during the checks; that loss started its own reconnect
            if problems:
                mismatch = self._mismatch(problems)
                log.error("%s", mismatch)
                self._running = False
                self._client = None
                self._forget_session()
                await self._dispose(client)
                self._set_lost(str(mismatch), mismatch.reason)
                return
            self._verified = True
            try:
                for watch in list(self._watches):
                    await self._activate(watch, client)
            except (DeviceTimeout, NotConnected) as err:
                # The new session does not answer in time: fail it too (a later reconnect,
                # after a delay, activates every watch); never CONNECTED with a watch idle.
                self._session_failed(client, f"reconnect to {self.config.endpoint}: {err}")
                return
            if self._client is client:
                self._tracker.set(HealthState.CONNECTED)
            return

    async def _dispose(self, client: Client) -> None:
        """Close a client's session and socket, bounded; errors only matter to the log."""
        client.connection_lost_callback = None
        try:
            async with asyncio.timeout(self.config.limits.worst_case):
                await client.disconnect()
        except (OSError, TimeoutError, UaError) as err:
            log.debug("%s: closing the session failed: %r", self.name, err)
        finally:
            client.disconnect_socket()

    def _spawn(
        self,
        coro: Coroutine[Any, Any, None],
        what: str,
        session: Client | _Unbound | None = _UNBOUND,
    ) -> asyncio.Task[None]:
        """Run a background task that close() cancels; one that fails is never left unseen.

        Its error is logged; when the task serves a session (`session`: that client, or None
        for the current one), the session is dropped, health goes LOST naming the error and
        the reconnect loop starts it all again.
        """
        task = asyncio.create_task(coro, name=f"{self.name} {what}")
        self._tasks.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled() or task.exception() is None:
                return
            error = task.exception()
            assert error is not None
            log.error("%s: %s failed", self.name, what, exc_info=error)
            if not isinstance(session, _Unbound):
                self._session_failed(session, f"{what} failed: {failure_text(error)}")

        task.add_done_callback(done)
        return task

    def _session_failed(self, client: Client | None, cause: str) -> None:
        """Work of a session (`client`, or None: the current one) died: LOST and reconnect."""
        if client is not None and client is not self._client:
            return  # a task of a session already replaced
        current, self._client = self._client, None
        if current is not None:
            current.connection_lost_callback = None
            self._forget_session()
        if not self._running:
            return  # connect() is still running and will fail on its next request
        self._set_lost(cause)
        self._spawn_reconnect(current, self._failures.next_delay())

    @abstractmethod
    async def _activate(self, watch: Watch, client: Client) -> None:
        """Create the watch's subscription on this session (see OpcuaDriver)."""
