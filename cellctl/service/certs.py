"""Certificates and trust of `cellctl serve`: the certificate directory, making the server's and
a client's self-signed certificate, trusting client certificates, the channel security the
server offers (by the address it binds to) and the remote CLI's side of a secured channel.

The rule: bound to loopback the server may run without security (development); bound to any
other address it offers Basic256Sha256 SignAndEncrypt only, and refuses to start
(InsecureBind) without its certificate, its key and at least one trusted client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from asyncua.crypto.security_policies import (
    SECURITY_POLICY_TYPE_MAP,
    SecurityPolicyBasic256Sha256,
    SecurityPolicyFactory,
)
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from asyncua.server.server import Server
from asyncua.server.user_managers import PermissiveUserManager, UserManager
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from cellctl import exitcodes
from cellctl.errors import CellctlError
from drivers.config import is_loopback
from drivers.opcua.security import certificate_uri, fingerprint_text
from drivers.opcua_types import status_code, status_name

log = logging.getLogger("cellctl.service.certs")

#: The server's application URI (its certificate names it; clients check that they match).
SERVER_URI = "urn:cellctl:service"
#: A remote CLI's application URI: this prefix and the name given to `cellctl certs client`.
CLIENT_URI_PREFIX = "urn:cellctl:client:"
#: How long a new certificate is valid (asyncua's own default).
DEFAULT_DAYS = 365
#: No certificate file is this large: refuse to read more (a wrong file given by mistake).
_MAX_CERT_BYTES = 1 << 20
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SECURE = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
_POLICY_TEXT = "Basic256Sha256 SignAndEncrypt"


class CertificateError(CellctlError):
    """A certificate or key file that is missing, unreadable, not what it should be, or that
    would be overwritten; the message names the file and what to do."""


class InsecureBind(CellctlError):
    """The server would listen beyond loopback without channel security: it does not start."""


class NoSecureEndpoint(CellctlError):
    """The server offers no Basic256Sha256 SignAndEncrypt endpoint for the remote CLI."""

    exit_code = exitcodes.DEVICE_FAILURE


class ServerNotTrusted(CellctlError):
    """The server presented a certificate other than the one pinned: nothing was sent to it."""

    exit_code = exitcodes.DEVICE_FAILURE


# -- the certificate directory ------------------------------------------------------------------


@dataclass(frozen=True)
class CertDir:
    """A certificate directory: the server's certificate and key, the trusted client
    certificates (`trusted/`), and the remote CLI's own certificate and key."""

    path: Path

    @classmethod
    def default(cls) -> CertDir:
        """$CELLCTL_CERTS, else $XDG_DATA_HOME/cellctl/certs, else ~/.local/share/cellctl/certs."""
        explicit = os.environ.get("CELLCTL_CERTS")
        if explicit:
            return cls(Path(explicit))
        data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return cls(Path(data) / "cellctl" / "certs")

    @property
    def server_cert(self) -> Path:
        """The server's certificate (DER): give it to clients that pin the server."""
        return self.path / "server-cert.der"

    @property
    def server_key(self) -> Path:
        """The server's private key (PEM, mode 0600)."""
        return self.path / "server-key.pem"

    @property
    def trusted_dir(self) -> Path:
        """The trusted client certificates, one DER file each, named by SHA-1 thumbprint."""
        return self.path / "trusted"

    @property
    def client_cert(self) -> Path:
        """The remote CLI's certificate (DER): the server must trust it."""
        return self.path / "client-cert.der"

    @property
    def client_key(self) -> Path:
        """The remote CLI's private key (PEM, mode 0600)."""
        return self.path / "client-key.pem"


@dataclass(frozen=True)
class CertInfo:
    """What people need to know of a certificate: subject, SHA-1 thumbprint, expiry, file."""

    subject: str
    thumbprint: str  # lower-case hex, as the trusted/ file names it
    not_after: datetime.datetime
    path: Path

    def describe(self) -> str:
        """`CN=cellctl client bob, SHA-1 ab12..., valid until 2026-05-01`."""
        return f"{self.subject}, SHA-1 {self.thumbprint}, valid until {self.not_after:%Y-%m-%d}"


