"""OPC UA security from the cell file: policy, certificates, a trusted server, identity."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.crypto.truststore import TrustStore
from asyncua.crypto.validator import CertificateValidator, CertificateValidatorOptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from drivers.config import OpcuaConfig
from drivers.errors import ConnectFailed
from drivers.opcua_types import status_code, status_name

# Security policy names a cell file may use → message security mode (None: no security).
SECURITY_MODES: dict[str, ua.MessageSecurityMode | None] = {
    "None": None,
    "Basic256Sha256_Sign": ua.MessageSecurityMode.Sign,
    "Basic256Sha256_SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt,
}


async def secure(client: Client, config: OpcuaConfig) -> None:
    """Apply the configured security policy, certificates and user identity."""
    security = config.security
    if security.policy not in SECURITY_MODES:
        raise ConnectFailed(
            f"{config.name}: unknown security policy {security.policy!r} "
            f"(expected one of {', '.join(SECURITY_MODES)})"
        )
    mode = SECURITY_MODES[security.policy]
    identity = security.user is not None or security.password is not None
    if identity and mode is not ua.MessageSecurityMode.SignAndEncrypt:
        # Without SignAndEncrypt asyncua sends the password in clear text whenever the
        # server's token policy does not encrypt it (always with None, possibly with
        # Sign), and that cannot be known before it is sent: refuse.
        raise ConnectFailed(
            f"{config.name}: user {security.user!r} at {config.endpoint} needs security "
            f"policy Basic256Sha256_SignAndEncrypt: with {security.policy} the password "
            "could cross the network in clear text"
        )
    if identity and security.server_cert is None and security.trust_dir is None:
        # Without a known certificate any server answering at the endpoint (a rogue one
        # too) would be sent the password: refuse.
        raise ConnectFailed(
            f"{config.name}: user {security.user!r} at {config.endpoint} needs the "
            "server's certificate pinned (server_cert) or in a trust_dir: without one the "
            "password would go to any server that answers there"
        )
    if security.user is not None:
        client.set_user(security.user)
    if security.password is not None:
        client.set_password(security.password)
    if mode is None:
        return
    if not security.cert or not security.key:
        raise ConnectFailed(f"{config.name}: security policy {security.policy} needs cert and key")
    cert = await load_certificate(config.name, security.cert, "certificate")
    # The client must present the application URI its certificate was issued for.
    client.application_uri = certificate_uri(cert) or client.application_uri
    server_cert: bytes | None = None
    if security.server_cert is not None or security.trust_dir is not None:
        server_cert = await trusted_server_cert(client, config, mode)
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        security.cert,
        security.key,
        # The certificate checked above: the channel is encrypted to it and the session
        # refused ("Server certificate mismatch") if another one answers CreateSession.
        server_certificate=server_cert,
        mode=mode,
    )


async def trusted_server_cert(
    client: Client, config: OpcuaConfig, mode: ua.MessageSecurityMode
) -> bytes:
    """The server's certificate from GetEndpoints (no security, no credentials), checked.

    Checked against the pin (server_cert) and the trust directory (trust_dir) before any
    session is opened, so that an unknown server is refused with its fingerprint instead
    of going silent (asyncua encrypts to a pinned key that a rogue server cannot read).
    """
    security = config.security
    endpoints = await client.connect_and_get_server_endpoints()
    endpoint = Client.find_endpoint(endpoints, mode, SecurityPolicyBasic256Sha256.URI)
    if not endpoint.ServerCertificate:
        raise ConnectFailed(
            f"{config.name}: {config.endpoint} presented no certificate for "
            f"{security.policy}: not trusted, nothing was sent to it"
        )
    try:
        # The leading certificate of what may be a chain.
        presented: x509.Certificate = uacrypto.x509_from_der(  # type: ignore[no-untyped-call]
            endpoint.ServerCertificate
        )
    except ValueError as err:
        raise ConnectFailed(
            f"{config.name}: {config.endpoint} presented an unreadable certificate "
            f"({err}): not trusted, nothing was sent to it"
        ) from None
    if security.server_cert is not None:
        pinned = await load_certificate(config.name, security.server_cert, "server_cert")
        if pinned != presented:
            raise ConnectFailed(
                f"{config.name}: {config.endpoint} is not trusted: its certificate is "
                f"not the one pinned in server_cert {security.server_cert}; nothing was "
                f"sent to it (no password). It presented {fingerprint_text(presented)}; "
                f"the pin is {fingerprint_text(pinned)}. If the server's certificate was "
                "renewed, pin the new one"
            )
    if security.trust_dir is not None:
        validator = await trust_dir_validator(config.name, security.trust_dir)
        try:
            await validator.validate(presented, endpoint.Server)
        except ServiceError as err:
            raise ConnectFailed(
                f"{config.name}: {config.endpoint} is not trusted: trust_dir "
                f"{security.trust_dir} does not trust its certificate "
                f"({status_name(status_code(err.code))}); nothing was sent to it (no "
                f"password). It presented {fingerprint_text(presented)}. If this is the "
                "right server, copy its certificate into trust_dir"
            ) from None
        # asyncua checks the CreateSession answer's certificate with it again.
        client.certificate_validator = validator
    return presented.public_bytes(serialization.Encoding.DER)


async def load_certificate(device: str, path: str, what: str) -> Any:
    """A certificate file of the cell file's security settings; ConnectFailed naming it."""
    try:
        return await uacrypto.load_certificate(path)
    except (OSError, ValueError) as err:
        raise ConnectFailed(f"{device}: cannot load {what} {path}: {err}") from err


def certificate_uri(cert: x509.Certificate) -> str | None:
    """The application URI in a certificate's SubjectAltName, if any."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return None
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def fingerprint_text(cert: x509.Certificate) -> str:
    """A certificate's subject and fingerprints, as OPC UA tools show them (SHA-1 thumbprint)."""
    sha256 = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    sha1 = cert.fingerprint(hashes.SHA1()).hex(":").upper()
    return f"{cert.subject.rfc4514_string()}, SHA-256 fingerprint {sha256}, SHA-1 thumbprint {sha1}"


def _holds_certificates(folder: Path) -> bool:
    """True when `folder` has a file that TrustStore.load reads (asyncua's own test: a name
    with a dot, holding 'der' or 'pem')."""
    return any(re.match(".*(der|pem)", file.name.lower()) for file in folder.glob("*.*"))


async def trust_dir_validator(device: str, directory: str) -> CertificateValidator:
    """A validator trusting the server (or CA) certificates in a folder of *.der / *.pem files.

    Checks as OPC UA Part 4 asks of a server's certificate: trusted (itself or its issuer in
    the folder), within its validity, the server's application URI, key usages. ConnectFailed
    when the folder cannot be read.
    """
    path = Path(directory)
    if not await asyncio.to_thread(path.is_dir):
        raise ConnectFailed(f"{device}: trust_dir {directory} is not a directory")
    store = TrustStore([path], [])
    # A folder without certificates trusts nothing: every server is refused, with its
    # fingerprint. Its store stays unloaded, as cryptography refuses to build an empty one.
    if await asyncio.to_thread(_holds_certificates, path):
        try:
            await store.load()
        except (ValueError, OSError) as err:
            raise ConnectFailed(f"{device}: cannot read trust_dir {directory}: {err}") from err
    return CertificateValidator(
        CertificateValidatorOptions.TRUSTED_VALIDATION | CertificateValidatorOptions.PEER_SERVER,
        store,
    )
