"""`cellctl serve`: the cell's controller as a service on OPC UA (cellctl.service), and
`serve --check`, which checks its whole configuration and exits."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cellctl import exitcodes
from cellctl.cli import consoles
from cellctl.cli.app import _Command, app
from cellctl.cli.audit import JournalOption, journal_path
from cellctl.errors import BadValue, CellctlError
from cellctl.service.defaults import DEFAULT_ENDPOINT
from cellctl.web import DEFAULT_ADDR, DEFAULT_PORT

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from typer._click import Context

    from cellctl.cell import Cell
    from cellctl.service.certs import CertDir
    from cellctl.service.logins import Authenticator
    from cellctl.service.runner import Serving
    from cellctl.service.security import ServerSecurity
    from cellctl.service.users import UsersFile
    from cellctl.web.thread import WebThread


def endpoint_host_port(url: str, option: str = "--endpoint") -> tuple[str, int]:
    """The host and port of an opc.tcp URL; BadValue naming `option`, the URL and what is
    wrong."""
    from urllib.parse import urlsplit

    try:  # urlsplit itself refuses some URLs ('opc.tcp://[::1'), .port a port out of range
        parts = urlsplit(url)
        hostname, port = parts.hostname, parts.port
    except ValueError:
        parts, hostname, port = None, None, None
    if parts is None or parts.scheme != "opc.tcp" or not hostname or port is None:
        # The web view's address is the likely mix-up: say which one this is.
        web = (
            " (an http:// address is the web view's, for a browser)"
            if parts is not None and parts.scheme in ("http", "https")
            else ""
        )
        raise BadValue(
            f"{option} {url}: write opc.tcp://HOST:PORT (for example {DEFAULT_ENDPOINT}){web}"
        )
    return hostname, port


#: `--http` given alone.
DEFAULT_HTTP = f"{DEFAULT_ADDR}:{DEFAULT_PORT}"
#: What `--http` takes: [ADDR:]PORT, an IPv6 address in brackets.
_HTTP_VALUE = re.compile(r"(?:(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):)?(\d{1,5})")


def http_addr_port(text: str) -> tuple[str, int]:
    """The address and port of `--http [ADDR:]PORT` (ADDR: 127.0.0.1 unless given); BadValue
    naming what is wrong."""
    match = _HTTP_VALUE.fullmatch(text.strip())
    if match is None or int(match[2]) > 65535:
        raise BadValue(f"--http {text}: write [ADDR:]PORT (for example {DEFAULT_HTTP}, or 8480)")
    return (match[1] or DEFAULT_ADDR).strip("[]"), int(match[2])


class _ServeCommand(_Command):
    """`serve`, whose `--http` may come alone (then DEFAULT_HTTP): click options take a value
    or none, so a bare `--http` (not followed by [ADDR:]PORT) is given the default here."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        """The arguments, a bare `--http` completed, parsed as click does."""
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--":
                break
            after = args[i + 1] if i + 1 < len(args) else ""
            # Its value looks like one (a port, or ADDR:PORT, good or bad: a bad one is said
            # so); anything else (an option, the cell file) leaves it bare.
            bare = not after or after.startswith("-") or not (":" in after or after.isdigit())
            if arg == "--http" and bare:
                args[i] = f"--http={DEFAULT_HTTP}"
        return super().parse_args(ctx, args)


def _users(path: Path | None) -> tuple[UsersFile | None, Path | None]:
    """The users file: --users (which must exist), else the default one if it exists."""
    from cellctl.service.users import default_users_path, load_users

    if path is not None:
        return load_users(path), path
    default = default_users_path()
    if default.exists():
        return load_users(default), default
    return None, None


def _certs(path: Path | None) -> CertDir | None:
    """The certificate directory: --certs, else the default one if it exists."""
    from cellctl.service.certs import CertDir

    if path is not None:
        # Named, it must be a folder: on loopback a typo would serve without security, unseen.
        if not path.is_dir():
            raise BadValue(
                f"--certs {path}: not a folder (make one with `cellctl certs init --dir {path}`)"
            )
        return CertDir(path)
    default = CertDir.default()
    return default if default.path.exists() else None


class ServeSetup:
    """Everything `serve` needs, checked before any device is touched."""

    def __init__(
        self,
        cell_file: Path,
        endpoint: str,
        users: Path | None,
        certs: Path | None,
        recipes: Path | None,
        journal: Path | None,
        http: str | None = None,
    ) -> None:
        from cellctl.cell import load_cell
        from cellctl.service.security import server_security
        from drivers.config import is_loopback

        self.cell_file = cell_file
        self.endpoint = endpoint
        self.host, self.port = endpoint_host_port(endpoint)
        self.cell: Cell = load_cell(cell_file)
        self.recipes = recipes if recipes is not None else cell_file.parent
        if not self.recipes.is_dir():
            raise BadValue(f"--recipes {self.recipes}: not a folder")
        self.users, self.users_file = _users(users)
        self.loopback = is_loopback(self.host)
        self.certdir = _certs(certs)
        #: The web view's address and port (None: no web view), and the certificates it
        #: serves HTTPS with (None: plain HTTP, on loopback).
        self.http = http_addr_port(http) if http is not None else None
        self.http_certs: CertDir | None = None
        try:
            self.security: ServerSecurity = server_security(self.host, self.certdir)
            if self.http is not None:
                from cellctl.web.tls import check_https

                self.http_certs = check_https(self.http[0], self.certdir)
        except CellctlError as refused:  # on record in the log: the journal is not open yet
            import logging

            from cellctl.logsetup import log_file_only

            service_log = logging.getLogger("cellctl.service")
            log_file_only(service_log, logging.ERROR, "serve refused to start: %s", refused)
            raise
        self.journal = journal_path(journal)

    def who_may(self) -> str:
        """Who may do what, in one phrase (the banner, `status`)."""
        if self.users is None:
            return "no users file: every client on loopback has every role"
        anonymous = "viewer" if self.users.anonymous == "viewer" else "refused"
        return f"{len(self.users.users)} users in {self.users_file}; anonymous: {anonymous}"

    def security_text(self) -> str:
        """The Security variable's text: the channel and who may do what."""
        return f"{self.security.describe()}; {self.who_may()}"