def thumbprint(cert: x509.Certificate) -> str:
    """A certificate's SHA-1 thumbprint (lower-case hex), as OPC UA tools identify it."""
    return cert.fingerprint(hashes.SHA1()).hex()


def subject_of(cert: x509.Certificate) -> str:
    """A certificate's subject as text (RFC 4514), or its thumbprint when the subject is empty."""
    return cert.subject.rfc4514_string() or f"SHA-1 {thumbprint(cert)}"


def info(cert: x509.Certificate, path: Path) -> CertInfo:
    """The CertInfo of a certificate read from `path`."""
    return CertInfo(subject_of(cert), thumbprint(cert), cert.not_valid_after_utc, path)


def _read_bytes(path: Path, what: str) -> bytes:
    """A file's bytes; CertificateError naming it when it is missing, a folder, unreadable."""
    try:
        if path.is_dir():
            raise CertificateError(f"{what} {path} is a directory, not a file")
        with path.open("rb") as file:
            data = file.read(_MAX_CERT_BYTES + 1)
    except FileNotFoundError:
        raise CertificateError(f"{what} {path}: no such file") from None
    except OSError as err:
        raise CertificateError(f"cannot read {what} {path}: {err.strerror or err}") from None
    if len(data) > _MAX_CERT_BYTES:
        raise CertificateError(f"{what} {path} is over 1 MB: not a certificate or key file")
    return data


def read_certificate(path: Path, what: str = "certificate") -> x509.Certificate:
    """An X.509 certificate from a DER or PEM file; CertificateError naming the file."""
    data = _read_bytes(path, what)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertificateError(
            f"{what} {path} is not a certificate: expected an X.509 certificate, DER or PEM"
        ) from None


