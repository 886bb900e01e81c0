"""What clients may cost our asyncua servers (the OPC UA simulators and `cellctl serve`), and
the sessions and server that keep to it: idle, vanished and hostile clients must not grow
memory or CPU without bound, and a value that does not fit a node never reaches it.

- `ServerLimits`: sessions and TCP connections at once, the longest session timeout (an
  abandoned session and its subscriptions are closed that long after the client's last
  request), subscriptions and queues, the shortest publishing interval, the largest message.
- `LimitedServer`: asyncua's InternalServer with those limits, making `LimitedSession`s and
  counting them (BadTooManySessions beyond `max_sessions`).
- `LimitedSession`: raises a publishing interval below the floor to it (an abandoned
  subscription then wakes the server at most that often), and refuses a write of an array to
  a scalar variable, or of a scalar to an array one, or of another type, with BadTypeMismatch
  (asyncua compares only the Variant's type, so a 1,000,000-element Double array replaced a
  Double's value).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.internal_server import InternalServer
from asyncua.server.internal_session import InternalSession
from asyncua.server.user_managers import UserManager
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from drivers.opcua_types import status_code

log = logging.getLogger("drivers.opcua.server")

#: The chunk size our servers receive and send (asyncua's default receive buffer).
CHUNK_SIZE = 65535


@dataclass(frozen=True)
class ServerLimits:
    """What the clients of one asyncua server may hold and ask for."""

    #: Client sessions at once (BadTooManySessions beyond) and TCP connections (refused).
    max_sessions: int = 100
    max_connections: int = 100
    #: The longest session timeout a client may ask for: an idle or vanished client's session
    #: (and its subscriptions) is closed this long after its last request.
    max_session_timeout_ms: float = 120_000.0
    #: A connection that has not activated a session this long after connecting is closed
    #: (half a Hello, a client that connects and says nothing).
    activation_timeout_s: float = 10.0
    #: Subscriptions in the whole server; notifications kept per subscription for a slow
    #: client; values queued per monitored item; lifetime and keep-alive counts.
    max_subscriptions: int = 200
    max_unacked_messages: int = 100
    max_queue_size: int = 100
    max_lifetime_count: int = 3_000
    max_keep_alive_count: int = 1_000
    #: Publishing intervals below this (ms) are raised to it: a client asking for 0 or 1 ms
    #: would make the server publish on every change, or wake it a thousand times a second.
    min_publishing_interval_ms: float = 100.0
    #: The largest request or response (asyncua's default is 100 MB).
    max_message_size: int = 4 * 1024 * 1024

    def transport(self) -> TransportLimits:
        """asyncua's transport limits for these (chunks of CHUNK_SIZE)."""
        return TransportLimits(
            max_recv_buffer=CHUNK_SIZE,
            max_send_buffer=CHUNK_SIZE,
            max_chunk_count=self.max_message_size // CHUNK_SIZE + 1,
            max_message_size=self.max_message_size,
        )


#: The limits of every server of ours unless told otherwise.
SERVER_LIMITS = ServerLimits()