def _check(setup: ServeSetup) -> int:
    """`serve --check`: the cell, the recipes, users, certificates and journal, one line each."""
    from cellctl.control.journal.store import SqliteStore
    from cellctl.service.shelf import RecipeShelf

    out = consoles.out
    out.print(
        f"cell: {setup.cell_file}: {setup.cell.cell}, {len(setup.cell.devices)} devices, "
        f"{len(setup.cell.tags)} tags",
        markup=False,
        soft_wrap=True,
    )
    shelf = RecipeShelf(setup.cell, setup.recipes)
    released = shelf.names()
    problems = 0
    out.print(
        f"recipes: {setup.recipes}: released {', '.join(released) or 'none'}",
        markup=False,
        soft_wrap=True,
    )
    for name, path in shelf.files().items():  # those that did not validate: why
        if name in released:
            continue
        try:
            shelf.load(name)
        except CellctlError as error:
            problems += 1
            out.print(
                f"recipe {name} ({path}) is not released: {error}", markup=False, soft_wrap=True
            )
    out.print(f"users: {setup.who_may()}", markup=False, soft_wrap=True)
    out.print(
        f"endpoint: {setup.endpoint}; security: {setup.security.describe()}",
        markup=False,
        soft_wrap=True,
    )
    if setup.http is not None:
        from cellctl.web.thread import url_of

        addr, port = setup.http
        how = (
            f"HTTPS with {setup.http_certs.server_cert}"
            if setup.http_certs is not None
            else "plain HTTP (loopback)"
        )
        out.print(
            f"web view: {url_of(addr, port, setup.http_certs is not None)}; {how}",
            markup=False,
            soft_wrap=True,
        )
    store = SqliteStore(setup.journal)  # JournalUnavailable (exit 6) names why it cannot be
    store.close()
    out.print(f"journal: {setup.journal}: writable", markup=False, soft_wrap=True)
    if problems:
        out.print(f"{problems} recipe(s) not released", markup=False)
        return exitcodes.BAD_INPUT
    out.print("configuration ok", markup=False)
    return exitcodes.OK


@app.command(cls=_ServeCommand)
def serve(
    cell: Annotated[Path, typer.Argument(metavar="CELL", help="the cell file")],
    sim: Annotated[
        bool, typer.Option("--sim", help="serve the cell's devices on simulators")
    ] = False,
    speed: Annotated[
        float, typer.Option("--speed", metavar="F", min=0.01, help="simulators' speed-up (--sim)")
    ] = 1.0,
    endpoint: Annotated[
        str, typer.Option("--endpoint", metavar="URL", help="where to listen")
    ] = DEFAULT_ENDPOINT,
    users: Annotated[
        Path | None, typer.Option("--users", metavar="FILE", help="the users file")
    ] = None,
    certs: Annotated[
        Path | None, typer.Option("--certs", metavar="DIR", help="certificates and trust list")
    ] = None,
    recipes: Annotated[
        Path | None,
        typer.Option(
            "--recipes", metavar="DIR", help="released recipes (default: the cell's folder)"
        ),
    ] = None,
    safe_wait: Annotated[
        float,
        typer.Option(
            "--safe-wait", metavar="S", min=0, help="seconds a stop waits for the safe state"
        ),
    ] = 300.0,
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            metavar="[ADDR:]PORT",
            help=f"serve the web view too (alone: {DEFAULT_HTTP}; beyond loopback HTTPS only)",
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="check the configuration (cell, users, certificates, journal) and exit"
        ),
    ] = False,
    journal: JournalOption = None,
) -> int:
    """Serve the cell's controller on OPC UA: batches one after another, driven by clients."""
    setup = ServeSetup(cell, endpoint, users, certs, recipes, journal, http)
    if check:
        return _check(setup)
    import asyncio

    from cellctl.cli.run_commands import check_speed

    check_speed(speed, sim)
    code = asyncio.run(_serve(setup, sim=sim, speed=speed, safe_wait=safe_wait))
    raise typer.Exit(code)