def read_private_key(path: Path, what: str = "key") -> rsa.RSAPrivateKey:
    """An unencrypted RSA private key from a PEM (or DER) file; CertificateError naming it."""
    data = _read_bytes(path, what)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key: Any = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:  # cryptography: a password is needed
        raise CertificateError(
            f"{what} {path} is encrypted: the service needs an unencrypted key (mode 0600)"
        ) from None
    except ValueError:
        raise CertificateError(f"{what} {path} is not a private key (expected PEM)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CertificateError(f"{what} {path} is not an RSA key: Basic256Sha256 needs RSA")
    return key


# -- making certificates ------------------------------------------------------------------------


def _general_name(host: str) -> x509.GeneralName:
    """A host as a subject alternative name: an IP address as one, anything else as DNS."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by its owner only (0600, even when replacing a file)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # the mode above applies to new files only
        os.write(fd, data)
    finally:
        os.close(fd)


def _make_pair(
    cert_path: Path,
    key_path: Path,
    *,
    what: str,
    common_name: str,
    app_uri: str,
    hosts: list[str],
    usage: x509.ObjectIdentifier,
    force: bool,
    days: int,
) -> CertInfo:
    """A self-signed certificate and its key, written to the two files (never over existing
    ones unless `force`)."""
    existing = [p for p in (cert_path, key_path) if p.exists()]
    if existing and not force:
        files = " and ".join(str(p) for p in existing)
        raise CertificateError(
            f"the {what} exists already ({files}); nothing was changed. Pass --force to "
            "replace it: every peer that trusted or pinned the old certificate must then be "
            "given the new one"
        )
    if days < 1:
        raise CertificateError(f"a certificate must be valid for at least 1 day, not {days}")
    try:
        cert_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CertificateError(f"cannot create {cert_path.parent}: {err.strerror or err}") from None
    key = generate_private_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(app_uri)]
    names += [_general_name(h) for h in dict.fromkeys(hosts) if h]
    cert = generate_self_signed_app_certificate(key, common_name, {}, names, [usage], days=days)
    try:
        _write_private(key_path, dump_private_key_as_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    except OSError as err:
        raise CertificateError(f"cannot write the {what}: {err}") from None
    return info(cert, cert_path)


def default_hosts() -> list[str]:
    """The names a server certificate gets by default: this machine's name, localhost,
    127.0.0.1."""
    return list(dict.fromkeys([socket.gethostname(), "localhost", "127.0.0.1"]))


def init_server(
    certdir: CertDir,
    hosts: list[str],
    app_uri: str = SERVER_URI,
    *,
    force: bool = False,
    days: int = DEFAULT_DAYS,
) -> CertInfo:
    """Make the server's self-signed certificate (SERVER_AUTH, the hosts as subject alternative
    names) and key (mode 0600); CertificateError when they exist and not `force`."""
    return _make_pair(
        certdir.server_cert,
        certdir.server_key,
        what="server certificate",
        common_name=f"cellctl service {socket.gethostname()}",
        app_uri=app_uri,
        hosts=hosts,
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        force=force,
        days=days,
    )


def init_client(
    certdir: CertDir, name: str, *, force: bool = False, days: int = DEFAULT_DAYS
) -> CertInfo:
    """Make the remote CLI's self-signed certificate (CLIENT_AUTH, application URI
    urn:cellctl:client:NAME) and key (mode 0600)."""
    if not _CLIENT_NAME.fullmatch(name):
        raise CertificateError(
            f"client name {name!r}: use letters, digits, '.', '_' and '-' (up to 64, "
            "starting with a letter or digit); it becomes the URI "
            f"{CLIENT_URI_PREFIX}NAME"
        )
    return _make_pair(
        certdir.client_cert,
        certdir.client_key,
        what="client certificate",
        common_name=f"cellctl client {name}",
        app_uri=CLIENT_URI_PREFIX + name,
        hosts=[socket.gethostname()],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        force=force,
        days=days,
    )


# -- trust --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Trusted:
    """The outcome of `trust`: the certificate and whether it was trusted already."""

    cert: CertInfo
    already: bool


def trust(certdir: CertDir, file: Path) -> Trusted:
    """Trust a client certificate (DER or PEM): stored as DER in trusted/<SHA-1>.der."""
    cert = read_certificate(file)
    folder = certdir.trusted_dir
    target = folder / f"{thumbprint(cert)}.der"
    if target.is_file():
        return Trusted(info(cert, target), already=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # Written under a temporary name, then renamed: a running server reloading the
        # folder never reads half a file.
        partial = folder / f".{target.name}.partial"
        partial.write_bytes(cert.public_bytes(serialization.Encoding.DER))
        partial.replace(target)
    except OSError as err:
        raise CertificateError(f"cannot write to {folder}: {err.strerror or err}") from None
    return Trusted(info(cert, target), already=False)


def _trust_files(folder: Path) -> list[Path]:
    """The files of a trust folder that asyncua's TrustStore reads: a name with a dot that
    holds 'der' or 'pem' (its own rule, so that what is listed is what is trusted)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob("*.*") if re.match(".*(der|pem)", p.name.lower())]
    return sorted(p for p in found if not p.name.endswith(".partial"))


def trusted_certificates(certdir: CertDir) -> list[CertInfo]:
    """The trusted client certificates, by subject; CertificateError naming an unreadable file
    (the server would not start with it)."""
    found = [
        info(read_certificate(p, "trusted certificate"), p)
        for p in _trust_files(certdir.trusted_dir)
    ]
    return sorted(found, key=lambda c: (c.subject, c.thumbprint))


# -- the server's channel security -------------------------------------------------------------


#: on_untrusted(subject or thumbprint, reason): told of each refused client certificate.
OnUntrusted = Callable[[str, str], None]


