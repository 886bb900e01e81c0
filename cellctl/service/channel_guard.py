"""The trust directory's checks on a running `cellctl serve` (TrustGuard), and the fixes of
what asyncua 2.1 leaves open in them."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SECURITY_POLICY_TYPE_MAP, SecurityPolicyFactory
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.server import Server
from asyncua.server.user_managers import PermissiveUserManager, UserManager
from asyncua.ua.status_codes import StatusCodes
from cryptography import x509

from cellctl.service.certs import (
    POLICY_TEXT,
    SECURE_POLICY,
    CertDir,
    CertificateError,
    read_certificate,
    subject_of,
    thumbprint,
)
from cellctl.service.trust import trust_files
from drivers.opcua_types import status_code, status_name

# The certificates' logger: a refused or unreadable trust folder is logged where it always was.
log = logging.getLogger("cellctl.service.certs")

#: on_untrusted(subject or thumbprint, reason): told of each refused client certificate.
OnUntrusted = Callable[[str, str], None]


# asyncua 2.1 checks a client certificate once, at CreateSession, and only the certificate the
# CreateSession request names, when it names one; the secure channel's own certificate (the
# one ActivateSession's signature is verified with) is never checked. A client could open a
# channel with an untrusted certificate and name a trusted one (public) in CreateSession, or
# none. So the channel's certificate is recorded when the channel opens (in the connection's
# own task, whose context every later request of that connection runs in), and checked
# again at ActivateSession, where asyncua always asks the user manager. There too a session on
# a channel without security is refused where none is offered: asyncua 2.1 opens one anyway.

#: The certificate the current connection's secure channel was opened with (DER), if any.
_CHANNEL_CERT: ContextVar[bytes | None] = ContextVar("_CHANNEL_CERT", default=None)

# What a refused client is told in the record, by the status asyncua's validator raised.
_REFUSALS = {
    "BadCertificateUntrusted": "not in the trust list {trusted} (trust it there: cellctl certs "
    "trust CLIENT-CERT --dir {dir})",
    "BadCertificateTimeInvalid": "expired or not yet valid",
    "BadCertificateUriInvalid": "the client's application URI is not the certificate's",
    "BadCertificateUseNotAllowed": "not a client certificate (key usage)",
    "BadCertificateRevoked": "revoked",
    "BadCertificateInvalid": "malformed (a required extension is missing)",
    "BadSecurityChecksFailed": "its secure channel was opened with another certificate than "
    "the one it named",
}


class _FolderTrustStore(TrustStore):
    """asyncua's TrustStore, filled from certificates already read (its own `load` is async and
    fails on the first unreadable file)."""

    def fill(self, certs: list[x509.Certificate]) -> None:
        """Trust exactly `certs` (none: trust nobody, as an unloaded store does)."""
        # TrustStore keeps its store here; cryptography refuses to build an empty one.
        self._trust_store = x509.verification.Store(certs) if certs else None


class TrustGuard:
    """The trust directory's checks on a running server: asyncua's CertificateValidator
    (TRUSTED_VALIDATION | PEER_CLIENT) over a TrustStore of the folder, reloaded whenever the
    folder changes (a certificate trusted while the server runs counts from the next
    connection); every refusal is told to `on_untrusted` before the client is refused."""

    def __init__(
        self, certdir: CertDir, on_untrusted: OnUntrusted, *, sessions_without_security: bool
    ) -> None:
        self.certdir = certdir
        self._without_security = sessions_without_security
        self._on_untrusted = on_untrusted
        self._seen: tuple[tuple[str, int, int], ...] | None = None
        self._store = _FolderTrustStore([certdir.trusted_dir], [])

    def _listing(self) -> tuple[tuple[str, int, int], ...]:
        """What identifies the folder's contents: each trust file's name, mtime and size."""
        listing = []
        for path in trust_files(self.certdir.trusted_dir):
            try:
                stat = path.stat()
            except OSError:
                continue  # removed meanwhile
            listing.append((path.name, stat.st_mtime_ns, stat.st_size))
        return tuple(listing)

    def store(self) -> TrustStore:
        """The trust store of the folder as it is now (read again when it changed)."""
        listing = self._listing()
        if listing != self._seen:
            store = _FolderTrustStore([self.certdir.trusted_dir], [])
            try:
                folder = self.certdir.trusted_dir
                store.fill([read_certificate(folder / name) for name, _, _ in listing])
            except CertificateError as err:
                # Fail closed: a folder that cannot be read trusts nobody until it is fixed.
                log.error("trusting no client certificate until this is fixed: %s", err)
            self._store, self._seen = store, listing
        return self._store

    def refused(self, who: str, reason: str) -> None:
        """Tell on_untrusted; its failure is logged and never lets the client in."""
        try:
            self._on_untrusted(who, reason)
        except Exception:
            log.exception("recording a refused client failed")

    async def validate(self, cert: x509.Certificate, client: ua.ApplicationDescription) -> None:
        """asyncua's certificate validator, at CreateSession: return to accept, raise
        ServiceError to refuse."""
        options = CertificateValidatorOptions.TRUSTED_VALIDATION
        validator = CertificateValidator(
            options | CertificateValidatorOptions.PEER_CLIENT, self.store()
        )
        who = subject_of(cert)
        try:
            channel = _CHANNEL_CERT.get()
            opened_with = _leading(channel) if channel is not None else cert
            if opened_with != cert:
                who = subject_of(opened_with) if opened_with is not None else "unreadable"
                raise ServiceError(StatusCodes.BadSecurityChecksFailed)
            await validator.validate(cert, client)
        except ServiceError as refused:
            name = status_name(status_code(refused.code))
            why = _REFUSALS.get(name, "refused").format(
                trusted=self.certdir.trusted_dir, dir=self.certdir.path
            )
            self.refused(who, f"{name}: {why}; SHA-1 {thumbprint(cert)}")
            raise

    def channel_trusted(self) -> bool:
        """At ActivateSession: False (and told) when the connection's channel has no security
        where security is required, or was opened with a certificate the trust directory does
        not trust."""
        channel = _CHANNEL_CERT.get()
        if channel is None:  # a channel without security (ours record every secured one)
            if self._without_security:
                return True
            # asyncua 2.1 opens a session on a channel without security even when no endpoint
            # offers it (GetEndpoints on such a channel is legitimate: a session is not).
            self.refused(
                "no certificate",
                f"BadSecurityModeRejected: no security; this server offers {POLICY_TEXT} only",
            )
            return False
        cert = _leading(channel)
        if cert is not None and self.store().is_trusted(cert):
            return True
        who = subject_of(cert) if cert is not None else "an unreadable certificate"
        self.refused(
            who,
            "BadUserAccessDenied: the secure channel's certificate is not in the trust list "
            f"{self.certdir.trusted_dir}",
        )
        return False

    def install(self, server: Server) -> None:
        """Put these checks into `server`, its certificate and key loaded: a SignAndEncrypt
        policy factory that records each channel's certificate (ahead of the one asyncua makes
        at start: the first that matches is used), this guard as the certificate validator, and
        a user manager that asks `channel_trusted` first."""
        policy, mode, _ = SECURITY_POLICY_TYPE_MAP[SECURE_POLICY]
        secured = SecurityPolicyFactory(  # type: ignore[no-untyped-call]
            policy,
            mode,
            server.iserver.certificate,
            server.iserver.private_key,
            permission_ruleset=getattr(server, "_permission_ruleset", None),
        )
        _policy_factories(server).insert(0, _RecordingFactory(secured))
        server.set_certificate_validator(self.validate)
        users = server.iserver.user_manager or PermissiveUserManager()
        server.iserver.set_user_manager(_TrustedChannelsOnly(users, self))


def _leading(der: bytes) -> x509.Certificate | None:
    """The leading certificate of a DER certificate or chain; None when unreadable."""
    try:
        cert: x509.Certificate | None = uacrypto.x509_from_der(der)  # type: ignore[no-untyped-call]
    except ValueError:
        return None
    return cert


def _policy_factories(server: Server) -> list[Any]:
    """The server's security policy factories: each new channel takes the first that matches
    its policy URI (asyncua 2.1 keeps the list private; it adds its own ones at start)."""
    factories: list[Any] = server._policies
    return factories


class _RecordingFactory:
    """A SecurityPolicyFactory that records the certificate each channel is opened with."""

    def __init__(self, inner: SecurityPolicyFactory) -> None:
        self._inner = inner

    def matches(self, uri: str, mode: ua.MessageSecurityMode | None = None) -> bool:
        """The inner factory's match."""
        return bool(self._inner.matches(uri, mode))  # type: ignore[no-untyped-call]

    def create(self, peer_certificate: bytes | None) -> Any:
        """The channel's security policy; its certificate kept for ActivateSession's check."""
        _CHANNEL_CERT.set(peer_certificate)
        return self._inner.create(peer_certificate)  # type: ignore[no-untyped-call]


class _TrustedChannelsOnly(UserManager):
    """The server's user manager, asked only for connections whose secure channel's certificate
    is trusted (asyncua asks it at every ActivateSession; None refuses with
    BadUserAccessDenied)."""

    def __init__(self, inner: UserManager | PermissiveUserManager, guard: TrustGuard) -> None:
        self.inner = inner
        self._guard = guard

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> Any:
        """The inner manager's user, or None for an untrusted channel."""
        if not self._guard.channel_trusted():
            return None
        return self.inner.get_user(
            iserver, username=username, password=password, certificate=certificate
        )
