"""Certificates and trust of `cellctl serve` (cellctl.service.certs, trust, security;
`cellctl certs`): making them, trusting client certificates, and which channel security an
address gets."""

from __future__ import annotations

import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from cellctl.service.certs import CertDir, CertificateError, init_client, init_server
from cellctl.service.security import InsecureBind, server_security
from cellctl.service.trust import trust, trusted_certificates
from cellctl.testing import cli

SECURE = ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt
NONE = ua.SecurityPolicyType.NoSecurity


@dataclass(frozen=True)
class Made:
    """A server certificate directory with one trusted client, and a client's directory."""

    server: CertDir
    client: CertDir


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """Certificates made once per module (RSA key generation is slow-ish)."""
    root = tmp_path_factory.mktemp("certs")
    server, client = CertDir(root / "server"), CertDir(root / "client")
    init_server(server, ["plant.example", "192.0.2.1", "localhost"])
    init_client(client, "laptop")
    trust(server, client.client_cert)
    return Made(server, client)


def copy_of(certdir: CertDir, into: Path, *, trusted: bool = True) -> CertDir:
    """A copy of a certificate directory (with or without its trusted/ folder)."""
    shutil.copytree(
        certdir.path, into, ignore=None if trusted else shutil.ignore_patterns("trusted")
    )
    return CertDir(into)


def test_init_server_makes_a_server_certificate_for_the_hosts_and_a_private_key(
    made: Made,
) -> None:
    cert = x509.load_der_x509_certificate(made.server.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.UniformResourceIdentifier) == ["urn:cellctl:service"]
    assert names.get_values_for_type(x509.DNSName) == ["plant.example", "localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["192.0.2.1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    assert stat.S_IMODE(made.server.server_key.stat().st_mode) == 0o600


def test_init_client_makes_a_client_certificate_named_by_its_uri(made: Made) -> None:
    cert = x509.load_der_x509_certificate(made.client.client_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = names.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == ["urn:cellctl:client:laptop"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert stat.S_IMODE(made.client.client_key.stat().st_mode) == 0o600


def test_init_refuses_to_overwrite_and_names_the_files(made: Made, tmp_path: Path) -> None:
    certdir = copy_of(made.server, tmp_path / "c")
    before = certdir.server_cert.read_bytes()
    with pytest.raises(CertificateError, match="exists already") as refused:
        init_server(certdir, ["localhost"])
    assert str(certdir.server_cert) in str(refused.value)
    assert "--force" in str(refused.value)
    assert certdir.server_cert.read_bytes() == before


def test_a_bad_client_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="client name 'a b'"):
        init_client(CertDir(tmp_path), "a b")
    assert not tmp_path.joinpath("client-key.pem").exists()


@pytest.mark.parametrize("encoding", [Encoding.DER, Encoding.PEM])
def test_trust_takes_der_and_pem_and_stores_der_by_thumbprint(
    made: Made, tmp_path: Path, encoding: Encoding
) -> None:
    certdir = CertDir(tmp_path / "server")
    cert = x509.load_der_x509_certificate(made.client.client_cert.read_bytes())
    given = tmp_path / "laptop.crt"
    given.write_bytes(cert.public_bytes(encoding))
    trusted = trust(certdir, given)
    assert not trusted.already
    assert trusted.cert.subject == "CN=cellctl client laptop"
    assert trusted.cert.path == certdir.trusted_dir / f"{trusted.cert.thumbprint}.der"
    assert trusted.cert.path.read_bytes() == cert.public_bytes(Encoding.DER)
    assert trust(certdir, given).already
    assert trusted_certificates(certdir) == [trusted.cert]


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("garbage.der", bytes(range(256)) * 4, "is not a certificate"),
        ("empty.pem", b"", "is not a certificate"),
        ("key.pem", None, "is not a certificate"),  # the private key given by mistake
        ("missing.der", "absent", "no such file"),
        ("folder", "dir", "is a directory"),
    ],
)
def test_trust_refuses_what_is_not_a_certificate_naming_the_file(
    made: Made, tmp_path: Path, name: str, content: bytes | str | None, says: str
) -> None:
    given = tmp_path / name
    if content is None:
        shutil.copy(made.client.client_key, given)
    elif content == "dir":
        given.mkdir()
    elif isinstance(content, bytes):
        given.write_bytes(content)
    certdir = CertDir(tmp_path / "server")
    with pytest.raises(CertificateError) as refused:
        trust(certdir, given)
    assert str(refused.value).startswith(f"certificate {given}")
    assert says in str(refused.value)
    assert not certdir.trusted_dir.exists()


def test_cli_trust_of_garbage_exits_1_naming_the_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    garbage = tmp_path / "x.der"
    garbage.write_bytes(b"\x00\xff" * 100)
    code, _, err = cli(capsys, "certs", "trust", garbage, "--dir", tmp_path / "c")
    assert code == 1
    assert err.strip() == (
        f"error: certificate {garbage} is not a certificate: expected an X.509 certificate, "
        "DER or PEM"
    )


