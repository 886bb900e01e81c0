"""The remote CLI's side of a secured channel to `cellctl serve`: Basic256Sha256
SignAndEncrypt with its own certificate, to the server's certificate (pinned when given)."""

from __future__ import annotations

from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import UaError
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cellctl import exitcodes
from cellctl.errors import CellctlError
from cellctl.service.certs import (
    POLICY_TEXT,
    CertDir,
    CertificateError,
    read_certificate,
    read_private_key,
)
from drivers.opcua.security import certificate_uri, fingerprint_text


class NoSecureEndpoint(CellctlError):
    """The server offers no Basic256Sha256 SignAndEncrypt endpoint for the remote CLI."""

    exit_code = exitcodes.DEVICE_FAILURE


class ServerNotTrusted(CellctlError):
    """The server presented a certificate other than the one pinned: nothing was sent to it."""

    exit_code = exitcodes.DEVICE_FAILURE


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
            f"{client.server_url.geturl()} offers no {POLICY_TEXT} endpoint (a server on "
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
