"""The OPC UA TCP transport of our asyncua servers, hardened against what a hostile or broken
client sends (OPC UA Part 6, 7.1): `HardenedServer` is asyncua's Server listening with
`GuardedProtocol` and keeping to a LimitedServer's limits.

asyncua 2.1 reads a message header's size and waits for that many bytes, whatever the header
says: garbage bytes or a size of 4 GB held the connection open (and its buffer growing) until
the activation timeout, and a message it could not decode was logged with a traceback and the
connection kept. Here every header is checked as soon as its 8 bytes arrive: the first message
must be a Hello, then only OPN, MSG and CLO, each no larger than the receive buffer. Anything
else is answered with an Error message (BadTcpMessageTypeInvalid, BadTcpMessageTooLarge,
BadDecodingError) and the connection is closed, with one warning line naming the peer.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import cast

from asyncua import ua
from asyncua.common.utils import Buffer
from asyncua.crypto import uacrypto
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.server import Server
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.ua_binary import header_from_binary, uatcp_to_binary

from drivers.opcua.server_limits import LimitedServer
from drivers.opcua_types import status_code

log = logging.getLogger("drivers.opcua.server")

_HEADER = 8  # message type (3), chunk type (1), message size (4)
_SECURE_HEADER = 12  # and the secure channel id (4)
#: A Hello: five UInt32 and an endpoint URL of at most 4096 bytes (Part 6, 7.1.2.3).
_HELLO_MIN = _HEADER + 5 * 4 + 4
_HELLO_MAX = _HELLO_MIN + 4096
_SECURE_TYPES = (
    ua.MessageType.SecureOpen,
    ua.MessageType.SecureMessage,
    ua.MessageType.SecureClose,
)
_CHUNK_TYPES = (ua.ChunkType.Single, ua.ChunkType.Intermediate, ua.ChunkType.Abort)


class Refusal(Exception):
    """What a client sent that the transport refuses: the status to answer and why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def check_header(header: bytes, hello_seen: bool, max_chunk: int) -> int:
    """The size of the message whose first 8 bytes are `header`; Refusal when a server must
    not read it (a type out of turn or unknown, a chunk type unknown, a size out of bounds)."""
    kind, chunk = header[:3], header[3:4]
    (size,) = struct.unpack_from("<I", header, 3 + 1)
    if not hello_seen:
        if kind != ua.MessageType.Hello:
            raise Refusal(StatusCodes.BadTcpMessageTypeInvalid, f"{kind!r} before a Hello")
        if chunk != ua.ChunkType.Single:
            raise Refusal(StatusCodes.BadTcpMessageTypeInvalid, f"a Hello of chunk type {chunk!r}")
        if not _HELLO_MIN <= size <= _HELLO_MAX:
            raise Refusal(StatusCodes.BadTcpMessageTooLarge, f"a Hello of {size} bytes")
        return int(size)
    if kind not in _SECURE_TYPES:
        raise Refusal(StatusCodes.BadTcpMessageTypeInvalid, f"a message of type {kind!r}")
    if chunk not in _CHUNK_TYPES:
        raise Refusal(StatusCodes.BadTcpMessageTypeInvalid, f"a chunk of type {chunk!r}")
    if size > max_chunk:
        raise Refusal(
            StatusCodes.BadTcpMessageTooLarge, f"a chunk of {size} bytes (at most {max_chunk})"
        )
    if size < _SECURE_HEADER:
        raise Refusal(StatusCodes.BadDecodingError, f"a message of {size} bytes")
    return int(size)


class GuardedProtocol(OPCUAProtocol):
    """asyncua's connection handler with every header checked before its body is awaited, and
    a message that cannot be decoded ending the connection instead of a logged traceback."""

    _hello_seen = False

    def data_received(self, data: bytes) -> None:
        """Queue each complete message for the processor; refuse a bad header at once."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return  # refused (too many connections) or already ending: read nothing more
        self._buffer += data
        while len(self._buffer) >= _HEADER:
            try:
                size = check_header(self._buffer[:_HEADER], self._hello_seen, self._max_chunk)
            except Refusal as refusal:
                self._refuse(refusal)
                return
            if len(self._buffer) < size:
                return  # the rest comes later (or never: the activation timeout closes it)
            message, self._buffer = self._buffer[:size], self._buffer[size:]
            body = Buffer(message)
            header = header_from_binary(body)
            self._hello_seen = True
            try:
                self.messages.put_nowait((header, body))
            except asyncio.QueueFull:
                log.warning(
                    "OPC UA client %s: more than %d requests waiting; connection closed",
                    _peer(self.peer_name),
                    self.messages.maxsize,
                )
                transport.close()
                return

    async def _process_one_msg(self, header: ua.Header, buf: Buffer) -> bool:
        """asyncua's processing of one message; one that cannot be read ends the connection."""
        try:
            return bool(await super()._process_one_msg(header, buf))
        except Exception as err:
            raw: object = header.MessageType
            kind = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw)
            self._refuse(Refusal(StatusCodes.BadDecodingError, f"an unreadable {kind}: {err!r}"))
            return False

    @property
    def _max_chunk(self) -> int:
        """The largest chunk this server receives."""
        return int(self.limits.max_recv_buffer)

    def _refuse(self, refusal: Refusal) -> None:
        """Answer an Error message and close the connection (Part 6, 7.1.5)."""
        self._buffer = b""
        log.warning(
            "OPC UA client %s sent %s; connection closed",
            _peer(self.peer_name),
            refusal.reason[:200],
        )
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        error = ua.ErrorMessage(status_code(refusal.status), ua.String(refusal.reason[:200]))
        # asyncua annotates the message types as its MessageType class; they are bytes.
        transport.write(uatcp_to_binary(cast(ua.MessageType, ua.MessageType.Error), error))
        transport.close()


class GuardedBinaryServer(BinaryServer):
    """asyncua's listening socket, whose connections are GuardedProtocols."""

    def _make_protocol(self) -> OPCUAProtocol:
        """A GuardedProtocol per connection."""
        return GuardedProtocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
        )


class HardenedServer(Server):
    """asyncua's Server over a LimitedServer: its transport limits, a GuardedProtocol per
    connection, and every client session closed when it stops."""

    iserver: LimitedServer

    def __init__(self, iserver: LimitedServer) -> None:
        super().__init__(iserver=iserver)
        self.limits = iserver.limits.transport()

    async def start(self) -> None:
        """asyncua 2.1's Server.start, listening with GuardedBinaryServer."""
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(
                self.iserver.certificate, self._application_uri, socket.gethostname()
            )
        await self._setup_server_nodes()
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            # None for either lets asyncio choose, as asyncua's own start does.
            self.bserver = GuardedBinaryServer(
                self.iserver, cast(str, host), cast(int, port), self.limits
            )
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            await self.iserver.stop()
            raise

    async def stop(self) -> None:
        """Stop listening, then close the sessions asyncua keeps for absent clients."""
        await super().stop()
        await self.iserver.close_sessions()


def _peer(name: object) -> str:
    """A client's address as 'host:port'."""
    if isinstance(name, tuple) and len(name) >= 2:
        return f"{name[0]}:{name[1]}"
    return str(name)
