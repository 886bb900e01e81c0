"""The web view's live state and its fan-out to open pages as server-sent events.

The Hub keeps, on the web loop, the latest status, batch detail and tag values as JSON-ready
dicts, and one bounded queue per open event stream: a newer status or detail replaces an unsent
one, tag batches merge per tag, so a queue never holds more than one status, one detail and one
value per tag. A stream whose client stops reading is dropped after SLOW_CLIENT seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
from collections.abc import AsyncIterator, Mapping
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from cellctl.cell import Cell
from cellctl.service.api import ServiceStatus
from cellctl.values import TagValue
from drivers.points import Access

__all__ = [
    "MAX_STREAMS",
    "PING",
    "SLOW_CLIENT",
    "EventStream",
    "Hub",
    "Subscriber",
    "status_json",
    "tag_json",
]

log = logging.getLogger("cellctl.web")

#: Seconds between two `: ping` comments on an idle stream (proxies and browsers keep it open).
PING = 15.0
#: Seconds a stream may take to accept one event before its client is dropped.
SLOW_CLIENT = 30.0
#: The most event streams open at once (each open page has one).
MAX_STREAMS = 256
#: The most one peer host may hold open: one client cannot take every place (a panel PC's
#: browser opens at most 6 per server over HTTP/1.1; an HMI server may serve several people).
MAX_STREAMS_PER_PEER = 32

JsonDict = dict[str, Any]


def status_json(status: ServiceStatus) -> JsonDict:
    """The status as the API sends it (its prompt null or {step_id, text, wants})."""
    return dataclasses.asdict(status)


def _value_json(value: Any) -> Any:
    """A tag value JSON can carry: a float that is not finite as its text (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def tag_json(cell: Cell, value: TagValue) -> JsonDict:
    """A tag's value as the API sends it: value, unit, quality, time, error, writable."""
    tag = cell.tags.get(value.tag)
    return {
        "value": _value_json(value.value),
        "unit": tag.unit if tag is not None else None,
        "quality": value.quality.value,
        "at": value.timestamp,
        "error": value.error,
        "writable": tag is not None and tag.access is Access.RW,
    }


def encode(name: str, data: Any) -> bytes:
    """One server-sent event: `event: NAME` and its data as one line of JSON."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return f"event: {name}\ndata: {text}\n\n".encode()


class Subscriber:
    """One open event stream's queue: at most one status, one detail and a value per tag;
    `session`: the token of the session that opened it."""

    def __init__(self, session: str = "", peer: str = "") -> None:
        self.session = session
        self.peer = peer
        self._status: JsonDict | None = None
        self._detail: tuple[JsonDict | None] | None = None  # a 1-tuple: None is a value
        self._tags: dict[str, JsonDict] = {}
        self._wake = asyncio.Event()
        self.closed = False

    def put_status(self, status: JsonDict) -> None:
        """A newer status: it replaces one not sent yet."""
        self._status = status
        self._wake.set()

    def put_detail(self, detail: JsonDict | None) -> None:
        """A newer batch detail (or None): it replaces one not sent yet."""
        self._detail = (detail,)
        self._wake.set()

    def put_tags(self, tags: Mapping[str, JsonDict]) -> None:
        """Changed tags: merged per tag into those not sent yet."""
        self._tags.update(tags)
        self._wake.set()

    def close(self) -> None:
        """End the stream (the server stops, or the client left)."""
        self.closed = True
        self._wake.set()

    async def next(self, ping: float) -> list[bytes]:
        """The events waiting, once there are any; [] after `ping` seconds without one or
        once closed."""
        if not self.closed and not self._pending():
            try:
                async with asyncio.timeout(ping):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._wake.clear()
        if self.closed:
            return []
        events = []
        if self._status is not None:
            events.append(encode("status", self._status))
        if self._detail is not None:
            events.append(encode("detail", self._detail[0]))
        if self._tags:
            events.append(encode("tags", self._tags))
        self._status, self._detail, self._tags = None, None, {}
        return events

    def _pending(self) -> bool:
        return self._status is not None or self._detail is not None or bool(self._tags)


class Hub:
    """The latest state of the service as JSON, and the open streams it is fanned out to (used
    on the web loop only)."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.status: JsonDict = {}
        self.detail: JsonDict | None = None
        self.tags: dict[str, JsonDict] = {}
        self._subscribers: set[Subscriber] = set()
        self.closed = False

    def state(self, me: JsonDict) -> JsonDict:
        """The /api/state object for a caller (`me`: user, role, csrf)."""
        return {"me": me, "status": self.status, "detail": self.detail, "tags": dict(self.tags)}

    def set_status(self, status: ServiceStatus) -> None:
        """A new status, to every stream."""
        self.status = status_json(status)
        for subscriber in self._subscribers:
            subscriber.put_status(self.status)

    def set_detail(self, detail: JsonDict | None) -> None:
        """A new batch detail (None: no batch loaded), to every stream."""
        self.detail = detail
        for subscriber in self._subscribers:
            subscriber.put_detail(detail)

    def set_tags(self, values: Mapping[str, TagValue]) -> None:
        """Changed tag values, to every stream."""
        changed = {name: tag_json(self.cell, value) for name, value in values.items()}
        self.tags.update(changed)
        for subscriber in self._subscribers:
            subscriber.put_tags(changed)

    def subscribe(self, session: str = "", peer: str = "") -> Subscriber | None:
        """A new stream's queue (of the session `session`, from the host `peer`), or None when
        MAX_STREAMS are open, or MAX_STREAMS_PER_PEER of that peer's, or the hub has closed."""
        if self.closed or len(self._subscribers) >= MAX_STREAMS:
            return None
        if peer and sum(s.peer == peer for s in self._subscribers) >= MAX_STREAMS_PER_PEER:
            return None
        subscriber = Subscriber(session, peer)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        """Forget a stream's queue."""
        self._subscribers.discard(subscriber)

    @property
    def streams(self) -> int:
        """How many event streams are open."""
        return len(self._subscribers)

    def end_session(self, session: str) -> None:
        """End the streams of a session that is gone (a logout): they show the cell no more."""
        for subscriber in list(self._subscribers):
            if subscriber.session == session:
                subscriber.close()

    def close(self) -> None:
        """End every stream (the server stops)."""
        self.closed = True
        for subscriber in list(self._subscribers):
            subscriber.close()


class EventStream(Response):
    """The /api/events response: `state` first, then each status, detail and tag batch as it
    comes, a `: ping` comment when idle; a client that does not take an event within
    `slow_client` seconds is dropped."""

    media_type = "text/event-stream"

    def __init__(
        self,
        hub: Hub,
        subscriber: Subscriber,
        first: JsonDict,
        *,
        ping: float = PING,
        slow_client: float = SLOW_CLIENT,
    ) -> None:
        # Set here, not by Response.__init__: a stream has no Content-Length.
        self.status_code = 200
        self.background = None
        self.raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        self._hub = hub
        self._subscriber = subscriber
        self._first = first
        self._ping = ping
        self._slow_client = slow_client

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream until the client leaves, the hub closes or the client is too slow."""
        subscriber = self._subscriber
        left = asyncio.create_task(self._until_disconnected(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self._chunks():
                try:
                    async with asyncio.timeout(self._slow_client):
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except TimeoutError:
                    # The connection is then closed: the server can write nothing more to it.
                    log.warning(
                        "an event stream's client read nothing for %g s: dropped", self._slow_client
                    )
                    return
            if not left.done():
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            left.cancel()
            self._hub.unsubscribe(subscriber)

    async def _chunks(self) -> AsyncIterator[bytes]:
        """The first state, then the events as they come (a ping when idle), until closed."""
        yield encode("state", self._first)
        while True:
            events = await self._subscriber.next(self._ping)
            if self._subscriber.closed:
                return
            yield b"".join(events) if events else b": ping\n\n"

    async def _until_disconnected(self, receive: Receive) -> None:
        """Wait for the client to leave, then end the stream."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self._subscriber.close()
