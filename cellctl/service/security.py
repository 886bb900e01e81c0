"""The channel security `cellctl serve` offers, by the address it binds to.

The rule: bound to loopback the server may run without security (development); bound to any
other address it offers Basic256Sha256 SignAndEncrypt only, and refuses to start
(InsecureBind) without its certificate, its key and at least one trusted client certificate.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass

from asyncua import ua
from asyncua.server.server import Server
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from cellctl.errors import CellctlError
from cellctl.service.certs import (
    POLICY_TEXT,
    SECURE_POLICY,
    SERVER_URI,
    CertDir,
    CertificateError,
    read_certificate,
    read_private_key,
)
from cellctl.service.channel_guard import OnUntrusted, TrustGuard
from cellctl.service.trust import trusted_certificates
from drivers.config import is_loopback
from drivers.opcua.security import certificate_uri


class InsecureBind(CellctlError):
    """The server would listen beyond loopback without channel security: it does not start."""


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
        return offered + ([SECURE_POLICY] if self.secured else [])

    def describe(self) -> str:
        """One line for the Security variable and the start banner."""
        if not self.secured:
            return "no security (loopback, development only)"
        count = f"{self.trusted} trusted client certificate{'' if self.trusted == 1 else 's'}"
        if self.offers_none:
            return f"no security or {POLICY_TEXT} (loopback), {count}"
        return f"{POLICY_TEXT}, {count}"

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
        guard.install(server)


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
        f"refusing to serve on {host}: beyond loopback the server offers {POLICY_TEXT} only, "
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
