"""The OPC UA driver: an asyncua client with its own reconnect loop, node checks, subscriptions."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.object_ids import ObjectIds
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError, UaStatusCodeError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from drivers.base import (
    ConnectProgress,
    ConnectTry,
    HealthState,
    Quality,
    Reading,
    ReadingsCallback,
    Unsubscribe,
    Value,
)
from drivers.codecs import check_value, same_reading
from drivers.config import OpcuaConfig
from drivers.errors import (
    BadResponse,
    BadStatus,
    ConnectFailed,
    DeviceTimeout,
    DriverError,
    NotConnected,
    PointMismatch,
    WriteRejected,
)
from drivers.health import Backoff, HealthTracker, TracksHealth, connect_with_backoff
from drivers.opcua_types import (
    datatype_name,
    datatype_node,
    from_ua,
    ns0_node,
    parse_node_id,
    status_code,
    status_name,
    to_variant,
)
from drivers.points import Access, MethodSpec, OpcuaPoint, Point
from drivers.tasks import cancel_and_wait

log = logging.getLogger("drivers.opcua")

T = TypeVar("T")

# Security policy names a cell file may use → message security mode (None: no security).
SECURITY_MODES: dict[str, ua.MessageSecurityMode | None] = {
    "None": None,
    "Basic256Sha256_Sign": ua.MessageSecurityMode.Sign,
    "Basic256Sha256_SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}
# Sessions of a controller that died without closing them expire on the server after this long.
SESSION_TIMEOUT_MS = 60_000
# Reconnect delays after a lost connection grow up to this cap (seconds).
RECONNECT_CAP = 5.0
# asyncua's own liveness probe, behind our keep-alive (seconds).
BACKSTOP_PROBE = 30.0
# Re-reads of a watched point after a fresh read that differed from its last notification.
RECHECKS = 3


class _Unbound:
    """Marks a background task that serves no session (its failure is only logged)."""


_UNBOUND = _Unbound()


class OpcuaDriver(TracksHealth):
    """Talks to one OPC UA server; implements the Driver protocol."""

    def __init__(
        self,
        config: OpcuaConfig,
        points: Sequence[OpcuaPoint] = (),
        methods: Sequence[MethodSpec] = (),
    ) -> None:
        self.name = config.name
        self.config = config
        self._points = tuple(points)
        self._methods = tuple(methods)
        self._tracker = HealthTracker(config.name)
        self._client: Client | None = None
        # True from a connect() that succeeded, or failed for a passing reason, until close():
        # only then is the session (re)opened in the background.
        self._running = False
        # True once the server's nodes were checked against the cell file.
        self._verified = False
        self._watches: list[_Watch] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._method_ids: dict[str, ua.NodeId] = {}
        # Delays restarts after background work failed, so that a failure that recurs on every
        # session cannot spin; reset by a connect() that succeeds.
        self._failures = Backoff(cap=RECONNECT_CAP)

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
                raise ConnectFailed(f"{self.name}: connection to {self.config.endpoint} lost")
        except _Refused as refused:
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
                else ConnectFailed(f"{self.name}: connecting to {self.config.endpoint}: {err}")
            )
            self._running = True
            self._set_lost(str(error))
            self._spawn_reconnect(None)
            if error is err:
                raise
            raise error from err
        self._verified = True
        self._running = True
        self._failures.reset()
        self._tracker.set(HealthState.CONNECTED)

    def _mismatch(self, problems: list[str]) -> PointMismatch:
        """One PointMismatch listing every difference."""
        return PointMismatch(
            f"{self.name}: {len(problems)} difference(s) between the cell file and "
            f"{self.config.endpoint}:\n  " + "\n  ".join(problems)
        )

    async def verify(self) -> list[str]:
        """Every difference between declared points/methods and the server; connects if needed."""
        try:
            client = self._client or await self._open()
        except _Refused as refused:
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
        """Open a session, retrying for at most limits.worst_case; _Refused when retry is futile.
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
                if _permanent(err):
                    raise _Refused(err) from err
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

        async def start() -> None:
            await self._secure(client)
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
                    f"{self.name}: {self.config.endpoint} refused the session: {_error_text(err)}"
                ) from err
            raise
        client.connection_lost_callback = lambda exc: self._on_lost(client, exc)
        self._client = client
        self._spawn(self._keep_alive(client), "keep-alive", client)

    async def _secure(self, client: Client) -> None:
        """Apply the configured security policy, certificates and user identity."""
        security = self.config.security
        if security.policy not in SECURITY_MODES:
            raise ConnectFailed(
                f"{self.name}: unknown security policy {security.policy!r} "
                f"(expected one of {', '.join(SECURITY_MODES)})"
            )
        mode = SECURITY_MODES[security.policy]
        identity = security.user is not None or security.password is not None
        if identity and mode is not ua.MessageSecurityMode.SignAndEncrypt:
            # Without SignAndEncrypt asyncua sends the password in clear text whenever the
            # server's token policy does not encrypt it (always with None, possibly with
            # Sign), and that cannot be known before it is sent: refuse.
            raise ConnectFailed(
                f"{self.name}: user {security.user!r} at {self.config.endpoint} needs security "
                f"policy Basic256Sha256_SignAndEncrypt: with {security.policy} the password "
                "could cross the network in clear text"
            )
        if identity and security.server_cert is None and security.trust_dir is None:
            # Without a known certificate any server answering at the endpoint (a rogue one
            # too) would be sent the password: refuse.
            raise ConnectFailed(
                f"{self.name}: user {security.user!r} at {self.config.endpoint} needs the "
                "server's certificate pinned (server_cert) or in a trust_dir: without one the "
                "password would go to any server that answers there"
            )
        if security.user is not None:
            client.set_user(security.user)
        if security.password is not None:
            client.set_password(security.password)
        if mode is None:
            return
        if not security.cert or not security.key:
            raise ConnectFailed(
                f"{self.name}: security policy {security.policy} needs cert and key"
            )
        cert = await self._load_certificate(security.cert, "certificate")
        # The client must present the application URI its certificate was issued for.
        client.application_uri = _certificate_uri(cert) or client.application_uri
        server_cert: bytes | None = None
        if security.server_cert is not None or security.trust_dir is not None:
            server_cert = await self._trusted_server_cert(client, mode)
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            security.cert,
            security.key,
            # The certificate checked above: the channel is encrypted to it and the session
            # refused ("Server certificate mismatch") if another one answers CreateSession.
            server_certificate=server_cert,
            mode=mode,
        )

    async def _trusted_server_cert(self, client: Client, mode: ua.MessageSecurityMode) -> bytes:
        """The server's certificate from GetEndpoints (no security, no credentials), checked.

        Checked against the pin (server_cert) and the trust directory (trust_dir) before any
        session is opened, so that an unknown server is refused with its fingerprint instead
        of going silent (asyncua encrypts to a pinned key that a rogue server cannot read).
        """
        security = self.config.security
        endpoints = await client.connect_and_get_server_endpoints()
        endpoint = Client.find_endpoint(endpoints, mode, SecurityPolicyBasic256Sha256.URI)
        if not endpoint.ServerCertificate:
            raise ConnectFailed(
                f"{self.name}: {self.config.endpoint} presented no certificate for "
                f"{security.policy}: not trusted, nothing was sent to it"
            )
        try:
            # The leading certificate of what may be a chain.
            presented: x509.Certificate = uacrypto.x509_from_der(  # type: ignore[no-untyped-call]
                endpoint.ServerCertificate
            )
        except ValueError as err:
            raise ConnectFailed(
                f"{self.name}: {self.config.endpoint} presented an unreadable certificate "
                f"({err}): not trusted, nothing was sent to it"
            ) from None
        if security.server_cert is not None:
            pinned = await self._load_certificate(security.server_cert, "server_cert")
            if pinned != presented:
                raise ConnectFailed(
                    f"{self.name}: {self.config.endpoint} is not trusted: its certificate is "
                    f"not the one pinned in server_cert {security.server_cert}; nothing was "
                    f"sent to it (no password). It presented {fingerprint_text(presented)}; "
                    f"the pin is {fingerprint_text(pinned)}. If the server's certificate was "
                    "renewed, pin the new one"
                )
        if security.trust_dir is not None:
            validator = await trust_dir_validator(self.name, security.trust_dir)
            try:
                await validator.validate(presented, endpoint.Server)
            except ServiceError as err:
                raise ConnectFailed(
                    f"{self.name}: {self.config.endpoint} is not trusted: trust_dir "
                    f"{security.trust_dir} does not trust its certificate "
                    f"({status_name(status_code(err.code))}); nothing was sent to it (no "
                    f"password). It presented {fingerprint_text(presented)}. If this is the "
                    "right server, copy its certificate into trust_dir"
                ) from None
            # asyncua checks the CreateSession answer's certificate with it again.
            client.certificate_validator = validator
        return presented.public_bytes(serialization.Encoding.DER)

    async def _on_lost(self, client: Client, exc: Exception) -> None:
        """asyncua's supervisor saw the connection die: report LOST, reconnect in the background."""
        if client is not self._client:
            return
        self._client = None
        self._forget_session()
        if not self._running:
            return  # connect() is still running and will fail on its next request
        self._set_lost(f"connection to {self.config.endpoint} lost: {_error_text(exc)}")
        self._spawn_reconnect(client)

    async def _keep_alive(self, client: Client) -> None:
        """Probe the server every publishing interval; no answer within the limits → lost.

        A server that stopped answering is so found within limits.worst_case plus one
        publishing interval.
        """
        limits = self.config.limits
        state = client.nodes.server_state
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
            # What the controller's watchdog looks for: only the keep-alive's own answers, so
            # other requests cannot hide a keep-alive that stopped.
            self._tracker.answered()

    def _set_lost(self, cause: str) -> None:
        """Health LOST; on the transition every subscriber hears BAD for each point it watches."""
        was = self._tracker.health.state
        self._tracker.set(HealthState.LOST, cause)
        if was is not HealthState.LOST:
            for watch in list(self._watches):
                watch.deliver_bad(watch.points, self._cause(cause))

    def _cause(self, error: str | None) -> str:
        """A health error as the reason in a BAD reading (which names the device already)."""
        return (error or "lost").removeprefix(f"{self.name}: ")

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
                self._set_lost(str(mismatch))
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
                self._session_failed(session, f"{what} failed: {_failure_text(error)}")

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

    # -- requests ----------------------------------------------------------------------------

    async def _load_certificate(self, path: str, what: str) -> Any:
        """A certificate file of the cell file's security settings; ConnectFailed naming it."""
        try:
            return await uacrypto.load_certificate(path)
        except (OSError, ValueError) as err:
            raise ConnectFailed(f"{self.name}: cannot load {what} {path}: {err}") from err

    async def _request(
        self, what: str, call: Callable[[Client], Awaitable[T]], attempts: int = 1
    ) -> T:
        """One service call bounded by limits.timeout (retried on timeout), errors mapped."""
        timeout = self.config.limits.timeout
        last: Exception | None = None
        for _ in range(attempts):
            client = self._client
            if client is None:
                raise NotConnected(f"{self.name}: {what}: not connected to {self.config.endpoint}")
            try:
                # Not wait_for: on 3.11 it returns the result and drops a cancellation that
                # races with the answer, and a cancelled background task would live on.
                async with asyncio.timeout(timeout):
                    return await call(client)
            except TimeoutError as err:
                last = err
            except (ConnectionError, OSError) as err:
                raise NotConnected(
                    f"{self.name}: {what}: connection to {self.config.endpoint} failed: {err}"
                ) from err
            except UaStatusCodeError as err:
                name = status_name(status_code(err.code))
                if name.startswith(_SESSION_GONE):
                    # Not an answer about the request: the session or channel is gone, though
                    # the TCP link may live on. Fail the session, so that it is opened again.
                    raise NotConnected(
                        f"{self.name}: {what}: {self.config.endpoint} answered {name}"
                    ) from err
                raise BadStatus(
                    f"{self.name}: {what}: {self.config.endpoint} answered {name}", name
                ) from err
            except UaError as err:
                raise BadResponse(f"{self.name}: {what}: {self.config.endpoint}: {err}") from err
        raise DeviceTimeout(
            f"{self.name}: {what}: no answer from {self.config.endpoint} "
            f"within {timeout:g} s × {attempts}"
        ) from last

    async def read(self, points: Sequence[Point]) -> list[Reading]:
        """Read every point's value in one request; a bad node gives a BAD reading, not an error.

        A watched point read differing from its last notification is re-read (see _recheck).
        """
        opc = [self._opcua_point(p) for p in points]
        readings = await self._read(opc)
        for watch in self._watches:
            self._heard_fresh(watch, opc, readings)
        return readings

    async def _read(self, opc: Sequence[OpcuaPoint]) -> list[Reading]:
        """Read the points' values in one request."""
        if not opc:
            return []
        ids = [_node_id(self.name, p.name, p.node_id) for p in opc]
        attempts = self.config.limits.retries + 1
        values = await self._request(
            f"read {len(opc)} point(s)",
            lambda c: c.uaclient.read_attributes(ids, AttributeIds.Value),
            attempts,
        )
        now = time.time()
        return [self._reading(p, dv, now) for p, dv in zip(opc, values, strict=True)]

    async def write(self, point: Point, value: Value) -> None:
        """Write one value as a Variant of the point's type; returns once the server said Good."""
        p = self._opcua_point(point)
        where = f"{self.name} {p.name} {p.node_id}"
        if p.access is not Access.RW:
            raise WriteRejected(f"{where}: read-only in the cell file, not written")
        try:
            checked = check_value(p.datatype, value)
        except WriteRejected as err:
            raise WriteRejected(f"{where}: {err}") from err
        node = _node_id(self.name, p.name, p.node_id)
        datavalue = ua.DataValue(to_variant(p.datatype, checked))
        results = await self._request(
            f"write {p.name} {p.node_id}",
            lambda c: c.uaclient.write_attributes([node], [datavalue], AttributeIds.Value),
        )
        if not results[0].is_good():
            name = status_name(results[0])
            raise BadStatus(f"{where}: {self.config.endpoint} refused the write: {name}", name)

    async def call(self, method: MethodSpec, args: Sequence[Value]) -> Any:
        """Call a method with Variants of the declared types; its single result, or None."""
        where = f"{self.name} {method.name} ({method.object_node} {method.browse_name})"
        if len(args) != len(method.args):
            raise WriteRejected(f"{where}: takes {len(method.args)} argument(s), got {len(args)}")
        inputs: list[ua.Variant] = []
        for spec, value in zip(method.args, args, strict=True):
            try:
                inputs.append(to_variant(spec.datatype, check_value(spec.datatype, value)))
            except WriteRejected as err:
                raise WriteRejected(f"{where}: argument {spec.name}: {err}") from err
        object_id = _node_id(self.name, method.name, method.object_node)
        method_id = await self._method_id(method)
        request = ua.CallMethodRequest(object_id, method_id, inputs)
        results = await self._request(f"call {method.name}", lambda c: c.uaclient.call([request]))
        result = results[0]
        if not result.StatusCode.is_good():
            name = status_name(result.StatusCode)
            refused = [
                spec.name
                for spec, status in zip(method.args, result.InputArgumentResults, strict=False)
                if not status.is_good()
            ]
            detail = f" (argument {', '.join(refused)})" if refused else ""
            raise BadStatus(f"{where}: {self.config.endpoint} answered {name}{detail}", name)
        if method.result is None or not result.OutputArguments:
            return None
        try:
            return from_ua(method.result, result.OutputArguments[0].Value)
        except ValueError as err:
            raise BadResponse(f"{where}: result {err}") from err

    async def _method_id(self, method: MethodSpec) -> ua.NodeId:
        """The NodeId of a method, found by its browse name on its object (cached per session)."""
        if method.name not in self._method_ids:
            found = await self._find_methods([method])
            result = found[0]
            if isinstance(result, str):
                raise PointMismatch(f"{self.name} {method.name}: {result}")
            self._method_ids[method.name] = result
        return self._method_ids[method.name]

    async def _find_methods(self, methods: Sequence[MethodSpec]) -> list[ua.NodeId | str]:
        """Each method's NodeId, or why it was not found, in one TranslateBrowsePaths request."""
        paths = [_browse_path(self.name, method) for method in methods]
        results = await self._request(
            "find methods", lambda c: c.uaclient.translate_browsepaths_to_nodeids(paths)
        )
        found: list[ua.NodeId | str] = []
        for method, result in zip(methods, results, strict=True):
            if result.StatusCode.is_good() and result.Targets:
                target = result.Targets[0].TargetId  # an ExpandedNodeId: keep the plain NodeId
                found.append(ua.NodeId(target.Identifier, target.NamespaceIndex, target.NodeIdType))
            else:
                found.append(f"no method {method.browse_name} on {method.object_node}")
        return found

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, points: Sequence[Point], callback: ReadingsCallback) -> Unsubscribe:
        """Monitored items for the points; callback with {name: Reading} on every change."""
        watch = _Watch(self, [self._opcua_point(p) for p in points], callback)
        self._watches.append(watch)
        client = self._client
        if client is not None:
            self._spawn(self._subscribe(watch, client), "subscribe", client)
        health = self._tracker.health
        if health.state is HealthState.LOST:
            # The others heard of the loss when it happened: this one hears of it now.
            cause = self._cause(health.last_error)
            asyncio.get_running_loop().call_soon(watch.deliver_bad, watch.points, cause)

        def unsubscribe() -> None:
            if watch in self._watches:
                self._watches.remove(watch)
            watch.active = False
            subscription = watch.detach()
            if subscription is not None:
                self._spawn(self._delete(subscription), "delete subscription")

        return unsubscribe

    async def _subscribe(self, watch: _Watch, client: Client) -> None:
        """Activate a watch on this session; a request that finds the session unhealthy fails
        the session (LOST, every subscriber told, the reconnect loop re-activates every watch)."""
        try:
            await self._activate(watch, client)
        except (DeviceTimeout, NotConnected) as err:
            self._session_failed(client, self._cause(str(err)))

    async def _activate(self, watch: _Watch, client: Client) -> None:
        """Create the watch's subscription on this session; refused items become BAD readings.

        A request that times out or finds the connection gone raises (DeviceTimeout,
        NotConnected): the session is not healthy, and the caller fails it. Its late answer
        would find no request waiting, and the tag would stay BAD on a device shown CONNECTED.
        A refusal (any other error: a Bad status such as BadTooManySubscriptions), or a
        monitored item refused for a limit (BadTooManyMonitoredItems, ...), is BAD readings and
        a retry on this session (_retry_activate): a refusal may pass (a subscription freed by
        another client), and nothing else would try again. Any other refused item (no such
        node) is a BAD reading for its tags.
        """
        if not watch.active or watch.client is client or self._client is not client:
            return
        watch.client = client
        period = self.config.publishing_interval * 1000.0
        nodes = [client.get_node(node_id) for node_id in watch.by_node]
        subscription: Subscription | None = None
        try:
            subscription = await self._request(
                "create subscription", lambda c: c.create_subscription(period, watch)
            )
            created = subscription
            results = await self._request(
                f"monitor {len(nodes)} node(s)",
                lambda c: created.subscribe_data_change(nodes, sampling_interval=ua.Double(period)),
            )
        except DriverError as err:
            if watch.client is client:
                watch.client = None
            if isinstance(err, DeviceTimeout | NotConnected):
                raise
            if subscription is not None:  # its items were refused: free it for the retry
                self._spawn(self._delete(subscription), "delete subscription")
            if self._client is client:  # not a lost connection (that restores it): report it
                self._refused(watch, client, f"cannot subscribe: {self._cause(str(err))}")
            return
        if not watch.active or watch.client is not client:
            self._spawn(self._delete(created), "delete subscription")
            return
        refused = [
            (node_id, result)
            for node_id, result in zip(watch.by_node, results, strict=True)
            if isinstance(result, ua.StatusCode)
        ]
        passing = [status_name(s) for _, s in refused if status_name(s) in _PASSING_ITEM_REFUSALS]
        if passing:  # a server at a limit: free the subscription and try the watch again
            watch.client = None
            self._spawn(self._delete(created), "delete subscription")
            self._refused(watch, client, f"cannot subscribe: monitored item refused: {passing[0]}")
            return
        watch.subscription = created
        watch.refusal = None
        for node_id, status in refused:
            points = [p for p in watch.points if p.name in watch.by_node[node_id]]
            watch.deliver_bad(points, f"monitored item refused: {status_name(status)}")

    def _refused(self, watch: _Watch, client: Client, reason: str) -> None:
        """The server refused the watch's subscription: BAD readings and a log line once per
        session (and reason), and one retry task per watch on this session."""
        if reason != watch.refusal:
            watch.refusal = reason
            log.warning("%s: %s; trying again while the session lasts", self.name, reason)
            watch.deliver_bad(watch.points, reason)
        if watch.retry is None or watch.retry.done():
            retry = self._retry_activate(watch, client)
            watch.retry = self._spawn(retry, "subscribe retry", client)

    async def _retry_activate(self, watch: _Watch, client: Client) -> None:
        """Try a refused watch again with backoff, until it is subscribed, unsubscribed or the
        session ends (a new session activates every watch); close() cancels it."""
        backoff = Backoff(cap=RECONNECT_CAP)

        def waiting() -> bool:
            return watch.active and watch.client is None and self._client is client

        while waiting():
            await asyncio.sleep(backoff.next_delay())
            if waiting():
                await self._subscribe(watch, client)

    def _heard_fresh(
        self, watch: _Watch, points: Sequence[OpcuaPoint], readings: Sequence[Reading]
    ) -> None:
        """Start re-reading each watched point where a fresh read differs from its last
        notification (one re-reader per point; a newer read only moves its target)."""
        for point, reading in zip(points, readings, strict=True):
            told = watch.told.get(point.name)
            if told is None or not watch.watches(point) or same_reading(told, reading):
                continue
            if point.name not in watch.pending:
                self._spawn(self._recheck(watch, point), f"re-read of {point.name}")
            watch.pending[point.name] = reading

    async def _recheck(self, watch: _Watch, point: OpcuaPoint) -> None:
        """Re-read a point once per publishing interval (RECHECKS times at most per fresh
        read) until the watch was told a sample at least as new as the fresh read.

        A server samples a value every sampling interval and notifies changes from what it
        last sent: a short pulse that only our fresh read caught is never notified, nor is its
        end, so whoever took that read as the newest value (a wait) would hear nothing more.
        A re-read that agrees with the last notification is that end: the watch is told it.
        One that still differs is left to the server, which notifies a change that lasts.
        """
        name = point.name
        target: Reading | None = None
        tries = 0
        try:
            while True:
                await asyncio.sleep(self.config.publishing_interval)
                fresh, told = watch.pending.get(name), watch.told.get(name)
                if fresh is None or told is None or told.not_older_than(fresh):
                    return  # a newer notification came, or the session and its items are gone
                if fresh is not target:
                    target, tries = fresh, 0
                if tries == RECHECKS:
                    return
                tries += 1
                try:
                    [again] = await self._read([point])  # not read(): it would move the target
                except DriverError:
                    return  # the keep-alive tells of a server that stopped answering
                told = watch.told.get(name)
                if told is not None and same_reading(told, again) and watch.active:
                    watch.told[name] = again
                    watch.deliver({name: again})
        finally:
            watch.pending.pop(name, None)

    async def _delete(self, subscription: Subscription) -> None:
        """Delete a subscription on the server; a dead session took it along anyway."""
        with contextlib.suppress(DriverError):
            await self._request("delete subscription", lambda _c: subscription.delete())

    # -- checks ------------------------------------------------------------------------------

    async def _check(self, client: Client) -> list[str]:
        """Compare declared points and methods with the server; one message per difference."""
        problems: list[str] = []
        attributes = (
            AttributeIds.DataType,
            AttributeIds.AccessLevel,
            AttributeIds.UserAccessLevel,
        )
        to_read: list[ua.ReadValueId] = []
        checked: list[OpcuaPoint] = []
        for point in self._points:
            try:
                node = _node_id(self.name, point.name, point.node_id)
            except PointMismatch as err:
                problems.append(str(err))
                continue
            checked.append(point)
            to_read += [ua.ReadValueId(NodeId=node, AttributeId=a) for a in attributes]
        methods: list[MethodSpec] = []
        for method in self._methods:
            try:
                path = _browse_path(self.name, method)
            except PointMismatch as err:
                problems.append(str(err))
                continue
            methods.append(method)
            to_read.append(
                ua.ReadValueId(NodeId=path.StartingNode, AttributeId=AttributeIds.NodeClass)
            )
        params = ua.ReadParameters(NodesToRead=to_read)
        values = (
            await self._request("check nodes", lambda c: c.uaclient.read(params)) if to_read else []
        )
        for i, point in enumerate(checked):
            problems += _point_problems(point, *values[3 * i : 3 * i + 3])
        if methods:
            problems += await self._method_problems(methods, values[3 * len(checked) :])
        return problems

    async def _method_problems(
        self, methods: Sequence[MethodSpec], object_classes: Sequence[ua.DataValue]
    ) -> list[str]:
        """Missing objects or methods, and argument lists that differ from the cell file."""
        problems: list[str] = []
        found = await self._find_methods(methods)
        for method, node_class, result in zip(methods, object_classes, found, strict=True):
            where = f"{method.name} {method.object_node} {method.browse_name}"
            if node_class.StatusCode is not None and node_class.StatusCode.is_bad():
                problems.append(f"{where}: no object {method.object_node} on the server")
                continue
            if isinstance(result, str):
                problems.append(f"{where}: {result}")
                continue
            self._method_ids[method.name] = result
            inputs = await self._arguments(result, "InputArguments")
            declared_in = [arg.datatype for arg in method.args]
            problems += _argument_problems(where, "argument", inputs, declared_in, method)
            if method.result is not None:
                outputs = await self._arguments(result, "OutputArguments")
                problems += _argument_problems(where, "result", outputs, [method.result], method)
        return problems

    async def _arguments(self, method_id: ua.NodeId, prop: str) -> list[ua.Argument]:
        """A method's InputArguments or OutputArguments property ([] when it has none)."""
        client = self._client
        if client is None:
            raise NotConnected(f"{self.name}: not connected to {self.config.endpoint}")
        method = client.get_node(method_id)

        async def read(_c: Client) -> list[ua.Argument]:
            try:
                child: Node = await method.get_child(f"0:{prop}")
            except UaStatusCodeError:
                return []
            value = await child.read_value()
            return list(value or [])

        return await self._request(f"read {prop} of {method_id.to_string()}", read)

    # -- helpers -----------------------------------------------------------------------------

    def _opcua_point(self, point: Point) -> OpcuaPoint:
        if not isinstance(point, OpcuaPoint):
            raise PointMismatch(f"{self.name}: {point.describe()} is not an OPC UA point")
        return point

    def _reading(self, point: OpcuaPoint, datavalue: ua.DataValue, now: float) -> Reading:
        """A Reading from a DataValue: BAD with the status name, or the value as its Python type."""
        where = f"{self.name} {point.name} {point.node_id}"
        status = datavalue.StatusCode
        if status is not None and status.is_bad():
            return Reading(None, now, Quality.BAD, f"{where}: {status_name(status)}")
        raw = datavalue.Value.Value if datavalue.Value is not None else None
        try:
            value = from_ua(point.datatype, raw)
        except ValueError as err:
            return Reading(None, now, Quality.BAD, f"{where}: {err}")
        stamp = datavalue.SourceTimestamp or datavalue.ServerTimestamp
        device_time = _epoch(stamp) if stamp is not None else None
        if status is not None and status.is_uncertain():
            return Reading(
                value, now, Quality.UNCERTAIN, f"{where}: {status_name(status)}", device_time
            )
        return Reading(value, now, device_time=device_time)


