"""No password to a server we do not trust: the OPC UA driver against a server in another process.

The server (hil_tests/opcua_rogue.py) has its own self-signed certificate and records every
login it receives; plain clients read that record as the witness of what reached it.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua.client.client import Client
from asyncua.crypto.cert_gen import setup_self_signed_certificate
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from drivers.base import HealthState, Quality
from drivers.config import OpcuaConfig, OpcuaSecurity, RequestLimits
from drivers.errors import ConnectFailed
from drivers.opcua import OpcuaDriver
from drivers.points import DataType, OpcuaPoint

LIMITS = RequestLimits(timeout=0.5, retries=1)
SERVER_URI = "urn:cellctl:test:rogue"
BUSY = OpcuaPoint("robot.busy", "ns=2;s=Robot.Busy", DataType.BOOL)
START_WITHIN = 30.0  # seconds for the server process to listen (imports, address space)


@dataclass(frozen=True)
class Certs:
    """The served certificate, another server's, the client's pair, and trust folders."""

    served: Path  # the certificate the server in the other process presents (DER)
    other: Path  # a server certificate that is not that one
    client_cert: Path
    client_key: Path
    trusting: Path  # a trust_dir holding the served certificate (as PEM)
    distrusting: Path  # a trust_dir holding only the other certificate


@dataclass(frozen=True)
class Rogue:
    """The server process: its endpoint and the certificates around it."""

    endpoint: str
    certs: Certs


async def _certs(root: Path) -> Certs:
    host = socket.gethostname()
    pairs = {
        "served": (SERVER_URI, ExtendedKeyUsageOID.SERVER_AUTH),
        "other": ("urn:cellctl:test:genuine", ExtendedKeyUsageOID.SERVER_AUTH),
        "client": ("urn:cellctl:test:client", ExtendedKeyUsageOID.CLIENT_AUTH),
    }
    for name, (uri, usage) in pairs.items():
        await setup_self_signed_certificate(
            root / f"{name}.pem", root / f"{name}.der", uri, host, [usage], {}
        )
    trusting, distrusting = root / "trusting", root / "distrusting"
    trusting.mkdir()
    distrusting.mkdir()
    served = x509.load_der_x509_certificate((root / "served.der").read_bytes())
    # PEM in one folder, DER in the other: a trust_dir takes both.
    (trusting / "robot.pem").write_bytes(served.public_bytes(Encoding.PEM))
    shutil.copy(root / "other.der", distrusting / "genuine.der")
    return Certs(
        root / "served.der",
        root / "other.der",
        root / "client.der",
        root / "client.pem",
        trusting,
        distrusting,
    )


def _read_port(child: subprocess.Popen[str]) -> int:
    """The port the child prints once it listens; fails with its stderr if it dies first."""
    assert child.stdout is not None
    deadline = time.monotonic() + START_WITHIN
    while time.monotonic() < deadline:
        ready, _, _ = select.select([child.stdout], [], [], 0.1)
        if ready:
            line = child.stdout.readline()
            if line.startswith("PORT "):
                return int(line.split()[1])
            if not line:
                break
    child.kill()
    _, err = child.communicate(timeout=10)
    raise AssertionError(f"the OPC UA server process did not start:\n{err}")


@pytest.fixture(scope="module")
def rogue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rogue]:
    """The server with its own certificate, in another process, for the whole module."""
    root = tmp_path_factory.mktemp("opcua-trust")
    certs = asyncio.run(_certs(root))
    script = Path(__file__).with_name("opcua_rogue.py")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    child = subprocess.Popen(
        [sys.executable, str(script), str(certs.served), str(root / "served.pem"), SERVER_URI],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        port = _read_port(child)
        yield Rogue(f"opc.tcp://127.0.0.1:{port}/rogue", certs)
    finally:
        child.terminate()
        try:
            child.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.communicate()


async def logins(endpoint: str) -> tuple[int, str]:
    """What the server's witness nodes say reached it: login count and the last user:password."""
    client = Client(endpoint, timeout=2)
    await client.connect()  # no security, anonymous: a plain third-party client
    try:
        count = await client.get_node("ns=2;s=Witness.Logins").read_value()
        last = await client.get_node("ns=2;s=Witness.Last").read_value()
    finally:
        await client.disconnect()
    return int(count), str(last)


def driver(rogue: Rogue, password: str = "s3cret", **trust: str) -> OpcuaDriver:
    """A driver logging in as operator, with the pin or trust_dir given."""
    security = OpcuaSecurity(
        "Basic256Sha256_SignAndEncrypt",
        str(rogue.certs.client_cert),
        str(rogue.certs.client_key),
        user="operator",
        password=password,
        **trust,
    )
    config = OpcuaConfig("robot", rogue.endpoint, limits=LIMITS, security=security)
    return OpcuaDriver(config, [BUSY])


