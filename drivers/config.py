"""Connection parameters of each driver kind, plain data built by cellctl from the cell file."""

from __future__ import annotations

import ipaddress
from dataclasses import KW_ONLY, dataclass

from drivers.points import WordOrder


@dataclass(frozen=True)
class RequestLimits:
    """How long one request may take and how often it is retried."""

    timeout: float = 1.0
    retries: int = 1

    @property
    def worst_case(self) -> float:
        """The longest one request can take before it fails: timeout × (retries + 1)."""
        return self.timeout * (self.retries + 1)


@dataclass(frozen=True)
class ModbusConfig:
    """What every Modbus device has, over TCP or on a serial line: polling, request limits and
    codec settings (each transport adds where the device is, then its unit id)."""

    name: str
    _: KW_ONLY
    poll: float = 0.1
    limits: RequestLimits = RequestLimits()
    word_order: WordOrder = WordOrder.ABCD
    max_gap: int = 0


@dataclass(frozen=True)
class ModbusTcpConfig(ModbusConfig):
    """A Modbus TCP device: host, port and unit id; devices on one host:port share a connection."""

    host: str
    port: int
    unit: int = 1

    @property
    def bus_key(self) -> str:
        """Identifies the shared connection (TCP gateway) this device sits behind."""
        return f"tcp://{url_host(self.host)}:{self.port}"

    @property
    def endpoint(self) -> str:
        """The endpoint as shown in messages."""
        return f"{url_host(self.host)}:{self.port} unit {self.unit}"


@dataclass(frozen=True)
class ModbusRtuConfig(ModbusConfig):
    """A Modbus RTU device on a serial line; devices on one port share the line."""

    port: str
    unit: int = 1
    baudrate: int = 19200
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    @property
    def bus_key(self) -> str:
        """Identifies the shared serial line this device sits on."""
        return f"rtu://{self.port}"

    @property
    def endpoint(self) -> str:
        """The endpoint as shown in messages."""
        return f"{self.port} unit {self.unit}"


@dataclass(frozen=True)
class OpcuaSecurity:
    """Security settings of an OPC UA connection; the password is resolved by cellctl."""

    policy: str = "None"  # None, Basic256Sha256_Sign, Basic256Sha256_SignAndEncrypt
    cert: str | None = None
    key: str | None = None
    server_cert: str | None = None  # the server's certificate, pinned (DER or PEM)
    user: str | None = None
    password: str | None = None
    # A folder of trusted server (or CA) certificates, *.der / *.pem; read on every connect.
    trust_dir: str | None = None


@dataclass(frozen=True)
class OpcuaConfig:
    """An OPC UA server endpoint and how to talk to it."""

    name: str
    endpoint: str
    publishing_interval: float = 0.1
    limits: RequestLimits = RequestLimits()
    security: OpcuaSecurity = OpcuaSecurity()


@dataclass(frozen=True)
class MemoryConfig:
    """An in-memory device for unit tests; values live in the process."""

    name: str
    poll: float = 0.02


def url_host(host: str) -> str:
    """`host` as written before ':port' in endpoints and URLs: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def is_loopback(host: str) -> bool:
    """True for an address on this machine: 'localhost', 127.0.0.0/8, ::1 (brackets allowed)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