@dataclass(frozen=True)
class ServerSecurity:
    """The channel security a server offers at an address (see `server_security`)."""

    host: str
    loopback: bool
    certdir: CertDir
    secured: bool  # SignAndEncrypt offered, with the server's certificate and key
    trusted: int = 0  # trusted client certificates when the server started

    @property
    def offers_none(self) -> bool:
        """True when clients may connect without security (loopback only)."""
        return self.loopback

    @property
    def policies(self) -> list[ua.SecurityPolicyType]:
        """The security policies the server's endpoints offer."""
        offered = [ua.SecurityPolicyType.NoSecurity] if self.offers_none else []
        return offered + ([_SECURE] if self.secured else [])

    def describe(self) -> str:
        """One line for the Security variable and the start banner."""
        if not self.secured:
            return "no security (loopback, development only)"
        count = f"{self.trusted} trusted client certificate{'' if self.trusted == 1 else 's'}"
        if self.offers_none:
            return f"no security or {_POLICY_TEXT} (loopback), {count}"
        return f"{_POLICY_TEXT}, {count}"

    async def apply(self, server: Server, on_untrusted: OnUntrusted) -> None:
        """Set the server's policies and, when secured, its certificate, key, application URI
        and the trust directory's checks (see `TrustGuard`). Call after `init()`, after the
        user manager is set and before any namespace is registered (the application URI is
        namespace 1).

        A refused client calls `on_untrusted(subject, reason)` on the server's loop and is
        still refused: a client presenting an untrusted certificate gets
        BadCertificateUntrusted (or the Bad status that says why).
        """
        server.set_security_policy(self.policies)
        if not self.secured:
            return
        guard = TrustGuard(self.certdir, on_untrusted, sessions_without_security=self.offers_none)
        await server.load_certificate(str(self.certdir.server_cert))
        await server.load_private_key(str(self.certdir.server_key))
        uri = certificate_uri(read_certificate(self.certdir.server_cert)) or SERVER_URI
        if server.get_application_uri() != uri:
            namespaces = await server.get_namespace_array()
            # Namespace 1 is the application URI: replacing it once others are registered
            # would make their lookups by URI find the wrong index.
            if len(namespaces) > 2:
                raise RuntimeError("apply() must run before any namespace is registered")
            await server.set_application_uri(uri)
        policy, mode, _ = SECURITY_POLICY_TYPE_MAP[_SECURE]
        secured = SecurityPolicyFactory(  # type: ignore[no-untyped-call]
            policy,
            mode,
            server.iserver.certificate,
            server.iserver.private_key,
            permission_ruleset=getattr(server, "_permission_ruleset", None),
        )
        # Ahead of the factory asyncua makes at start: the first that matches is used.
        _policy_factories(server).insert(0, _RecordingFactory(secured))
        server.set_certificate_validator(guard.validate)
        users = server.iserver.user_manager or PermissiveUserManager()
        server.iserver.set_user_manager(_TrustedChannelsOnly(users, guard))


def server_security(endpoint_host: str, certdir: CertDir | None) -> ServerSecurity:
    """The security a server bound to `endpoint_host` offers with the certificates in `certdir`
    (None: the default directory).

    Loopback without a certificate and key: no security only; loopback with them: no security
    and SignAndEncrypt; any other address: SignAndEncrypt only, and InsecureBind when the
    certificate, the key or every trusted client certificate is missing. CertificateError when
    a file is there but unusable.
    """
    certdir = certdir if certdir is not None else CertDir.default()
    loopback = is_loopback(endpoint_host.strip())
    pair = certdir.server_cert.exists() and certdir.server_key.exists()
    if loopback and not pair:
        return ServerSecurity(endpoint_host, True, certdir, secured=False)
    trusted = trusted_certificates(certdir)
    if not loopback and (not pair or not trusted):
        raise InsecureBind(_insecure_bind_message(endpoint_host, certdir, pair, bool(trusted)))
    _check_server_pair(certdir)
    return ServerSecurity(endpoint_host, loopback, certdir, secured=True, trusted=len(trusted))


def _insecure_bind_message(host: str, certdir: CertDir, pair: bool, trusted: bool) -> str:
    """What is missing for a server bound to `host`, and the commands that make it."""
    dir_option = f" --dir {certdir.path}"
    named = host.strip("[]")
    try:
        if not named or ipaddress.ip_address(named).is_unspecified:
            named = "NAME-CLIENTS-USE"  # 0.0.0.0 listens everywhere: no name to certify
    except ValueError:
        pass  # a host name: certify it
    lines = [
        f"refusing to serve on {host}: beyond loopback the server offers {_POLICY_TEXT} only, "
        "and that needs:"
    ]
    if not pair:
        missing = [str(p) for p in (certdir.server_cert, certdir.server_key) if not p.exists()]
        lines.append(
            f"- the server's certificate and key: missing {' and '.join(missing)} "
            f"(make them: cellctl certs init{dir_option} --host {named})"
        )
    if not trusted:
        lines.append(
            f"- at least one trusted client certificate: none in {certdir.trusted_dir} "
            f"(add one: cellctl certs trust CLIENT-CERT{dir_option})"
        )
    lines.append("(on 127.0.0.1 the server runs without them, for development)")
    return "\n".join(lines)


