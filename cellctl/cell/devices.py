"""The devices of a cell file: one model per driver, with their connection parameters."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    WithJsonSchema,
    field_validator,
)

from cellctl.cell.fields import (
    STRICT,
    Endpoint,
    EnvName,
    NonEmpty,
    PositiveDuration,
    TagName,
)
from cellctl.errors import InvalidField
from cellctl.shorthand import Shorthand
from drivers.points import WordOrder


# Declared here, not imported: linters then see a pydantic model, whose field defaults are
# copied per instance (not shared class attributes).
class _Entry(BaseModel):
    model_config = STRICT


class SimSpec(_Entry):
    """The plant model that simulates a device, and optionally which tag plays each signal."""

    model: NonEmpty
    signals: dict[str, TagName] = {}


#: A plant model: its name, or {model: NAME, signals: {SIGNAL: TAG, ...}}.
Sim = Annotated[
    SimSpec,
    Shorthand(
        "model",
        short={"type": "string"},
        properties={
            "model": {"type": "string"},
            "signals": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    ),
]


class _Polled(_Entry):
    """A device read by polling, with bounded requests, optionally simulated."""

    poll: PositiveDuration = 0.1
    timeout: PositiveDuration = 1.0
    retries: int = Field(1, ge=0, le=10)
    sim: Sim | None = None


class ModbusDevice(_Polled):
    """What a Modbus device has over TCP or on a serial line: polling, limits, word order, gaps."""

    word_order: WordOrder = WordOrder.ABCD
    max_gap: int = Field(0, ge=0, le=124)


class ModbusTcpDevice(ModbusDevice):
    """A Modbus TCP device (or a unit behind a TCP gateway)."""

    driver: Literal["modbus-tcp"]
    host: NonEmpty
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=247)


class ModbusRtuDevice(ModbusDevice):
    """A Modbus RTU device on a serial line."""

    driver: Literal["modbus-rtu"]
    port: NonEmpty
    # Unit 0 is broadcast on RTU: nobody answers it, so it cannot be read.
    unit: int = Field(1, ge=1, le=247)
    baudrate: int = Field(19200, ge=300, le=4_000_000)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8


SecurityPolicy = Literal["None", "Basic256Sha256_Sign", "Basic256Sha256_SignAndEncrypt"]


class OpcuaDevice(_Entry):
    """An OPC UA server; the password comes from the environment variable named by password_env."""

    driver: Literal["opcua"]
    endpoint: Endpoint
    publishing_interval: PositiveDuration = Field(
        0.1, validation_alias=AliasChoices("publishing_interval", "poll")
    )
    timeout: PositiveDuration = 1.0
    retries: int = Field(1, ge=0, le=10)
    security: SecurityPolicy = "None"
    cert: NonEmpty | None = None
    key: NonEmpty | None = None
    server_cert: NonEmpty | None = None
    # A folder of trusted server certificates (*.der, *.pem), for servers not pinned.
    trust_dir: NonEmpty | None = None
    user: NonEmpty | None = None
    password_env: EnvName | None = None
    # Declared only to refuse it with a useful message; never holds a value.
    password: Annotated[Any, WithJsonSchema({"not": {}})] = Field(None, exclude=True)
    sim: Sim | None = None

    @field_validator("password", mode="before")
    @classmethod
    def _no_password(cls, value: object) -> None:
        raise InvalidField(
            "a password is never written in the cell file: put it in an environment variable "
            "and name that variable with password_env",
            "password-in-file",
        )

    @property
    def host(self) -> str:
        """The endpoint's host, lower-cased."""
        return (urlsplit(self.endpoint).hostname or "").lower()

    @property
    def port(self) -> int:
        """The endpoint's port (4840, OPC UA's registered port, when not written)."""
        return urlsplit(self.endpoint).port or 4840


class MemoryDevice(_Entry):
    """An in-process device for tests and dry runs."""

    driver: Literal["memory"]
    poll: PositiveDuration = 0.02
    sim: Sim | None = None


Device = Annotated[
    ModbusTcpDevice | ModbusRtuDevice | OpcuaDevice | MemoryDevice, Field(discriminator="driver")
]
DRIVERS: dict[str, type[_Entry]] = {
    "modbus-tcp": ModbusTcpDevice,
    "modbus-rtu": ModbusRtuDevice,
    "opcua": OpcuaDevice,
    "memory": MemoryDevice,
}


def host_key(host: str) -> str:
    """A host as compared for conflicts: 'localhost' is 127.0.0.1, case does not matter."""
    host = host.lower().strip("[]")
    return "127.0.0.1" if host == "localhost" else host