def _epoch(stamp: datetime.datetime) -> float:
    """An OPC UA timestamp (UTC; naive ones are UTC too) as seconds since the epoch."""
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.UTC)
    return stamp.timestamp()


def _failure_text(err: BaseException) -> str:
    """An unexpected exception as a health error: its type (the clue to a bug) and text."""
    return f"{type(err).__name__}: {_error_text(err)}"


class _Refused(Exception):
    """Carries a ConnectFailed that retrying cannot fix out of the connect loop."""

    def __init__(self, error: ConnectFailed) -> None:
        super().__init__(str(error))
        self.error = error


# Service results that say the session (or its channel) is gone, not that a request was refused.
_SESSION_GONE = (
    "BadSessionIdInvalid",
    "BadSessionClosed",
    "BadSessionNotActivated",
    "BadSecureChannel",
    "BadServerHalted",
    "BadShutdown",
    "BadCommunicationError",
    "BadConnectionClosed",
)
# Monitored-item refusals that may pass (a server at a limit): the subscription is tried again.
_PASSING_ITEM_REFUSALS = ("BadTooManyMonitoredItems", "BadResourceUnavailable", "BadOutOfMemory")
# Session refusals that do not go away by retrying: identity, certificates, security settings.
_PERMANENT = ("BadUserAccessDenied", "BadIdentityToken", "BadCertificate", "BadSecurity")
# asyncua's own errors (not status codes) that say the security settings do not match.
_PERMANENT_TEXT = (
    "No matching endpoints",
    "No matching policy",
    "Server certificate mismatch",
    "Unsupported security policy",
)


