"""HTTPS for the web view: the rule (beyond loopback HTTPS only, with the service's own
certificate) and the service's certificate (DER) and key as the PEM files uvicorn reads."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from cellctl.errors import CellctlError
from cellctl.service.certs import CertDir, read_certificate, read_private_key
from drivers.config import is_loopback

__all__ = ["HttpsRequired", "check_https", "pem_files"]

#: A certificate file and its key file (PEM), as uvicorn takes them.
PemPair = tuple[Path, Path]


class HttpsRequired(CellctlError):
    """The web view would listen beyond loopback without HTTPS: it does not start."""


def check_https(host: str, certdir: CertDir | None) -> CertDir | None:
    """The certificate directory whose server certificate and key the web view on `host` serves
    HTTPS with, or None for plain HTTP (loopback). Beyond loopback HttpsRequired, naming the
    missing files and the command that makes them, when there are none; CertificateError when
    they are there but unreadable."""
    if is_loopback(host.strip("[]")):
        return None
    certdir = certdir if certdir is not None else CertDir.default()
    missing = [p for p in (certdir.server_cert, certdir.server_key) if not p.exists()]
    if missing:
        raise HttpsRequired(
            f"refusing to serve the web view on {host}: beyond loopback it speaks HTTPS only, "
            f"with the service's certificate; missing {' and '.join(str(p) for p in missing)} "
            f"(make them: cellctl certs init --dir {certdir.path} --host {host}; on 127.0.0.1 "
            "the web view runs on plain HTTP, for development)"
        )
    read_certificate(certdir.server_cert, "server certificate")
    read_private_key(certdir.server_key, "server key")
    return certdir


@contextlib.contextmanager
def pem_files(certdir: CertDir) -> Iterator[PemPair]:
    """The service's certificate and key as PEM files in a private temporary folder (mode 0700,
    the files 0600), removed on exit: uvicorn loads them once, when the server starts."""
    cert = read_certificate(certdir.server_cert, "server certificate")
    key = read_private_key(certdir.server_key, "server key")
    folder = Path(tempfile.mkdtemp(prefix="cellctl-web-"))  # mode 0700
    try:
        cert_file, key_file = folder / "cert.pem", folder / "key.pem"
        _write_private(cert_file, cert.public_bytes(serialization.Encoding.PEM))
        _write_private(
            key_file,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        yield cert_file, key_file
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_private(path: Path, data: bytes) -> None:
    """Write a file readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
