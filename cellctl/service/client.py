"""The remote CLI's side of `cellctl serve`: one OPC UA session with a running service, its
status read in one request, its methods called, refusals turned into errors with their reason
(cellctl.service.client_errors).

Everything is found by the names in cellctl.service.api: the namespace by its URI (never an
assumed index), the status variables by their NodeId strings, the PackML object and its
methods by browse name. A refused call answers a Bad status with no message (asyncua raises
before it reads outputs): the reason is read from `PackML.LastRefusal` on the same session,
which the server answers per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.common.subscription import DataChangeNotif, Subscription
from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from cellctl.errors import CellctlError
from cellctl.service.api import METHODS, NAMESPACE, PACKML, STATUS_VARIABLES, ServiceStatus
from cellctl.service.client_errors import (
    COMMUNICATION,
    BadRemoteInput,
    CommandRefused,
    InsecureLogin,
    ServerUnreachable,
    ServiceFailed,
    connect_error,
    name_of,
    request_error,
)
from cellctl.service.client_status import status_from, text_of
from drivers.config import is_loopback
from drivers.opcua_types import status_name

log = logging.getLogger(__name__)

#: Seconds a method call may take: the server gives the controller 30 s to answer, then
#: answers BadTimeout itself; waiting less would call a command lost that may still be done.
CALL_TIMEOUT = 35.0
#: A session the CLI leaves without closing (killed) expires on the server after this long.
SESSION_TIMEOUT_MS = 60_000
#: The status subscription: notifications published every 500 ms, each variable sampled at
#: most 10 times a second; the State variable keeps a queue so that a state passed through
#: between two publications (Starting on the way to Execute) is still seen.
PUBLISHING_MS = 500.0
SAMPLING_MS = ua.Double(100.0)
STATE_QUEUE = 10


def _variant(arg: str | Sequence[str]) -> ua.Variant:
    """A method argument as the String (or String[]) the method declares: an empty list
    would otherwise go as Null and be refused as a type mismatch."""
    if isinstance(arg, str):
        return ua.Variant(arg, ua.VariantType.String)
    return ua.Variant(list(arg), ua.VariantType.String, is_array=True)


# -- the session -------------------------------------------------------------------------------

#: What subscribe_status hands its callback: the status now, and the states passed through
#: since the last call (oldest first), the one now included when it changed.
StatusCallback = Callable[[ServiceStatus, tuple[str, ...]], None]


class RemoteCell:
    """One session with a running `cellctl serve` (an async context manager).

    `certdir` holding a client certificate (cellctl certs client) means Basic256Sha256
    SignAndEncrypt; otherwise no security. `timeout` bounds the connect and every read; a
    method call waits for the service's own answer (CALL_TIMEOUT).
    """

    def __init__(
        self,
        url: str,
        user: str | None = None,
        password: str | None = None,
        certdir: Path | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.user = user
        self._password = password
        self._certdir = certdir
        self._timeout = timeout
        self._client: Client | None = None
        self._ns = 0
        self._packml: Node | None = None
        self._methods: dict[str, ua.NodeId] = {}
        self._lost: asyncio.Event | None = None
        self.secured = False

    async def __aenter__(self) -> RemoteCell:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connecting ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the session within `timeout` and find the service's namespace.

        ServerUnreachable (exit 2), LoginRefused or CertificateRefused (exit 7), InsecureLogin
        (exit 1: a password to another machine without a certificate is never sent)."""
        client = Client(self.url, timeout=self._timeout)
        client.session_timeout = SESSION_TIMEOUT_MS
        try:
            async with asyncio.timeout(self._timeout):
                self.secured = await self._secure(client)
                if self.user is not None:
                    client.set_user(self.user)
                    client.set_password(self._password or "")
                await client.connect()
        except BaseException as err:
            client.disconnect_socket()  # a connect cut short leaves its socket open
            if isinstance(err, CellctlError):
                raise
            raise connect_error(self.url, self.user, self._timeout, err) from err
        self._client = client
        self._lost = asyncio.Event()
        lost = self._lost

        async def on_lost(_exc: Exception) -> None:
            lost.set()

        client.connection_lost_callback = on_lost
        try:
            async with asyncio.timeout(self._timeout):
                self._ns = await client.get_namespace_index(NAMESPACE)
        except ValueError as err:
            await self.close()
            raise ServerUnreachable(
                self.url, f"not a cellctl service (no namespace {NAMESPACE})"
            ) from err
        except BaseException as err:
            await self.close()
            raise request_error(self.url, self._timeout, err, "reading the namespaces") from err

    async def _secure(self, client: Client) -> bool:
        """Set up SignAndEncrypt when the certificate folder holds a client certificate (to the
        server certificate there, when there is one: the pin); True then. A password to
        another machine without it: InsecureLogin, before anything is sent."""
        secured = False
        if self._certdir is not None:
            from cellctl.service.certs import CertDir
            from cellctl.service.client_security import client_security

            certs = CertDir(self._certdir)
            if certs.client_cert.is_file():
                pinned = certs.server_cert if certs.server_cert.is_file() else None
                await client_security(client, certs, pinned)
                secured = True
        host = urlparse(self.url).hostname or ""
        if self.user is not None and not secured and not is_loopback(host):
            raise InsecureLogin(self.url, self.user)
        return secured

    async def close(self) -> None:
        """Close the session (bounded: a server that is gone does not hold the CLI)."""
        client, self._client = self._client, None
        if client is None:
            return
        client.connection_lost_callback = None
        try:
            async with asyncio.timeout(self._timeout):
                await client.disconnect()
        except (TimeoutError, OSError, UaError) as err:
            log.debug("closing the session with %s: %r", self.url, err)
            client.disconnect_socket()

    # -- requests ----------------------------------------------------------------------------

    @property
    def client(self) -> Client:
        """The asyncua client of the open session."""
        if self._client is None:
            raise ServerUnreachable(self.url, "not connected")
        return self._client

    def _node(self, name: str) -> Node:
        return self.client.get_node(ua.NodeId(ua.String(f"{PACKML}.{name}"), ua.Int16(self._ns)))

    async def status(self) -> ServiceStatus:
        """Every status variable read in one request, as a ServiceStatus."""
        names = list(STATUS_VARIABLES)
        try:
            async with asyncio.timeout(self._timeout):
                answers = await self.client.read_attributes([self._node(n) for n in names])
        except BaseException as err:
            raise request_error(self.url, self._timeout, err, "reading the status") from err
        values: dict[str, Any] = {}
        for name, answer in zip(names, answers, strict=True):
            status = status_name(answer.StatusCode) if answer.StatusCode is not None else "Good"
            if status == "BadNodeIdUnknown":
                raise ServerUnreachable(
                    self.url, f"not a cellctl service, or another version (no {PACKML}.{name})"
                )
            if status.startswith("Bad"):
                raise ServiceFailed(self.url, f"reading {PACKML}.{name}", status)
            values[name] = answer.Value.Value if answer.Value is not None else None
        return status_from(values)

    async def call(self, method: str, *args: str | Sequence[str]) -> str:
        """Call a METHODS entry with its arguments (texts; a list for Parameters); its Result.

        A refusal raises CommandRefused (state, role: exit 7) or BadRemoteInput (exit 1)
        with the reason the service gave; a lost connection ServerUnreachable (exit 2);
        any other status ServiceFailed (exit 4)."""
        inputs, _action = METHODS[method]
        if len(args) != len(inputs):
            raise TypeError(f"{method} takes {len(inputs)} arguments ({', '.join(inputs)})")
        method_id = await self._method_id(method)
        client = self.client
        assert self._packml is not None
        # asyncua has one request timeout per connection: a call gets the longer one.
        protocol = client.uaclient.protocol
        if protocol is None:
            raise ServerUnreachable(self.url, f"calling {method}: connection lost")
        saved = protocol.timeout
        protocol.timeout = CALL_TIMEOUT
        try:
            async with asyncio.timeout(CALL_TIMEOUT + 1):
                result = await self._packml.call_method(method_id, *map(_variant, args))
        except UaStatusCodeError as err:
            raise await self._refusal(method, name_of(err)) from err
        except BaseException as err:
            raise request_error(self.url, self._timeout, err, f"calling {method}") from err
        finally:
            protocol.timeout = saved
        return text_of(result)

    async def _refusal(self, method: str, status: str) -> CellctlError:
        """The error of a call answered `status`, with this session's LastRefusal text."""
        if status in COMMUNICATION:
            return ServerUnreachable(self.url, f"calling {method}: {status}")
        try:
            async with asyncio.timeout(self._timeout):
                reason = text_of(await self._node("LastRefusal").read_value())
        except (TimeoutError, OSError, UaError) as err:
            log.debug("reading LastRefusal after %s: %r", status, err)
            reason = ""
        if status in ("BadUserAccessDenied", "BadInvalidState"):
            return CommandRefused(method, status, reason)
        if status == "BadInvalidArgument":
            return BadRemoteInput(method, reason)
        return ServiceFailed(self.url, f"calling {method}", status, reason)

    async def _method_id(self, method: str) -> ua.NodeId:
        """The NodeId of a PackML method, found by browse name (browsed once a session)."""
        if not self._methods:
            try:
                async with asyncio.timeout(self._timeout):
                    self._packml = await self._child(self.client.nodes.objects, PACKML)
                    children = await self._packml.get_children_descriptions()
            except CellctlError:
                raise
            except BaseException as err:
                raise request_error(self.url, self._timeout, err, f"browsing {PACKML}") from err
            for child in children:
                if child.NodeClass == ua.NodeClass.Method:
                    self._methods.setdefault(child.BrowseName.Name, child.NodeId)
        try:
            return self._methods[method]
        except KeyError:
            raise ServerUnreachable(
                self.url, f"not a cellctl service, or another version (no method {method})"
            ) from None

    async def _child(self, parent: Node, name: str) -> Node:
        """The child of `parent` browsed as `name`, in the service's namespace if several."""
        found = [
            ref for ref in await parent.get_children_descriptions() if ref.BrowseName.Name == name
        ]
        if not found:
            raise ServerUnreachable(self.url, f"not a cellctl service (no {name} object)")
        found.sort(key=lambda ref: ref.BrowseName.NamespaceIndex != self._ns)
        return self.client.get_node(found[0].NodeId)

    # -- watching ----------------------------------------------------------------------------

    async def subscribe_status(self, callback: StatusCallback) -> None:
        """Call `callback` with the status now, then again after each batch of changes the
        service publishes, until cancelled; ServerUnreachable when the service goes away."""
        client = self.client
        names = [n for n in STATUS_VARIABLES if n not in ("State", "LastRefusal")]
        notes = _Notifications()
        state_node = self._node("State")
        try:
            async with asyncio.timeout(self._timeout):
                subscription: Subscription = await client.create_subscription(PUBLISHING_MS, notes)
                await subscription.subscribe_data_change(
                    state_node, queuesize=STATE_QUEUE, sampling_interval=SAMPLING_MS
                )
                await subscription.subscribe_data_change(
                    [self._node(n) for n in names], sampling_interval=SAMPLING_MS
                )
        except BaseException as err:
            raise request_error(self.url, self._timeout, err, "subscribing to the status") from err
        try:
            last = await self.status()
            callback(last, ())
            while True:
                states: list[str] = []
                for node, value in await self._next_batch(notes):
                    state = text_of(value)
                    if node == state_node and state != (states[-1] if states else last.state):
                        states.append(state)
                try:
                    last = await self.status()
                except ServerUnreachable as err:  # closed after its last publication
                    raise ServerUnreachable(self.url, "the service went away") from err
                if states and states[-1] != last.state:
                    states.append(last.state)
                callback(last, tuple(states))
        finally:
            if self._client is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self._timeout):
                        await subscription.delete()

    async def _next_batch(self, notes: _Notifications) -> list[tuple[Node, Any]]:
        """The data changes of the next publication; ServerUnreachable once the connection is
        lost."""
        assert self._lost is not None
        lost = asyncio.ensure_future(self._lost.wait())
        first = asyncio.ensure_future(notes.queue.get())
        try:
            await asyncio.wait({lost, first}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
            first.cancel()
        if not first.done() or first.cancelled():
            raise ServerUnreachable(self.url, "the service went away")
        batch = [first.result()]
        # asyncua hands out one publication's notifications together: those queued now.
        while not notes.queue.empty():
            batch.append(notes.queue.get_nowait())
        changes: list[tuple[Node, Any]] = []
        for note in batch:
            if isinstance(note, ua.StatusChangeNotification):
                why = status_name(note.Status)
                raise ServerUnreachable(self.url, f"the service went away ({why})")
            changes.append(note)
        return changes


class _Notifications:
    """asyncua's subscription handler: every notification into a queue that the watcher
    drains (asyncua calls each from a task of its own, in the order they came)."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Node, Any] | ua.StatusChangeNotification] = asyncio.Queue()

    def datachange_notification(self, node: Node, val: Any, data: DataChangeNotif) -> None:
        """A variable changed."""
        self.queue.put_nowait((node, val))

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        """The subscription's state changed (the server is gone: BadShutdown, BadTimeout)."""
        self.queue.put_nowait(status)
