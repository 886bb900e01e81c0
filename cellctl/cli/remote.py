"""What every remote command shares (the commands are in cellctl.cli.remote_commands, `status`
and `watch` in cellctl.cli.remote_status): where the service is and who logs in, and one call
of a method whose Result is printed (a refusal raises with the service's reason).

Where and as whom: `--server URL` (CELLCTL_SERVER), `--user NAME` (CELLCTL_USER; the password
from CELLCTL_PASSWORD or asked on the terminal, never an argument), `--certs DIR` (the client
certificate; CELLCTL_CERTS when it holds one).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cellctl.cli import consoles
from cellctl.service.defaults import DEFAULT_ENDPOINT

# asyncua and the client load when a command runs, not for --help or --version.
if TYPE_CHECKING:
    from cellctl.service.client import RemoteCell

#: The environment variables of the common options.
SERVER_VARIABLE = "CELLCTL_SERVER"
USER_VARIABLE = "CELLCTL_USER"
CERTS_VARIABLE = "CELLCTL_CERTS"

ServerOption = Annotated[
    str | None,
    typer.Option(
        "--server",
        metavar="URL",
        help=f"the service's endpoint (default: {SERVER_VARIABLE}, else {DEFAULT_ENDPOINT})",
    ),
]
UserOption = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="NAME",
        help=f"log in as NAME (default: {USER_VARIABLE}); the password from "
        "CELLCTL_PASSWORD, else asked on the terminal",
    ),
]
CertsOption = Annotated[
    Path | None,
    typer.Option(
        "--certs",
        metavar="DIR",
        help="the client certificate's folder (cellctl certs client): Sign&Encrypt "
        f"(default: {CERTS_VARIABLE} when it holds one, else no security)",
    ),
]


@dataclass(frozen=True)
class Target:
    """The service to reach and who logs in: what every remote command needs."""

    url: str
    user: str | None
    password: str | None
    certdir: Path | None

    def connect(self) -> RemoteCell:
        """A session with the service (an async context manager)."""
        from cellctl.service.client import RemoteCell

        return RemoteCell(self.url, self.user, self.password, self.certdir)


def target(server: str | None, user: str | None, certs: Path | None) -> Target:
    """The options resolved (environment, then defaults); the password asked for now."""
    from cellctl.cli.serve import endpoint_host_port
    from cellctl.errors import BadValue

    url = server or os.environ.get(SERVER_VARIABLE) or DEFAULT_ENDPOINT
    # A URL the client cannot even parse is bad input (exit 1), named before any connect.
    endpoint_host_port(url, "--server" if server else SERVER_VARIABLE)
    name = user or os.environ.get(USER_VARIABLE) or None
    certdir = certs
    if certs is not None:
        from cellctl.service.certs import CertDir

        # Named on the command line, a folder without a client certificate is a mistake.
        if not CertDir(certs).client_cert.is_file():
            raise BadValue(
                f"--certs {certs}: no client certificate {CertDir(certs).client_cert} (make "
                f"one with `cellctl certs client NAME --dir {certs}`)"
            )
    elif os.environ.get(CERTS_VARIABLE):
        certdir = Path(os.environ[CERTS_VARIABLE])
    return Target(url, name, _password(name), certdir)


def _password(user: str | None) -> str | None:
    """The password of `user`: CELLCTL_PASSWORD, else asked on the terminal; none to ask."""
    if user is None:
        return None
    import getpass

    from cellctl.cli.users import PASSWORD_VARIABLE
    from cellctl.errors import BadValue

    given = os.environ.get(PASSWORD_VARIABLE)
    if given is not None:
        return given
    if not sys.stdin.isatty():
        raise BadValue(
            f"--user {user}: no terminal to ask for the password: set {PASSWORD_VARIABLE} in "
            "the environment (never on the command line)"
        )
    return getpass.getpass(f"password for {user}: ")


def call(remote: Target, method: str, *args: str | Sequence[str]) -> None:
    """Call one method of the service and print its Result (a refusal raises, with its
    reason and exit code)."""
    import asyncio

    async def once() -> str:
        async with remote.connect() as cell:
            return await cell.call(method, *args)

    consoles.out.print(asyncio.run(once()), markup=False)
