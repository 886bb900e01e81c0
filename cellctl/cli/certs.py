"""`cellctl certs init|client|trust|list`: the certificate directory of `cellctl serve` (its own
certificate, the trusted client certificates) and the remote CLI's own certificate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cellctl.cli import consoles
from cellctl.cli.app import certs_app

# cryptography and asyncua load for a certs command only, never for --version or --help.
if TYPE_CHECKING:
    from cellctl.service.certs import CertDir

#: `--dir D`, as every certs command takes it.
DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        metavar="DIR",
        help="the certificate directory (default: CELLCTL_CERTS or ~/.local/share/cellctl/certs)",
    ),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="replace an existing certificate and key")
]
DaysOption = Annotated[
    int, typer.Option("--days", metavar="N", help="how many days the certificate is valid")
]


def _certdir(option: Path | None) -> CertDir:
    from cellctl.service.certs import CertDir

    return CertDir(option) if option is not None else CertDir.default()


def _say(line: str) -> None:
    consoles.out.print(line, markup=False, soft_wrap=True)


@certs_app.command()
def init(
    directory: DirOption = None,
    host: Annotated[
        list[str] | None,
        typer.Option(
            "--host",
            metavar="HOST",
            help="a name or address clients reach the server by (repeat it; default: this "
            "machine's name, localhost, 127.0.0.1)",
            show_default=False,
        ),
    ] = None,
    force: ForceOption = False,
    days: DaysOption = 365,
) -> None:
    """Make the server's self-signed certificate and key."""
    from cellctl.errors import BadValue
    from cellctl.service.certs import default_hosts, init_server

    if host is not None and not all(name.strip() for name in host):
        # A certificate for '' matches no address a client could reach the server by.
        raise BadValue("--host '': give a name or address clients reach the server by")
    certdir = _certdir(directory)
    hosts = host or default_hosts()
    made = init_server(certdir, hosts, force=force, days=days)
    _say(f"server certificate: {made.path} ({made.describe()})")
    _say(f"  for: {', '.join(hosts)}")
    _say(f"server key: {certdir.server_key} (readable by you only)")
    _say(f"trust each client: cellctl certs trust CLIENT-CERT --dir {certdir.path}")


@certs_app.command()
def client(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="who or what this CLI is (a person, a laptop)")
    ],
    directory: DirOption = None,
    force: ForceOption = False,
    days: DaysOption = 365,
) -> None:
    """Make the remote CLI's own certificate and key."""
    from cellctl.service.certs import init_client

    certdir = _certdir(directory)
    made = init_client(certdir, name, force=force, days=days)
    _say(f"client certificate: {made.path} ({made.describe()})")
    _say(f"client key: {certdir.client_key} (readable by you only)")
    _say(f"copy {made.path} to the server and trust it there: cellctl certs trust FILE")


@certs_app.command()
def trust(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="a client's certificate, DER or PEM")
    ],
    directory: DirOption = None,
) -> None:
    """Trust a client certificate: clients presenting it may open a secured session."""
    from cellctl.service.trust import trust as trust_certificate

    certdir = _certdir(directory)
    trusted = trust_certificate(certdir, file)
    if trusted.already:
        _say(f"already trusted: {trusted.cert.describe()} ({trusted.cert.path})")
        return
    _say(f"trusted: {trusted.cert.describe()}")
    _say(f"stored as {trusted.cert.path} (a running server takes it at the next connection)")


@certs_app.command("list")
def list_trusted(directory: DirOption = None) -> None:
    """The trusted client certificates: subject, SHA-1 thumbprint, expiry."""
    from cellctl.errors import BadValue
    from cellctl.service.trust import trusted_certificates

    # A folder named that is not there is a typo, not a directory that trusts nobody.
    if directory is not None and not directory.is_dir():
        raise BadValue(f"--dir {directory}: not a folder")
    certdir = _certdir(directory)
    found = trusted_certificates(certdir)
    if not found:
        _say(f"no trusted client certificate in {certdir.trusted_dir}")
        return
    width = max(len(cert.subject) for cert in found)
    for cert in found:
        _say(f"{cert.subject:<{width}}  {cert.thumbprint}  until {cert.not_after:%Y-%m-%d}")
