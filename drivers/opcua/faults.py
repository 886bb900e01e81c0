"""How the OPC UA driver tells a passing fault from a refusal, and names a failure."""

from __future__ import annotations

from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from drivers.errors import ConnectFailed
from drivers.opcua_types import status_code, status_name


def failure_text(err: BaseException) -> str:
    """An unexpected exception as a health error: its type (the clue to a bug) and text."""
    return f"{type(err).__name__}: {error_text(err)}"


class Refused(Exception):
    """Carries a ConnectFailed that retrying cannot fix out of the connect loop."""

    def __init__(self, error: ConnectFailed) -> None:
        super().__init__(str(error))
        self.error = error


# Service results that say the session (or its channel) is gone, not that a request was refused.
SESSION_GONE = (
    "BadSessionIdInvalid",
    "BadSessionClosed",
    "BadSessionNotActivated",
    "BadSecureChannel",
    "BadServerHalted",
    "BadShutdown",
    "BadCommunicationError",
    "BadConnectionClosed",
)
# Monitored-item refusals that may pass (a server at a limit): the subscription is tried again.
PASSING_ITEM_REFUSALS = ("BadTooManyMonitoredItems", "BadResourceUnavailable", "BadOutOfMemory")
# Session refusals that do not go away by retrying: identity, certificates, security settings.
PERMANENT = ("BadUserAccessDenied", "BadIdentityToken", "BadCertificate", "BadSecurity")
# asyncua's own errors (not status codes) that say the security settings do not match.
PERMANENT_TEXT = (
    "No matching endpoints",
    "No matching policy",
    "Server certificate mismatch",
    "Unsupported security policy",
)


def permanent(err: ConnectFailed) -> bool:
    """True when a failed connect is a refusal or a configuration error, not a passing fault."""
    cause = err.__cause__
    if isinstance(cause, UaStatusCodeError):
        return status_name(status_code(cause.code)).startswith(PERMANENT)
    if isinstance(cause, UaError):
        # Any other asyncua error (an answer cut short or garbled, by a server that is
        # starting or a bad link) may pass: retry.
        return str(cause).startswith(PERMANENT_TEXT)
    # No cause, or a file that cannot be read: our own configuration checks.
    return cause is None or isinstance(cause, OSError | ValueError)


def error_text(err: BaseException) -> str:
    """An exception as a short message: the status name for OPC UA errors."""
    if isinstance(err, UaStatusCodeError):
        return status_name(status_code(err.code))
    return str(err) or type(err).__name__
