"""The errors of the remote CLI's client (cellctl.service.client): each an exit code and a
message a person can act on, and which error a failed connect or request ends in."""

from __future__ import annotations

from typing import ClassVar

from asyncua.ua.uaerrors import UaError, UaStatusCodeError

from cellctl import exitcodes
from cellctl.errors import CellctlError
from drivers.opcua.faults import SESSION_GONE
from drivers.opcua_types import status_code, status_name

# Activation refusals that mean the user name or password was not accepted.
_LOGIN_REFUSALS = ("BadUserAccessDenied", "BadIdentityTokenRejected", "BadIdentityTokenInvalid")
# Statuses that say the connection or the session is gone, or no answer came in time.
COMMUNICATION = (*SESSION_GONE, "BadTimeout", "BadRequestTimeout", "BadNotConnected")


class ServerUnreachable(CellctlError):
    """The service cannot be reached, did not answer in time, or the connection was lost."""

    exit_code: ClassVar[int] = exitcodes.DEVICE_FAILURE

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"{url}: {reason}")
        self.url = url
        self.reason = reason


class LoginRefused(CellctlError):
    """The service refused the session: the user name or password, or its security policy."""

    exit_code: ClassVar[int] = exitcodes.REFUSED

    def __init__(self, url: str, user: str | None, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.user = user


class CertificateRefused(LoginRefused):
    """The service does not trust this client's certificate."""


class InsecureLogin(CellctlError):
    """A password would cross the network in clear text: refused before anything is sent."""

    def __init__(self, url: str, user: str) -> None:
        super().__init__(
            f"{url} is not on this machine: logging in as {user!r} there needs --certs DIR with "
            "a client certificate (cellctl certs client NAME): without it the password would "
            "cross the network in clear text"
        )
        self.url = url
        self.user = user


class CommandRefused(CellctlError):
    """The service refused a call for the state or the caller's role; nothing changed."""

    exit_code: ClassVar[int] = exitcodes.REFUSED

    def __init__(self, method: str, status: str, reason: str) -> None:
        # The service's reason names the command already ("Start is not legal in ...").
        super().__init__(f"refused: {reason}" if reason else f"{method} refused: {status}")
        self.method = method
        self.status = status
        self.reason = reason


class BadRemoteInput(CellctlError):
    """The service refused a call's argument (unknown tag, value out of range); nothing changed."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(
            f"refused: {reason}" if reason else f"{method} refused: an argument is not valid"
        )
        self.method = method
        self.reason = reason


class ServiceFailed(CellctlError):
    """The service answered a status that is neither a refusal nor a lost connection."""

    exit_code: ClassVar[int] = exitcodes.INTERNAL_ERROR

    def __init__(self, url: str, what: str, status: str, reason: str = "") -> None:
        detail = f": {reason}" if reason else ""
        super().__init__(f"{url}: {what} failed with {status}{detail}")
        self.url = url
        self.status = status
        self.reason = reason


def name_of(err: UaStatusCodeError) -> str:
    """The name of the status an asyncua error carries (BadTimeout, ...)."""
    return status_name(status_code(err.code))


def connect_error(
    url: str, user: str | None, timeout: float, err: BaseException
) -> CellctlError | BaseException:
    """The error a failed connect to `url` (as `user`, within `timeout` s) ends in, for a
    person to act on."""
    if isinstance(err, TimeoutError):
        return ServerUnreachable(url, f"no answer within {timeout:g} s")
    if isinstance(err, ConnectionRefusedError):
        return ServerUnreachable(url, "connection refused: is `cellctl serve` running?")
    if isinstance(err, OSError):
        return ServerUnreachable(url, f"cannot connect: {err.strerror or err}")
    if isinstance(err, UaStatusCodeError):
        name = name_of(err)
        if name in _LOGIN_REFUSALS:
            who = f"user {user!r}" if user else "anonymous access"
            return LoginRefused(url, user, f"{url} refused the login ({who}): {name}")
        if name.startswith("BadCertificate") or name == "BadSecurityChecksFailed":
            return CertificateRefused(
                url,
                user,
                f"{url} refused this client's certificate ({name}): ask the "
                "server's admin to run `cellctl certs trust FILE` with your "
                "client-cert.der",
            )
        return ServerUnreachable(url, f"the server refused the session: {name}")
    if isinstance(err, UaError) and str(err).startswith("No matching endpoints"):
        return LoginRefused(
            url,
            user,
            f"{url} accepts only secured connections: pass --certs DIR with a client "
            "certificate (cellctl certs client NAME)",
        )
    if isinstance(err, UaError):
        return ServerUnreachable(url, f"the session could not be opened: {err}")
    return err


def request_error(
    url: str, timeout: float, err: BaseException, what: str
) -> CellctlError | BaseException:
    """The error a request to `url` (`what` it did) that did not get its answer within
    `timeout` s ends in."""
    if isinstance(err, TimeoutError):
        return ServerUnreachable(url, f"{what}: no answer within {timeout:g} s")
    if isinstance(err, OSError):
        return ServerUnreachable(url, f"{what}: connection lost ({err})")
    if isinstance(err, UaStatusCodeError):
        name = name_of(err)
        if name in COMMUNICATION:
            return ServerUnreachable(url, f"{what}: {name}")
        return ServiceFailed(url, what, name)
    if isinstance(err, UaError):
        return ServerUnreachable(url, f"{what}: {err}")
    return err
