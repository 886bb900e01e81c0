"""The certificate files of `cellctl serve`: the certificate directory, reading certificates
and keys, and making the server's and a client's self-signed certificate.

Trusting client certificates is cellctl.service.trust; the channel security the server offers
with these files is cellctl.service.security, the remote CLI's is
cellctl.service.client_security.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from cellctl.errors import CellctlError

#: The server's application URI (its certificate names it; clients check that they match).
SERVER_URI = "urn:cellctl:service"
#: A remote CLI's application URI: this prefix and the name given to `cellctl certs client`.
CLIENT_URI_PREFIX = "urn:cellctl:client:"
#: How long a new certificate is valid (asyncua's own default).
DEFAULT_DAYS = 365
#: No certificate file is this large: refuse to read more (a wrong file given by mistake).
_MAX_CERT_BYTES = 1 << 20
_CLIENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The one secured policy the service offers and the remote CLI asks for (the certificates
#: made here are RSA keys for it).
SECURE_POLICY = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
POLICY_TEXT = "Basic256Sha256 SignAndEncrypt"


class CertificateError(CellctlError):
    """A certificate or key file that is missing, unreadable, not what it should be, or that
    would be overwritten; the message names the file and what to do."""


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
