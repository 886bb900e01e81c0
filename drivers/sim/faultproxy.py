"""A small asyncio TCP proxy between a driver and a simulator, for link-level fault injection."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from drivers.config import is_loopback

log = logging.getLogger("drivers.sim")

_CHUNK = 65536
# Server→client chunks waiting for their delivery time; a full queue stops reading the server.
_QUEUE_LIMIT = 256
# Gap between the pieces of a fragmented chunk, so the client sees them arrive separately.
_FRAGMENT_GAP = 0.002


class RequestAction(enum.Enum):
    """What a request watcher (FaultProxy.watch_requests) has the proxy do with a request."""

    FORWARD = "forward"
    #: Swallow it, and everything after it on that link both ways: the device never sees it.
    HOLD = "hold"
    #: Forward it, then swallow every answer on that link: the device did it, nobody hears so.
    HOLD_ANSWER = "hold-answer"


@dataclass
class ProxyStats:
    """Traffic counters: connections accepted and refused, bytes forwarded each way."""

    accepted: int = 0
    refused: int = 0
    bytes_to_server: int = 0
    bytes_to_client: int = 0


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close a connection at once with a TCP reset, dropping anything not yet sent."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its connection to the target, pumped by three tasks."""

    def __init__(
        self,
        proxy: FaultProxy,
        client_reader: asyncio.StreamReader,
        client_writer: asyncio.StreamWriter,
        server_reader: asyncio.StreamReader,
        server_writer: asyncio.StreamWriter,
    ) -> None:
        self.proxy = proxy
        self.client_reader = client_reader
        self.client_writer = client_writer
        self.server_reader = server_reader
        self.server_writer = server_writer
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_LIMIT)
        self.pumps: list[asyncio.Task[None]] = []
        self.held_up = False  # a watcher held a request: nothing more goes to the server
        self.held_down = False  # a watcher held an answer: nothing more goes to the client

    async def run(self) -> None:
        """Pump both directions until both ends are closed, or the link is dropped."""
        try:
            async with asyncio.TaskGroup() as group:
                self.pumps = [
                    group.create_task(self._upstream()),
                    group.create_task(self._downstream()),
                    group.create_task(self._deliver()),
                ]
        except* (ConnectionError, OSError) as errors:
            log.debug("fault proxy %s: link lost: %s", self.proxy.endpoint, errors.exceptions)
            self.abort()
        finally:
            # Both directions ended with EOF, or the link was aborted: close what is left.
            self.client_writer.close()
            self.server_writer.close()

    def abort(self) -> None:
        """Reset both sides at once and stop pumping, discarding delayed chunks.

        run() then returns normally: a task group ignores children that were cancelled.
        """
        _abort(self.client_writer)
        _abort(self.server_writer)
        for pump in self.pumps:
            pump.cancel()

    async def _upstream(self) -> None:
        while data := await self.client_reader.read(_CHUNK):
            if self.proxy.frozen or self.held_up:
                continue  # a frozen link swallows requests: the device never sees them
            watcher = self.proxy.watcher
            if watcher is not None:
                action = watcher(data)
                if action is RequestAction.HOLD:
                    self.held_up = self.held_down = True
                    continue
                self.held_down = self.held_down or action is RequestAction.HOLD_ANSWER
            self.proxy.stats.bytes_to_server += len(data)
            self.server_writer.write(data)
            await self.server_writer.drain()
        if self.server_writer.can_write_eof():
            self.server_writer.write_eof()

    async def _downstream(self) -> None:
        loop = asyncio.get_running_loop()
        while data := await self.server_reader.read(_CHUNK):
            if not self.proxy.frozen and not self.held_down:
                await self.queue.put((loop.time() + self.proxy.next_delay(), data))
        await self.queue.put((loop.time(), b""))  # EOF, delivered after what is queued

    async def _deliver(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await self.queue.get()
            # One task delivers in queue order: a chunk due before its predecessor waits for
            # it, so jitter never reorders the stream.
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                if self.client_writer.can_write_eof():
                    self.client_writer.write_eof()
                return
            if self.proxy.frozen:
                continue
            if self.proxy.garbled:
                data = random.randbytes(len(data))
            pieces = _split(data, self.proxy.pieces)
            for index, piece in enumerate(pieces):
                if index:
                    await asyncio.sleep(_FRAGMENT_GAP)
                self.proxy.stats.bytes_to_client += len(piece)
                self.client_writer.write(piece)
                await self.client_writer.drain()


def _split(data: bytes, pieces: int) -> list[bytes]:
    """Cut data into `pieces` nearly equal parts (fewer when data is shorter)."""
    count = max(1, min(pieces, len(data)))
    size, extra = divmod(len(data), count)
    parts: list[bytes] = []
    start = 0
    for index in range(count):
        end = start + size + (1 if index < extra else 0)
        parts.append(data[start:end])
        start = end
    return parts


class FaultProxy:
    """Forwards TCP between clients and one target, with switchable link faults.

    Every switch takes effect at once, also on connections already open.
    """

    def __init__(
        self, target_host: str, target_port: int, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not is_loopback(host):
            raise ValueError(f"fault proxy binds loopback only, not {host!r}")
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()  # one per accepted client connection
        self.stats = ProxyStats()
        self.watcher: Callable[[bytes], RequestAction] | None = None
        self.clear()

    @property
    def port(self) -> int:
        """The bound port (after start; kept across a restart)."""
        return self._port

    @property
    def endpoint(self) -> str:
        """'host:port' that clients connect to instead of the target."""
        return f"{self.host}:{self._port}"

    @property
    def open_connections(self) -> int:
        """How many client connections are being forwarded now."""
        return len(self._links)

    async def start(self) -> None:
        """Listen; when this returns clients can connect. A restart reuses the port."""
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self.drop()
        # The accept tasks are not cancelled themselves: asyncio (3.11) logs a cancelled
        # client_connected_cb as an error. Without pumps they return at once.
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- fault switches -------------------------------------------------------------------

    def freeze(self, on: bool) -> None:
        """Keep connections open but forward nothing either way: the device never answers."""
        self.frozen = on

    def drop(self) -> None:
        """Reset every open connection at once (the link is cut)."""
        for link in list(self._links):
            link.abort()

    def refuse(self, on: bool) -> None:
        """Accept new connections and reset them at once, as a dead link would."""
        self.refusing = on

    def latency(self, mean: float, jitter: float = 0.0) -> None:
        """Delay each server→client chunk by mean ± jitter seconds (uniform), keeping order."""
        if mean < 0 or jitter < 0:
            raise ValueError("latency and jitter must not be negative")
        self.delay_mean = mean
        self.delay_jitter = jitter

    def hold_next(self, delay: float) -> None:
        """Deliver only the next server→client chunk `delay` s late (one late answer).

        The chunks after it queue behind it, as bytes on one TCP stream do.
        """
        if delay < 0:
            raise ValueError("delay must not be negative")
        self.held = delay

    def fragment(self, pieces: int) -> None:
        """Cut each server→client chunk into this many pieces sent separately (1: off)."""
        if pieces < 1:
            raise ValueError("pieces must be at least 1")
        self.pieces = pieces

    def garbage(self, on: bool) -> None:
        """Replace server→client bytes with random bytes of the same length."""
        self.garbled = on

    def watch_requests(self, watcher: Callable[[bytes], RequestAction] | None) -> None:
        """Show each client→server chunk (a request, as a client sends one at a time) to
        `watcher` before it is forwarded, on the proxy's loop; its RequestAction says whether
        the link goes on, or holds from that request (or from its answer) on. None: off."""
        self.watcher = watcher

    def clear(self) -> None:
        """Every fault off: a clean link (links a watcher held stay held: drop() ends them)."""
        self.watcher = None
        self.frozen = False
        self.refusing = False
        self.garbled = False
        self.pieces = 1
        self.delay_mean = 0.0
        self.delay_jitter = 0.0
        self.held = 0.0

    def next_delay(self) -> float:
        """The delay for the next server→client chunk."""
        held, self.held = self.held, 0.0
        if self.delay_jitter == 0:
            return self.delay_mean + held
        return max(0.0, random.uniform(-1, 1) * self.delay_jitter + self.delay_mean) + held

    # --- connections ----------------------------------------------------------------------

    async def _accept(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        if self.refusing:
            self.stats.refused += 1
            _abort(client_writer)
            return
        task = asyncio.current_task()
        assert task is not None  # start_server runs this callback as a task
        self._tasks.add(task)
        try:
            await self._forward(client_reader, client_writer)
        finally:
            self._tasks.discard(task)

    async def _forward(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError as err:
            log.debug("fault proxy %s: target unreachable: %s", self.endpoint, err)
            _abort(client_writer)
            return
        if self._server is None:  # stopped while connecting to the target
            _abort(client_writer)
            _abort(server_writer)
            return
        self.stats.accepted += 1
        for writer in (client_writer, server_writer):
            sock = writer.get_extra_info("socket")
            # Without NODELAY the kernel would glue fragments back together.
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(self, client_reader, client_writer, server_reader, server_writer)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)