def test_cli_init_trust_list_say_where_files_went(
    capsys: pytest.CaptureFixture[str], made: Made, tmp_path: Path
) -> None:
    certdir = tmp_path / "c"
    code, out, _ = cli(capsys, "certs", "init", "--dir", certdir, "--host", "192.0.2.1")
    assert code == 0
    assert f"server certificate: {certdir / 'server-cert.der'}" in out
    assert f"server key: {certdir / 'server-key.pem'}" in out
    code, out, _ = cli(capsys, "certs", "trust", made.client.client_cert, "--dir", certdir)
    assert code == 0
    (stored,) = (certdir / "trusted").iterdir()
    assert f"stored as {stored}" in out
    code, out, _ = cli(capsys, "certs", "list", "--dir", certdir)
    assert code == 0
    assert out.split()[:4] == ["CN=cellctl", "client", "laptop", stored.stem]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("", False),
        ("192.0.2.1", False),
        ("plant.example", False),
        ("localhost.evil.example", False),
    ],
)
def test_only_loopback_may_serve_without_certificates(
    tmp_path: Path, host: str, loopback: bool
) -> None:
    if loopback:
        assert server_security(host, CertDir(tmp_path)).policies == [NONE]
    else:
        with pytest.raises(InsecureBind):
            server_security(host, CertDir(tmp_path))


def test_loopback_without_certificates_offers_no_security_only(tmp_path: Path) -> None:
    security = server_security("127.0.0.1", CertDir(tmp_path))
    assert security.policies == [NONE]
    assert security.describe() == "no security (loopback, development only)"


def test_loopback_with_certificates_offers_none_and_sign_and_encrypt(made: Made) -> None:
    security = server_security("localhost", made.server)
    assert security.policies == [NONE, SECURE]
    assert security.describe() == (
        "no security or Basic256Sha256 SignAndEncrypt (loopback), 1 trusted client certificate"
    )


def test_beyond_loopback_with_certificates_offers_sign_and_encrypt_only(
    made: Made, tmp_path: Path
) -> None:
    certdir = copy_of(made.server, tmp_path / "c")
    trust(certdir, _another_client(tmp_path))
    security = server_security("192.0.2.1", certdir)
    assert security.policies == [SECURE]
    assert security.describe() == "Basic256Sha256 SignAndEncrypt, 2 trusted client certificates"


def _another_client(tmp_path: Path) -> Path:
    other = CertDir(tmp_path / "other")
    init_client(other, "other")
    return other.client_cert


def test_beyond_loopback_without_anything_refuses_naming_what_and_how(tmp_path: Path) -> None:
    certdir = CertDir(tmp_path / "c")
    with pytest.raises(InsecureBind) as refused:
        server_security("192.0.2.1", certdir)
    assert str(refused.value) == "\n".join(
        [
            "refusing to serve on 192.0.2.1: beyond loopback the server offers Basic256Sha256 "
            "SignAndEncrypt only, and that needs:",
            f"- the server's certificate and key: missing {certdir.server_cert} and "
            f"{certdir.server_key} (make them: cellctl certs init --dir {certdir.path} "
            "--host 192.0.2.1)",
            f"- at least one trusted client certificate: none in {certdir.trusted_dir} (add "
            f"one: cellctl certs trust CLIENT-CERT --dir {certdir.path})",
            "(on 127.0.0.1 the server runs without them, for development)",
        ]
    )
    assert refused.value.exit_code == 1


def test_beyond_loopback_without_a_trusted_client_refuses(made: Made, tmp_path: Path) -> None:
    certdir = copy_of(made.server, tmp_path / "c", trusted=False)
    with pytest.raises(InsecureBind) as refused:
        server_security("0.0.0.0", certdir)
    assert "at least one trusted client certificate: none in" in str(refused.value)
    assert "server's certificate and key" not in str(refused.value)


def test_beyond_loopback_without_the_key_refuses_naming_it(made: Made, tmp_path: Path) -> None:
    certdir = copy_of(made.server, tmp_path / "c")
    certdir.server_key.unlink()
    with pytest.raises(InsecureBind) as refused:
        server_security("plant.example", certdir)
    message = str(refused.value)
    assert f"missing {certdir.server_key} (make them: cellctl certs init" in message
    assert "--host plant.example" in message
    assert "trusted client certificate" not in message


def test_a_key_of_another_certificate_is_refused(made: Made, tmp_path: Path) -> None:
    certdir = copy_of(made.server, tmp_path / "c")
    shutil.copy(made.client.client_key, certdir.server_key)
    with pytest.raises(CertificateError, match="does not belong to the server certificate"):
        server_security("192.0.2.1", certdir)