def _permanent(err: ConnectFailed) -> bool:
    """True when a failed connect is a refusal or a configuration error, not a passing fault."""
    cause = err.__cause__
    if isinstance(cause, UaStatusCodeError):
        return status_name(status_code(cause.code)).startswith(_PERMANENT)
    if isinstance(cause, UaError):
        # Any other asyncua error (an answer cut short or garbled, by a server that is
        # starting or a bad link) may pass: retry.
        return str(cause).startswith(_PERMANENT_TEXT)
    # No cause, or a file that cannot be read: our own configuration checks.
    return cause is None or isinstance(cause, OSError | ValueError)


class _Watch:
    """One subscribe() call: its points, callback and the asyncua subscription of this session."""

    def __init__(self, driver: OpcuaDriver, points: list[OpcuaPoint], callback: ReadingsCallback):
        self.driver = driver
        self.points = points
        self.callback = callback
        self.active = True
        self.client: Client | None = None
        self.subscription: Subscription | None = None
        #: Why the server refused this watch's subscription on this session (told once).
        self.refusal: str | None = None
        #: The task trying a refused subscription again on this session (one per watch).
        self.retry: asyncio.Task[None] | None = None
        # One monitored item per node, even when several tags name the same node.
        self.by_node: dict[ua.NodeId, list[str]] = {}
        self._points = {p.name: p for p in points}
        for p in points:
            self.by_node.setdefault(_node_id(driver.name, p.name, p.node_id), []).append(p.name)
        #: The last reading the server notified of each point, in this session.
        self.told: dict[str, Reading] = {}
        #: The newest fresh read that differed from `told`, of each point being re-read.
        self.pending: dict[str, Reading] = {}

    def watches(self, point: OpcuaPoint) -> bool:
        """True when this watch has the point (by name and node)."""
        return self._points.get(point.name) == point

    def detach(self) -> Subscription | None:
        """Forget the session this watch was subscribed on; returns its subscription."""
        subscription, self.subscription, self.client = self.subscription, None, None
        self.told.clear()
        self.refusal = None
        # Not cancelled: mid-request, that would leave what it created on the server. It ends
        # by itself once the watch is inactive, subscribed or on another session.
        self.retry = None
        return subscription

    def deliver(self, readings: dict[str, Reading]) -> None:
        """Hand readings to the subscriber; its errors are logged, never raised into asyncua."""
        if not self.active or not readings:
            return
        try:
            self.callback(readings)
        except Exception:
            log.exception("%s: subscriber callback failed", self.driver.name)

    def deliver_bad(self, points: Sequence[OpcuaPoint], error: str) -> None:
        """A BAD reading for each point, naming the point and the reason."""
        for p in points:
            self.told.pop(p.name, None)  # no longer what the server notified
        now = time.time()
        self.deliver(
            {
                p.name: Reading(
                    None, now, Quality.BAD, f"{self.driver.name} {p.name} {p.node_id}: {error}"
                )
                for p in points
            }
        )

    def datachange_notification(self, node: Node, _value: Any, data: DataChangeNotif) -> None:
        """asyncua's data-change callback: one Reading per tag on the node."""
        client = self.client
        if client is None:
            return  # late news from a lost session must not hide that it was lost
        try:
            names = self.by_node.get(node.nodeid, [])
            now = time.time()
            datavalue = data.monitored_item.Value
            readings = {
                name: self.driver._reading(self._points[name], datavalue, now) for name in names
            }
        except Exception as err:
            # asyncua would only log it, and the subscriber would wait for values in vain.
            log.exception("%s: handling a data change failed", self.driver.name)
            cause = f"data-change notification failed: {_failure_text(err)}"
            self.driver._session_failed(client, cause)
            return
        self.told.update(readings)
        self.deliver(readings)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        """The server ended the subscription (or asyncua saw the session die): LOST, reconnect."""
        client = self.client
        code = status.Status
        if client is None or code is None or not code.is_bad():
            return  # a session already forgotten; a loss on its way reaches users as health
        log.error("%s: the server ended a subscription: %s", self.driver.name, status_name(code))
        self.driver._session_failed(client, f"subscription ended: {status_name(code)}")


