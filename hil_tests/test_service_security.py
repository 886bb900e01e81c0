"""The channel security of `cellctl serve` (cellctl.service.security, channel_guard,
client_security) on a real asyncua server on 127.0.0.1 with one variable, against real asyncua
clients: a trusted client certificate reads over Basic256Sha256 SignAndEncrypt; an untrusted
one is refused and reported; no security is refused where only SignAndEncrypt is offered."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.server.server import Server
from asyncua.ua.uaerrors import UaError

from cellctl.service.api import NAMESPACE
from cellctl.service.certs import CertDir, init_client, init_server
from cellctl.service.client_security import client_security
from cellctl.service.security import ServerSecurity, server_security
from cellctl.service.trust import trust
from drivers.sim.opcua_cache import default_cache_dir, init_with_cache

#: An address beyond loopback: the security a server bound there gets (SignAndEncrypt only) is
#: applied to the test's server on 127.0.0.1; binding itself is the serve command's.
PLANT_HOST = "192.0.2.1"
ANSWER = 42
TIMEOUT = 5.0  # seconds for a client request on loopback

pytestmark = pytest.mark.asyncio


@dataclass(frozen=True)
class Dirs:
    """The server's certificate directory and two remote CLIs': one trusted, one not."""

    server: CertDir
    trusted: CertDir
    stranger: CertDir
    trusted_der: bytes  # the trusted client certificate, as CreateSession names it
    server_der: bytes  # the server certificate, as a client that pins it has it


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> Dirs:
    """Certificates made once per module (RSA key generation is slow-ish)."""
    root = tmp_path_factory.mktemp("service-certs")
    server, trusted, stranger = CertDir(root / "server"), CertDir(root / "a"), CertDir(root / "b")
    init_server(server, ["127.0.0.1", "localhost"])
    init_client(trusted, "trusted")
    init_client(stranger, "stranger")
    trust(server, trusted.client_cert)
    der = trusted.client_cert.read_bytes(), server.server_cert.read_bytes()
    return Dirs(server, trusted, stranger, *der)


@contextlib.asynccontextmanager
async def serving(security: ServerSecurity, refused: list[tuple[str, str]]) -> AsyncIterator[str]:
    """A bare asyncua server with `security` applied and one variable (ns NAMESPACE, "Answer");
    its endpoint. Refused certificates are appended to `refused`."""
    server = Server()
    await init_with_cache(server, default_cache_dir())
    server.set_endpoint("opc.tcp://127.0.0.1:0/")
    server.disable_clock()  # its 1 s sleep would delay stop()
    await security.apply(server, lambda who, why: refused.append((who, why)))
    ns = await server.register_namespace(NAMESPACE)
    await server.nodes.objects.add_variable(f"ns={ns};s=Answer", "Answer", ANSWER)
    await server.start()
    try:
        assert server.bserver is not None
        yield f"opc.tcp://127.0.0.1:{server.bserver.port}/"
    finally:
        await server.stop()


async def read_answer(client: Client) -> object:
    """The server's one variable, read through a connected client."""
    ns = await client.get_namespace_index(NAMESPACE)
    return await client.get_node(f"ns={ns};s=Answer").read_value()


async def secured_read(endpoint: str, certdir: CertDir) -> object:
    """Connect with certdir's client certificate over SignAndEncrypt and read the variable."""
    client = Client(endpoint, timeout=TIMEOUT)
    await client_security(client, certdir)
    async with client:
        assert client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        return await read_answer(client)


async def lawless_session(
    endpoint: str, channel: CertDir | None, named: bytes | None, server_der: bytes
) -> Client:
    """A client that keeps no rule a conforming one keeps, built from asyncua's lower layers: it
    opens its channel with `channel`'s certificate (None: no security, whatever the endpoints
    offer), names `named` in CreateSession (None: no certificate) and activates the session.
    Returns the connected client (the caller disconnects its socket) or raises the refusal."""
    client = Client(endpoint, timeout=TIMEOUT)
    if channel is not None:
        client.application_uri = "urn:cellctl:client:trusted"  # the named certificate's
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(channel.client_cert),
            str(channel.client_key),
            server_certificate=server_der,
        )
    await client.connect_socket()
    try:
        await client.send_hello()
        await client.open_secure_channel()
        params = ua.CreateSessionParameters()
        params.ClientDescription = ua.ApplicationDescription(
            ApplicationUri=client.application_uri, ApplicationType=ua.ApplicationType.Client
        )
        params.ClientNonce = bytes(32)
        params.ClientCertificate = named
        params.EndpointUrl = endpoint
        params.SessionName = "lawless"
        params.RequestedSessionTimeout = 60_000
        # Client.create_session would check the endpoints and the server's signature: skip it.
        created = await client.uaclient.create_session(params)
        client._server_nonce = created.ServerNonce  # what activate_session signs
        await client.activate_session()
    except BaseException:
        client.disconnect_socket()
        raise
    return client


