"""An OPC UA server with its own certificate that records every login attempt, run as a process.

Usage: python hil_tests/opcua_rogue.py CERT KEY APPLICATION_URI

It offers Basic256Sha256_SignAndEncrypt with user names (and, for the witnesses, no security
with anonymous logins), prints ``PORT <n>`` once it listens on 127.0.0.1, and serves until
it is terminated. Its witness nodes, read by any plain client, tell what logins reached it:
``ns=2;s=Witness.Logins`` (how many user-name tokens arrived) and ``ns=2;s=Witness.Last``
(the last user and password, ``user:password``). Only ``operator`` / ``s3cret`` may log in.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from drivers.sim.opcua_cache import default_cache_dir, init_with_cache
from hil_tests.support import Logins, operator

NAMESPACE = "urn:cellctl:test:witness"


class Witness(Logins):
    """A user manager that keeps every user-name login it is handed."""

    def __init__(self) -> None:
        self.logins: list[str] = []

    def login(self, username: str | None, password: str | None) -> User | None:
        """Anonymous logins (the witnesses' own) pass; user names are recorded."""
        if username is None:
            return User(role=UserRole.User)
        self.logins.append(f"{username}:{password}")
        return operator(username, password)

    def value(self, node_id: ua.NodeId, _attr: ua.AttributeIds) -> ua.DataValue:
        """The witness nodes' values, computed when they are read."""
        if node_id.Identifier == "Witness.Logins":
            return ua.DataValue(ua.Variant(len(self.logins), ua.VariantType.Int32))
        last = self.logins[-1] if self.logins else ""
        return ua.DataValue(ua.Variant(last, ua.VariantType.String))


async def serve(cert: Path, key: Path, uri: str) -> None:
    """Start the server, print its port, serve until SIGTERM."""
    witness = Witness()
    server = Server(user_manager=witness)
    await init_with_cache(server, default_cache_dir())
    await server.set_application_uri(uri)
    server.set_endpoint("opc.tcp://127.0.0.1:0/rogue")
    server.set_security_policy(
        [ua.SecurityPolicyType.NoSecurity, ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt]
    )
    server.set_identity_tokens([ua.AnonymousIdentityToken, ua.UserNameIdentityToken])
    await server.load_certificate(str(cert))
    await server.load_private_key(str(key))
    idx = await server.register_namespace(NAMESPACE)
    objects = server.nodes.objects
    await objects.add_variable(ua.NodeId("Robot.Busy", idx), "Robot.Busy", True)
    for name, initial in (("Witness.Logins", 0), ("Witness.Last", "")):
        node = await objects.add_variable(ua.NodeId(name, idx), name, initial)
        server.set_attribute_value_callback(node.nodeid, witness.value)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await server.start()
    assert server.bserver is not None
    print(f"PORT {server.bserver.port}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(serve(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]))