class LimitedSession(InternalSession):
    """A client's session that keeps to its server's limits (see the module's docstring)."""

    iserver: LimitedServer

    async def write(self, params: ua.WriteParameters) -> list[ua.StatusCode]:
        """asyncua's write of the values that fit their variables; BadTypeMismatch for the
        others, which keep their values."""
        items = list(params.NodesToWrite)
        misfits = {i: self._misfit(item) for i, item in enumerate(items)}
        refused = {i: reason for i, reason in misfits.items() if reason is not None}
        if not refused:
            return await super().write(params)
        results = [status_code(StatusCodes.BadTypeMismatch)] * len(items)
        rest = [i for i in range(len(items)) if i not in refused]
        if rest:
            fitting = ua.WriteParameters(NodesToWrite=[items[i] for i in rest])
            for i, status in zip(rest, await super().write(fitting), strict=True):
                results[i] = status
        for i, reason in refused.items():
            log.warning("%s: write of %s refused: %s", self.name, items[i].NodeId, reason)
        return results

    def _misfit(self, item: ua.WriteValue) -> str | None:
        """Why a written value does not fit its variable's type or ValueRank (None when it
        does, or when asyncua decides: an unknown node, another attribute, no value).

        asyncua compares the types too, but logs the whole refused value: a client would
        choose the size of the server's log lines."""
        variant = item.Value.Value if item.Value is not None else None
        if item.AttributeId != AttributeIds.Value or variant is None:
            return None
        if variant.VariantType == ua.VariantType.Null:
            return None
        current = self.aspace.read_attribute_value(item.NodeId, AttributeIds.Value).Value
        held = current.VariantType if current is not None else ua.VariantType.Null
        if held not in (ua.VariantType.Null, variant.VariantType):
            return f"a {variant.VariantType.name} for a {held.name} variable"
        rank = self.aspace.read_attribute_value(item.NodeId, AttributeIds.ValueRank)
        if rank.Value is None or not isinstance(rank.Value.Value, int):
            return None
        value_rank: int = rank.Value.Value
        if value_rank == ua.ValueRank.Scalar and variant.is_array:
            return f"an array of {_length(variant.Value)} values for a scalar variable"
        if value_rank >= ua.ValueRank.OneDimension and not variant.is_array:
            return "a scalar for an array variable"
        return None

    async def create_subscription(
        self,
        params: ua.CreateSubscriptionParameters,
        callback: Callable[..., Any],
        request_callback: Callable[..., Any] | None = None,
    ) -> ua.CreateSubscriptionResult:
        """asyncua's, with the publishing interval raised to the server's floor."""
        floor = self.iserver.limits.min_publishing_interval_ms
        if not params.RequestedPublishingInterval >= floor:  # NaN too
            params.RequestedPublishingInterval = floor
        return await super().create_subscription(params, callback, request_callback)


class LimitedServer(InternalServer):
    """asyncua's InternalServer with `limits`, making sessions of `session_class` (at most
    `limits.max_sessions` for clients) and counting them."""

    #: The class of the sessions it makes (a subclass may make its own).
    session_class: type[LimitedSession] = LimitedSession

    def __init__(
        self, limits: ServerLimits = SERVER_LIMITS, user_manager: UserManager | None = None
    ) -> None:
        super().__init__(user_manager=user_manager)
        self.limits = limits
        self.max_connections = limits.max_connections
        self.max_session_timeout_ms = limits.max_session_timeout_ms
        self.min_session_timeout_ms = min(
            self.min_session_timeout_ms, limits.max_session_timeout_ms
        )
        self.max_pending_activation_seconds = limits.activation_timeout_s
        self.max_subscriptions = limits.max_subscriptions
        self.max_unacked_messages_per_subscription = limits.max_unacked_messages
        self.max_monitored_item_queue_size = limits.max_queue_size
        self.max_lifetime_count = limits.max_lifetime_count
        self.max_keep_alive_count = limits.max_keep_alive_count
        self._sessions: dict[ua.NodeId, InternalSession] = {}

    def create_session(
        self, name: str, user: User | None = None, external: bool = False
    ) -> InternalSession:
        """A session of `session_class`; BadTooManySessions once `max_sessions` clients hold
        one."""
        if external and len(self._sessions) >= self.limits.max_sessions:
            raise ServiceError(StatusCodes.BadTooManySessions)
        return self.session_class(
            self,
            self.aspace,
            self.subscription_service,
            name,
            user=user or User(role=UserRole.Anonymous),
            external=external,
        )

    def register_external_session(self, session: InternalSession) -> None:
        """asyncua's registry of client sessions, counted for the limit."""
        super().register_external_session(session)
        self._sessions[session.auth_token] = session

    def unregister_external_session(self, session: InternalSession) -> None:
        """A closed (or timed-out) client session leaves the count."""
        super().unregister_external_session(session)
        self._sessions.pop(session.auth_token, None)

    @property
    def session_count(self) -> int:
        """Client sessions open now (a vanished client's counts until its timeout)."""
        return len(self._sessions)

    @property
    def subscription_count(self) -> int:
        """Subscriptions in the server now."""
        return len(self.subscription_service.subscriptions)

    async def close_sessions(self) -> None:
        """Close every client session left (asyncua's stop keeps those with subscriptions
        open, waiting for their clients to come back, with their timeout and publishing tasks
        running)."""
        for session in list(self._sessions.values()):
            await session.close_session(delete_subs=True)


def _length(value: object) -> int:
    """How many values an array Variant holds (1 for anything else)."""
    return len(value) if isinstance(value, list | tuple) else 1