async def _serve(setup: ServeSetup, *, sim: bool, speed: float, safe_wait: float) -> int:
    """Connect, serve until SIGTERM or SIGINT, stop the batch, confirm the safe state; the
    exit code (5 naming what is unconfirmed)."""
    from cellctl.cli.batch import SafeStateUnconfirmed
    from cellctl.service.core import ServiceOptions
    from cellctl.service.logins import Authenticator, LoginGuard
    from cellctl.service.opcua_thread import SurfaceThread
    from cellctl.service.resuming import resume_unfinished
    from cellctl.service.runner import serving, until_stopped
    from drivers.config import is_loopback

    options = ServiceOptions(
        journal=setup.journal,
        recipes=setup.recipes,
        security=setup.security_text(),
        sim=sim,
        safe_wait=safe_wait,
    )
    guard = LoginGuard()  # one count of failed logins, whichever surface they came through
    authenticator = Authenticator(setup.users, setup.loopback, guard)
    async with serving(setup.cell, options, sim=sim, speed=speed) as served:
        taken_up = await resume_unfinished(served.service)  # CannotTakeUp: exit 1
        if taken_up is not None:
            consoles.out.print(taken_up, markup=False, soft_wrap=True)
        surface = SurfaceThread(
            served.service,
            setup.endpoint,
            setup.security,
            authenticator.login,
            on_failure=lambda error: served.end(f"the OPC UA server failed: {error}"),
        )
        url = await surface.start()
        consoles.out.print(
            f"serving cell {setup.cell.cell} on {url}\nsecurity: {setup.security_text()}",
            markup=False,
            soft_wrap=True,
        )
        if setup.loopback and setup.users is None:
            consoles.out.print(
                "development mode: loopback only, no users file: every client has every role",
                markup=False,
                soft_wrap=True,
            )
        stops: list[Callable[[], Awaitable[None]]] = [surface.stop]
        if setup.http is not None:
            web_login = Authenticator(setup.users, is_loopback(setup.http[0]), guard, via="web")
            try:
                web = await _start_web(setup, served, web_login)
            except BaseException:
                await surface.stop()  # then the batch stopped and the safe state confirmed
                raise
            stops.insert(0, web.stop)
        unconfirmed = await until_stopped(served, stops)
        failure = served.failure()
    if unconfirmed:
        raise SafeStateUnconfirmed(unconfirmed, "when the service stopped")
    if failure is not None:  # exit 4: a supervisor (systemd's Restart=on-failure) restarts it
        consoles.err.print(
            f"error: the service ended: {failure}; the safe state is confirmed; the log has "
            "the details",
            markup=False,
            soft_wrap=True,
        )
        return exitcodes.INTERNAL_ERROR
    consoles.out.print("service stopped; safe state confirmed", markup=False)
    return exitcodes.OK


async def _start_web(setup: ServeSetup, served: Serving, authenticator: Authenticator) -> WebThread:
    """Start the web view beside the OPC UA surface (HTTPS with the service's certificate when
    `setup.http_certs`); its URL printed."""
    import contextlib

    from cellctl.web.journal import ServedWithJournal
    from cellctl.web.thread import WebThread
    from cellctl.web.tls import pem_files

    assert setup.http is not None
    addr, port = setup.http
    with contextlib.ExitStack() as files:
        # The PEM files live only while the server loads them.
        tls = files.enter_context(pem_files(setup.http_certs)) if setup.http_certs else None
        web = WebThread(
            ServedWithJournal(served.service, setup.journal),
            addr,
            port,
            authenticator.login,
            tls,
            on_failure=lambda error: served.end(f"the web view failed: {error}"),
        )
        url = await web.start()
    consoles.out.print(f"web view on {url}", markup=False, soft_wrap=True)
    return web