async def test_a_trusted_client_reads_over_sign_and_encrypt(dirs: Dirs) -> None:
    refused: list[tuple[str, str]] = []
    security = server_security(PLANT_HOST, dirs.server)
    assert security.policies == [ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    async with serving(security, refused) as endpoint:
        assert await secured_read(endpoint, dirs.trusted) == ANSWER
    assert refused == []


async def test_an_untrusted_client_is_refused_and_reported(dirs: Dirs) -> None:
    refused: list[tuple[str, str]] = []
    async with serving(server_security(PLANT_HOST, dirs.server), refused) as endpoint:
        with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
            await secured_read(endpoint, dirs.stranger)
    assert len(refused) == 1
    who, why = refused[0]
    assert who == "CN=cellctl client stranger"
    assert why.startswith("BadCertificateUntrusted: not in the trust list")
    assert str(dirs.server.trusted_dir) in why


async def test_a_client_without_security_is_refused_where_only_sign_and_encrypt_is_offered(
    dirs: Dirs,
) -> None:
    refused: list[tuple[str, str]] = []
    async with serving(server_security(PLANT_HOST, dirs.server), refused) as endpoint:
        client = Client(endpoint, timeout=TIMEOUT)
        with pytest.raises(UaError):
            async with client:
                await read_answer(client)


async def test_on_loopback_with_certificates_both_no_security_and_trusted_clients_read(
    dirs: Dirs,
) -> None:
    refused: list[tuple[str, str]] = []
    security = server_security("127.0.0.1", dirs.server)
    async with serving(security, refused) as endpoint:
        async with Client(endpoint, timeout=TIMEOUT) as plain:
            assert await read_answer(plain) == ANSWER
        assert await secured_read(endpoint, dirs.trusted) == ANSWER


async def test_a_certificate_trusted_while_the_server_runs_counts_at_the_next_session(
    tmp_path: Path, dirs: Dirs
) -> None:
    server = CertDir(tmp_path / "server")
    server.path.mkdir()
    for name in ("server-cert.der", "server-key.pem"):
        (server.path / name).write_bytes((dirs.server.path / name).read_bytes())
    trust(server, dirs.trusted.client_cert)
    refused: list[tuple[str, str]] = []
    async with serving(server_security(PLANT_HOST, server), refused) as endpoint:
        with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
            await secured_read(endpoint, dirs.stranger)
        trust(server, dirs.stranger.client_cert)
        assert await secured_read(endpoint, dirs.stranger) == ANSWER
    assert [who for who, _ in refused] == ["CN=cellctl client stranger"]


async def test_a_session_without_security_is_refused_by_the_server_itself(dirs: Dirs) -> None:
    """asyncua 2.1 opens a session on a channel without security even where no endpoint offers
    one: a client that ignores the endpoints must still be refused."""
    refused: list[tuple[str, str]] = []
    async with serving(server_security(PLANT_HOST, dirs.server), refused) as endpoint:
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await lawless_session(endpoint, None, None, dirs.server_der)
    assert refused == [
        (
            "no certificate",
            "BadSecurityModeRejected: no security; this server offers "
            "Basic256Sha256 SignAndEncrypt only",
        )
    ]


async def test_an_untrusted_channel_cannot_borrow_a_trusted_certificate(dirs: Dirs) -> None:
    """asyncua 2.1 checks only the certificate CreateSession names: a channel opened with an
    untrusted certificate is refused whether it names a trusted one or none."""
    refused: list[tuple[str, str]] = []
    async with serving(server_security(PLANT_HOST, dirs.server), refused) as endpoint:
        with pytest.raises(ua.uaerrors.BadSecurityChecksFailed):
            await lawless_session(endpoint, dirs.stranger, dirs.trusted_der, dirs.server_der)
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await lawless_session(endpoint, dirs.stranger, None, dirs.server_der)
        # The same client with its channel's own trusted certificate is let in.
        client = await lawless_session(endpoint, dirs.trusted, dirs.trusted_der, dirs.server_der)
        try:
            assert await read_answer(client) == ANSWER
        finally:
            client.disconnect_socket()
    assert [who for who, _ in refused] == ["CN=cellctl client stranger"] * 2
    assert refused[0][1].startswith("BadSecurityChecksFailed: ")
    assert refused[1][1].startswith("BadUserAccessDenied: the secure channel's certificate")