def sha256(der_file: Path) -> str:
    """A certificate file's SHA-256 fingerprint, as the message writes it."""
    return hashlib.sha256(der_file.read_bytes()).digest().hex(":").upper()


async def refused(drv: OpcuaDriver) -> str:
    """Connect, expect a refusal (not retried), return its message."""
    try:
        with pytest.raises(ConnectFailed) as caught:
            await drv.connect()
        # Refused as such, not retried until the connect bound ("cannot connect … within").
        assert not str(caught.value).startswith(f"{drv.name}: cannot connect"), caught.value
        assert drv.health.state is HealthState.DISCONNECTED  # and not retried in the background
    finally:
        await drv.close()
    return str(caught.value)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_pin_of_another_certificate_is_refused_before_the_password(rogue: Rogue) -> None:
    before = await logins(rogue.endpoint)
    message = await refused(driver(rogue, server_cert=str(rogue.certs.other)))
    assert message.startswith(f"robot: {rogue.endpoint} is not trusted: its certificate is not ")
    assert f"server_cert {rogue.certs.other}" in message
    assert f"SHA-256 fingerprint {sha256(rogue.certs.served)}" in message  # what it presented
    assert f"SHA-256 fingerprint {sha256(rogue.certs.other)}" in message  # and the pin
    assert "s3cret" not in message
    assert await logins(rogue.endpoint) == before  # no login reached the server


async def untrusted_by(rogue: Rogue, folder: Path) -> None:
    """A driver with `folder` as its trust_dir is refused, naming the folder and what the
    server presented, before any login reached the server."""
    before = await logins(rogue.endpoint)
    message = await refused(driver(rogue, trust_dir=str(folder)))
    assert message.startswith(
        f"robot: {rogue.endpoint} is not trusted: trust_dir {folder} does "
        "not trust its certificate (BadCertificateUntrusted)"
    )
    assert f"SHA-256 fingerprint {sha256(rogue.certs.served)}" in message
    assert await logins(rogue.endpoint) == before


@pytest.mark.asyncio(loop_scope="module")
async def test_a_trust_dir_without_the_certificate_is_refused(rogue: Rogue) -> None:
    await untrusted_by(rogue, rogue.certs.distrusting)


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("trust", ["pin", "trust_dir"])
async def test_the_right_certificate_connects_and_the_login_works(rogue: Rogue, trust: str) -> None:
    count, _ = await logins(rogue.endpoint)
    drv = (
        driver(rogue, server_cert=str(rogue.certs.served))
        if trust == "pin"
        else driver(rogue, trust_dir=str(rogue.certs.trusting))
    )
    try:
        await drv.connect()
        [reading] = await drv.read([BUSY])
        assert (reading.quality, reading.value) == (Quality.GOOD, True)
    finally:
        await drv.close()
    assert await logins(rogue.endpoint) == (count + 1, "operator:s3cret")


@pytest.mark.asyncio(loop_scope="module")
async def test_a_wrong_password_to_a_trusted_server_is_still_refused(rogue: Rogue) -> None:
    count, _ = await logins(rogue.endpoint)
    message = await refused(driver(rogue, "guess", server_cert=str(rogue.certs.served)))
    assert "BadUserAccessDenied" in message
    assert await logins(rogue.endpoint) == (count + 1, "operator:guess")  # tried once


@pytest.mark.asyncio(loop_scope="module")
async def test_a_user_without_pin_or_trust_dir_is_refused_before_any_contact(
    rogue: Rogue,
) -> None:
    before = await logins(rogue.endpoint)
    message = await refused(driver(rogue))
    assert message == (
        f"robot: user 'operator' at {rogue.endpoint} needs the server's certificate pinned "
        "(server_cert) or in a trust_dir: without one the password would go to any server "
        "that answers there"
    )
    assert await logins(rogue.endpoint) == before


@pytest.mark.asyncio(loop_scope="module")
async def test_a_missing_trust_dir_is_refused_at_once(rogue: Rogue, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    message = await refused(driver(rogue, trust_dir=str(missing)))
    assert message == f"robot: trust_dir {missing} is not a directory"


@pytest.mark.asyncio(loop_scope="module")
async def test_a_trust_dir_without_certificates_trusts_no_server(
    rogue: Rogue, tmp_path: Path
) -> None:
    (tmp_path / "README").write_text("certificates go here\n")  # not one TrustStore reads
    await untrusted_by(rogue, tmp_path)


@pytest.mark.asyncio(loop_scope="module")
async def test_a_trust_dir_with_a_file_that_is_no_certificate_is_refused(
    rogue: Rogue, tmp_path: Path
) -> None:
    (tmp_path / "robot.pem").write_text("not a certificate\n")
    message = await refused(driver(rogue, trust_dir=str(tmp_path)))
    assert message.startswith(f"robot: cannot read trust_dir {tmp_path}: "), message