def _node_id(device: str, what: str, text: str) -> ua.NodeId:
    """Parse a NodeId string; PointMismatch naming the tag when the cell file's text is invalid."""
    try:
        return parse_node_id(text)
    except ValueError as err:
        raise PointMismatch(f"{device} {what}: {err}") from err


def _browse_path(device: str, method: MethodSpec) -> ua.BrowsePath:
    """The path from a method's object to the method; PointMismatch for malformed cell-file text."""
    start = _node_id(device, method.name, method.object_node)
    try:
        name = ua.QualifiedName.from_string(method.browse_name)
    except (UaError, ValueError) as err:
        raise PointMismatch(
            f"{device} {method.name}: invalid browse name {method.browse_name!r}: {err}"
        ) from err
    element = ua.RelativePathElement(
        ReferenceTypeId=ns0_node(ObjectIds.HasComponent),
        IsInverse=cast(ua.Boolean, False),  # asyncua's marker class; the value is a bool
        IncludeSubtypes=cast(ua.Boolean, True),
        TargetName=name,
    )
    return ua.BrowsePath(start, ua.RelativePath([element]))


def _point_problems(
    point: OpcuaPoint, datatype: ua.DataValue, access: ua.DataValue, user_access: ua.DataValue
) -> list[str]:
    """How one variable on the server differs from its declaration."""
    where = f"{point.name} {point.node_id}"
    status = datatype.StatusCode
    if status is not None and status.is_bad():
        if status.value == StatusCodes.BadNodeIdUnknown:
            return [f"{where}: no such node on the server"]
        if status.value == StatusCodes.BadAttributeIdInvalid:
            return [f"{where}: not a variable"]
        return [f"{where}: cannot read its DataType: {status_name(status)}"]
    problems: list[str] = []
    server_type = datatype.Value.Value if datatype.Value is not None else None
    if server_type != datatype_node(point.datatype):
        shown = (
            datatype_name(server_type) if isinstance(server_type, ua.NodeId) else repr(server_type)
        )
        problems.append(f"{where}: server says {shown}, cell file says {point.datatype.value}")
    no_read: list[str] = []
    no_write: list[str] = []
    for label, value in (("AccessLevel", access), ("UserAccessLevel", user_access)):
        bits = value.Value.Value if value.Value is not None else None
        if not isinstance(bits, int):
            problems.append(f"{where}: cannot read its {label}: {status_name(value.StatusCode)}")
            continue
        if not bits & (1 << ua.AccessLevel.CurrentRead):
            no_read.append(label)
        if point.access is Access.RW and not bits & (1 << ua.AccessLevel.CurrentWrite):
            no_write.append(label)
    if no_read:
        problems.append(f"{where}: server does not allow reading ({', '.join(no_read)})")
    if no_write:
        problems.append(
            f"{where}: cell file says rw, server does not allow writing ({', '.join(no_write)})"
        )
    return problems


