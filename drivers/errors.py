"""Errors raised by drivers: one base class, specific subclasses that name the device."""

from __future__ import annotations

from typing import Self


class DriverError(Exception):
    """Base class of every driver failure; the message names the device and what failed."""

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        #: What failed without the device's name, for a report that names the device itself
        #: (a BAD reading); the whole message when the error was made without one.
        self.reason = message if reason is None else reason

    @classmethod
    def about(cls, device: str, reason: str) -> Self:
        """The error `reason` of `device`: its message names the device first."""
        return cls(f"{device}: {reason}", reason=reason)


class ConnectFailed(DriverError):
    """The device could not be reached at its endpoint."""


class NotConnected(DriverError):
    """A request was made while the device's connection is down."""


class DeviceTimeout(DriverError):
    """The device did not answer within timeout × (retries + 1)."""


class ModbusExceptionResponse(DriverError):
    """The device answered a request with a Modbus exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class BadStatus(DriverError):
    """An OPC UA server answered with a bad status code."""

    def __init__(self, message: str, status: str, *, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.status = status


class BadResponse(DriverError):
    """The device's answer could not be decoded (garbage, wrong length, wrong type)."""


class WriteRejected(DriverError):
    """The value cannot be written to this point (read-only, out of range for its type)."""


class NotSupported(DriverError):
    """The driver does not offer this operation (e.g. method calls on Modbus)."""


class PointMismatch(DriverError):
    """A point or method on the server differs from the cell file (type, access, arguments)."""


# Modbus exception codes and their standard names (Modbus Application Protocol v1.1b3 §7).
MODBUS_EXCEPTION_NAMES: dict[int, str] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


def modbus_exception_text(code: int) -> str:
    """The standard name of a Modbus exception code, e.g. 'illegal data address (exception 2)'."""
    name = MODBUS_EXCEPTION_NAMES.get(code, "unknown exception")
    return f"{name} (exception {code})"
