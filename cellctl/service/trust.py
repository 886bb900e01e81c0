"""The trust directory of `cellctl serve`: trusting a client certificate (`cellctl certs
trust`) and listing the trusted ones, as asyncua's TrustStore reads them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from cellctl.service.certs import (
    CertDir,
    CertificateError,
    CertInfo,
    info,
    read_certificate,
    thumbprint,
)


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


def trust_files(folder: Path) -> list[Path]:
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
        for p in trust_files(certdir.trusted_dir)
    ]
    return sorted(found, key=lambda c: (c.subject, c.thumbprint))