def _argument_problems(
    where: str,
    kind: str,
    server: Sequence[ua.Argument],
    declared: Sequence[Any],
    method: MethodSpec,
) -> list[str]:
    """Differences in count and type between a method's server-side and declared arguments."""
    if len(server) != len(declared):
        noun = "arguments" if kind == "argument" else "results"
        return [f"{where}: server has {len(server)} {noun}, cell file declares {len(declared)}"]
    problems: list[str] = []
    for i, (arg, datatype) in enumerate(zip(server, declared, strict=True)):
        if arg.DataType != datatype_node(datatype):
            label = method.args[i].name if kind == "argument" else "result"
            problems.append(
                f"{where}: {kind} {label} server says {datatype_name(arg.DataType)}, "
                f"cell file says {datatype.value}"
            )
    return problems


def _certificate_uri(cert: x509.Certificate) -> str | None:
    """The application URI in a certificate's SubjectAltName, if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def fingerprint_text(cert: x509.Certificate) -> str:
    """A certificate's subject and fingerprints, as OPC UA tools show them (SHA-1 thumbprint)."""
    sha256 = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    sha1 = cert.fingerprint(hashes.SHA1()).hex(":").upper()
    return f"{cert.subject.rfc4514_string()}, SHA-256 fingerprint {sha256}, SHA-1 thumbprint {sha1}"


async def trust_dir_validator(device: str, directory: str) -> CertificateValidator:
    """A validator trusting the server (or CA) certificates in a folder of *.der / *.pem files.

    Checks as OPC UA Part 4 asks of a server's certificate: trusted (itself or its issuer in
    the folder), within its validity, the server's application URI, key usages. ConnectFailed
    when the folder cannot be read.
    """
    path = Path(directory)
    if not await asyncio.to_thread(path.is_dir):
        raise ConnectFailed(f"{device}: trust_dir {directory} is not a directory")
    store = TrustStore([path], [])
    try:
        await store.load()
    except ValueError as err:
        if "empty store" not in str(err):
            raise ConnectFailed(f"{device}: cannot read trust_dir {directory}: {err}") from err
        # An empty folder trusts nothing: every server is refused, with its fingerprint.
    except OSError as err:
        raise ConnectFailed(f"{device}: cannot read trust_dir {directory}: {err}") from err
    return CertificateValidator(
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER,
        store,
    )


def _error_text(err: BaseException) -> str:
    """An exception as a short message: the status name for OPC UA errors."""
    if isinstance(err, UaStatusCodeError):
        return status_name(status_code(err.code))
    return str(err) or type(err).__name__
