"""The web view's HTTP/1.1 connections (uvicorn's h11 protocol) with the bounds uvicorn lacks.

uvicorn times out only an idle keep-alive connection, and only after a first response: a client
that connects and sends nothing, half a request head, or a body that never ends holds its
connection (a file descriptor, buffers) for good, and any byte it trickles in restarts even the
keep-alive timer. Here every connection must deliver each whole request (head and body) within
`deadline` seconds of opening or of the previous response, else it is closed (408 when it had
started one), and a head over MAX_HEAD bytes is refused (431); one host holds at most
MAX_CONNECTIONS_PER_PEER connections, all hosts MAX_CONNECTIONS: beyond, a new connection is
answered 503 and closed at once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle

__all__ = [
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_PEER",
    "REQUEST_DEADLINE",
    "GuardedH11Protocol",
    "guarded_protocol",
]

log = logging.getLogger("cellctl.web")

#: Seconds a client has to send a whole request, from the connection's start or the last
#: response (a page's requests are a few hundred bytes; a browser sends them at once).
REQUEST_DEADLINE = 10.0
#: The most open connections: above the event streams' limit (cellctl.web.events.MAX_STREAMS,
#: 256), each open page holding one, with room for their other requests.
MAX_CONNECTIONS = 512
#: The most one host may hold: one client cannot take every place (a browser opens at most 6
#: per server; an HMI server serving several people, the streams' per-peer limit of 32).
MAX_CONNECTIONS_PER_PEER = 128
#: The largest request head (request line and headers): h11's own limit, which h11 applies only
#: to a head that comes in pieces (one that comes in one read could be 256 KiB).
MAX_HEAD = 16 * 1024


def _plain(status: str, text: str) -> bytes:
    """A whole plain-text response that closes the connection, written past the app."""
    body = f"{text}\n".encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


_BUSY = _plain("503 Service Unavailable", "too many connections to this server: retry later")
_HEAD_TOO_BIG = _plain(
    "431 Request Header Fields Too Large", f"the request's head is over {MAX_HEAD} bytes"
)
_TOO_SLOW = _plain("408 Request Timeout", "the request did not come in in time")


#: Seconds between two log lines about refused connections (a flood would fill the log).
LOG_EVERY = 10.0


class _Refusals:
    """Connections refused as too many, told in the log at most once every LOG_EVERY s."""

    def __init__(self) -> None:
        self.count = 0
        self.told_at = -LOG_EVERY

    def refused(self, now: float, host: str) -> None:
        """One more refused; logged with those since the last line when it is time."""
        self.count += 1
        if now - self.told_at >= LOG_EVERY:
            log.warning(
                "web view: too many connections: %d refused (the last from %s)",
                self.count,
                host or "?",
            )
            self.count, self.told_at = 0, now


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, each request due within `deadline` seconds and the number of
    connections capped (in total and per peer host)."""

    deadline: ClassVar[float] = REQUEST_DEADLINE
    max_connections: ClassVar[int] = MAX_CONNECTIONS
    max_per_peer: ClassVar[int] = MAX_CONNECTIONS_PER_PEER
    refusals: ClassVar[_Refusals] = _Refusals()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        # The request the deadline runs after (None: the connection's first).
        self._after: RequestResponseCycle | None = None
        self._started = False  # a byte came since the deadline was set

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Take the connection, or answer 503 and close it when there are too many."""
        super().connection_made(transport)
        host = self.client[0] if self.client else ""
        if len(self.connections) > self.max_connections or (
            host and self._held_by(host) > self.max_per_peer
        ):
            self.refusals.refused(self.loop.time(), host)
            transport.write(_BUSY)
            transport.close()
            return
        self._arm(None)

    def _held_by(self, host: str) -> int:
        """How many connections `host` holds (this one included)."""
        return sum(
            isinstance(c, H11Protocol) and c.client is not None and c.client[0] == host
            for c in self.connections
        )

    def connection_lost(self, exc: Exception | None) -> None:
        """The connection is gone: no deadline left to watch."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Bytes of a request: the deadline ends once a whole new request is in."""
        self._started = True
        if self.conn.their_state is h11.IDLE and self._head_too_big(data):
            log.warning(
                "web view: a request head over %d bytes from %s refused", MAX_HEAD, self.client
            )
            self.transport.write(_HEAD_TOO_BIG)
            self.transport.close()
            return
        super().data_received(data)
        self._check()

    def _head_too_big(self, data: bytes) -> bool:
        """True when the head coming in (what h11 holds, then `data`) has no end within
        MAX_HEAD bytes."""
        buffered = self.conn.trailing_data[0]
        if len(buffered) + len(data) <= MAX_HEAD:
            return False
        return b"\r\n\r\n" not in (buffered + data)[: MAX_HEAD + 4]

    def on_response_complete(self) -> None:
        """A response went out: the next request is due within the deadline."""
        done = self.cycle
        super().on_response_complete()  # may start a request already received (pipelined)
        if not self.transport.is_closing():
            self._arm(done)
            self._check()

    def _arm(self, after: RequestResponseCycle | None) -> None:
        """Give the client `deadline` seconds for the request after `after`."""
        self._disarm()
        self._after = after
        self._started = False
        self._timer = self.loop.call_later(self.deadline, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check(self) -> None:
        """Disarm once a request newer than `_after` came in whole (head and body)."""
        if (
            self._timer is not None
            and self.cycle is not self._after
            and self.conn.their_state is h11.DONE
        ):
            self._disarm()

    def _expired(self) -> None:
        """The request did not come in time: close (408 when one had started and no response
        has begun)."""
        self._timer = None
        if self.transport.is_closing():
            return
        answering = self.cycle is not None and self.cycle.response_started
        if self._started and not answering:
            self.transport.write(_TOO_SLOW)
        self.transport.close()


def guarded_protocol(deadline: float) -> type[GuardedH11Protocol]:
    """The protocol class with this request deadline (uvicorn makes each connection's)."""
    return type(
        "GuardedH11Protocol", (GuardedH11Protocol,), {"deadline": deadline, "refusals": _Refusals()}
    )
