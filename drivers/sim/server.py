"""The surface every protocol simulator offers to the sim wiring and to fault-injection tests."""

from __future__ import annotations

from typing import Protocol

from drivers.base import Value


class SimServer(Protocol):
    """A protocol server (Modbus TCP/RTU, OPC UA) that exposes one or more process images."""

    @property
    def endpoint(self) -> str:
        """What a client connects to: 'host:port', a pty path, or an opc.tcp:// URL."""
        ...

    async def prepare(self) -> None:
        """Do the slow work of a start (build address spaces) without opening the endpoint."""
        ...

    async def start(self) -> None:
        """Open the endpoint; when this returns, clients can connect. Restart reuses the port."""
        ...

    async def stop(self) -> None:
        """Close the endpoint and every client connection (a killed device)."""
        ...

    async def publish(self, device: str, values: dict[str, Value]) -> None:
        """Copy values the plant model set into the protocol's own store, by tag name."""
        ...