def _check_server_pair(certdir: CertDir) -> None:
    """The server's certificate and key are readable, belong together and are in date."""
    cert = read_certificate(certdir.server_cert, "server certificate")
    key = read_private_key(certdir.server_key, "server key")
    if key.public_key().public_numbers() != _rsa_public(cert).public_numbers():
        raise CertificateError(
            f"server key {certdir.server_key} does not belong to the server certificate "
            f"{certdir.server_cert}: make a new pair (cellctl certs init --force)"
        )
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise CertificateError(
            f"server certificate {certdir.server_cert} is valid from "
            f"{cert.not_valid_before_utc:%Y-%m-%d} to {cert.not_valid_after_utc:%Y-%m-%d}, not "
            "now: make a new one (cellctl certs init --force) and give it to the clients"
        )


def _rsa_public(cert: x509.Certificate) -> rsa.RSAPublicKey:
    """A certificate's RSA public key; CertificateError when it has another kind."""
    public = cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise CertificateError("the server certificate's key is not RSA: Basic256Sha256 needs RSA")
    return public


# -- the trust directory's checks on a running server ---------------------------------------------
#
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
        for path in _trust_files(self.certdir.trusted_dir):
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
                f"BadSecurityModeRejected: no security; this server offers {_POLICY_TEXT} only",
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


# -- the remote CLI's side ----------------------------------------------------------------------


async def client_security(
    client: Client, certdir: CertDir, pinned: Path | None = None
) -> x509.Certificate:
    """Secure `client` (not yet connected): Basic256Sha256 SignAndEncrypt with the remote CLI's
    certificate and key, its application URI the certificate's, encrypted to the certificate
    the server presents in GetEndpoints (checked first against `pinned` when given, so that
    another server is refused by name instead of going silent). Returns that certificate."""
    for path, what in ((certdir.client_cert, "certificate"), (certdir.client_key, "key")):
        if not path.is_file():
            raise CertificateError(
                f"no client {what} {path}: make one with `cellctl certs client NAME --dir "
                f"{certdir.path}`, then have the server trust {certdir.client_cert} "
                "(`cellctl certs trust FILE` where the server runs)"
            )
    cert = read_certificate(certdir.client_cert, "client certificate")
    read_private_key(certdir.client_key, "client key")  # a clear error before connecting
    # The client must present the application URI its certificate was issued for.
    client.application_uri = certificate_uri(cert) or client.application_uri
    endpoints = await client.connect_and_get_server_endpoints()
    mode = ua.MessageSecurityMode.SignAndEncrypt
    try:
        endpoint = Client.find_endpoint(endpoints, mode, SecurityPolicyBasic256Sha256.URI)
    except UaError:
        raise NoSecureEndpoint(
            f"{client.server_url.geturl()} offers no {_POLICY_TEXT} endpoint (a server on "
            "loopback without certificates offers no security): connect without certificates, "
            "or make the server's (cellctl certs init) and restart it"
        ) from None
    try:
        # The leading certificate of what may be a chain; None when there is none.
        presented: x509.Certificate | None = uacrypto.x509_from_der(  # type: ignore[no-untyped-call]
            endpoint.ServerCertificate
        )
    except ValueError:
        presented = None
    if presented is None:
        raise ServerNotTrusted(
            f"{client.server_url.geturl()} presented no readable certificate: nothing was sent"
        ) from None
    if pinned is not None:
        pin = read_certificate(pinned, "pinned server certificate")
        if pin != presented:
            raise ServerNotTrusted(
                f"{client.server_url.geturl()} is not the server pinned in {pinned}: it "
                f"presented {fingerprint_text(presented)}; the pin is {fingerprint_text(pin)}. "
                "Nothing was sent to it"
            )
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(certdir.client_cert),
        str(certdir.client_key),
        server_certificate=presented.public_bytes(serialization.Encoding.DER),
        mode=mode,
    )
    return presented
