"""`cellctl serve` in a child process for the hil tests: the demo cell on its simulators, its
journal, log, locks, users and certificates in the test's own folder; the remote CLI run as
another process against it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node

from cellctl.service.api import NAMESPACE, PACKML, TAGS
from cellctl.testing import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
DEMO_CELL = ROOT / "recipes" / "demo" / "cell.yaml"
#: Seconds a service has to listen once started (imports, simulators, connect).
START_WITHIN = 60.0
#: Seconds a service has to end after SIGTERM (the batch stops, the safe state is confirmed).
STOP_WITHIN = 60.0


def service_env(folder: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a served cell's processes: everything of cellctl's in `folder` (the
    user's own journal, users file and certificates are never read or written)."""
    env = dict(os.environ)
    for name in ("CELLCTL_PASSWORD", "CELLCTL_USER", "CELLCTL_SERVER", "CELLCTL_CERTS"):
        env.pop(name, None)
    env.update(
        CELLCTL_JOURNAL=str(folder / "journal.sqlite"),
        CELLCTL_LOG_FILE=str(folder / "cellctl.log"),
        CELLCTL_LOCK_DIR=str(folder / "locks"),
        CELLCTL_USERS=str(folder / "no-users.yaml"),
        XDG_CONFIG_HOME=str(folder / "config"),
        XDG_DATA_HOME=str(folder / "data"),
        XDG_STATE_HOME=str(folder / "state"),
    )
    env.update(extra or {})
    return env


class Space:
    """The service's address space as a client finds it: by NAMESPACE's index, never an
    assumed one."""

    def __init__(self, client: Client, idx: int) -> None:
        self.client = client
        self.idx = idx

    @classmethod
    async def of(cls, client: Client) -> Space:
        """The space of a connected client."""
        return cls(client, await client.get_namespace_index(NAMESPACE))

    def node(self, name: str) -> Node:
        """The node `name` (a NodeId string) in NAMESPACE."""
        return self.client.get_node(ua.NodeId(ua.String(name), ua.Int16(self.idx)))

    def packml(self, name: str) -> Node:
        """A node of the PackML object."""
        return self.node(f"{PACKML}.{name}")

    def tag(self, name: str) -> Node:
        """A tag variable."""
        return self.node(f"{TAGS}.{name}")

    async def read(self, variable: str) -> object:
        """A PackML variable's value."""
        return await self.packml(variable).read_value()

    async def call(self, method: str, *args: object) -> object:
        """Call a PackML method; its Result."""
        return await self.node(PACKML).call_method(ua.QualifiedName(method, self.idx), *args)

    async def last_refusal(self) -> str:
        """This session's LastRefusal."""
        return str(await self.packml("LastRefusal").read_value())


def _listening(host: str, port: int) -> bool:
    """True once something accepts a TCP connection on host:port."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


@dataclass
class ServiceChild:
    """A `cellctl serve` child: its URL, folder and environment, and how it ended."""

    process: subprocess.Popen[str]
    url: str
    folder: Path
    env: dict[str, str]
    #: The web view's URL (`service_in_child(..., http=True)`), else None.
    web: str | None = None
    out: str = ""
    err: str = ""
    ended: list[int] = field(default_factory=list)

    @property
    def journal(self) -> Path:
        """The service's journal."""
        return Path(self.env["CELLCTL_JOURNAL"])

    def stop(self, how: signal.Signals = signal.SIGTERM, within: float = STOP_WITHIN) -> int:
        """Send `how` (unless it has ended) and wait for the end: the exit code."""
        if self.ended:
            return self.ended[0]
        if self.process.poll() is None:
            self.process.send_signal(how)
        try:
            out, err = self.process.communicate(timeout=within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise AssertionError(
                f"cellctl serve did not end within {within} s of {how.name}"
            ) from None
        self.out, self.err = out, err
        self.ended.append(self.process.returncode)
        return self.process.returncode

    def remote(
        self, *args: str, user: str | None = None, password: str | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """`cellctl ARGS --server URL [--user U]` as another process (password through
        CELLCTL_PASSWORD, never an argument)."""
        env = dict(self.env)
        if password is not None:
            env["CELLCTL_PASSWORD"] = password
        extra = ["--server", self.url] + (["--user", user] if user else [])
        return subprocess.run(
            [sys.executable, "-m", "cellctl", *args, *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


@contextlib.contextmanager
def service_in_child(
    folder: Path,
    *args: str,
    cell: Path = DEMO_CELL,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    prefix: tuple[str, ...] = (),
    sim: bool = True,
    http: bool = False,
) -> Iterator[ServiceChild]:
    """`cellctl serve CELL --sim --endpoint opc.tcp://HOST:PORT ARGS` in a child, once it
    listens; SIGTERM at the end (unless the test ended it) and its exit code checked by the
    test through `stop()`. `prefix` runs it under another command (`unshare -rn ...`).
    `sim=False`: no `--sim` (CELL points at simulators the test serves itself); `http`: the
    web view too, on `--http 127.0.0.1:PORT` (its URL in `child.web`), listening as well."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"opc.tcp://{host}:{port}"
    full_env = service_env(folder, env)
    command = [sys.executable, "-m", "cellctl", "serve", str(cell), "--endpoint", url]
    command += ["--sim"] if sim else []
    web_port = free_port() if http else None
    command += ["--http", f"127.0.0.1:{web_port}"] if web_port is not None else []
    process = subprocess.Popen(
        [*prefix, *command, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=full_env,
    )
    web = f"http://127.0.0.1:{web_port}" if web_port is not None else None
    child = ServiceChild(process, url, folder, full_env, web)

    def up() -> bool:
        """It ended, or it listens (on the web view's port too when it serves one)."""
        if process.poll() is not None:
            return True
        return _listening(host, port) and (web_port is None or _listening("127.0.0.1", web_port))

    try:
        if not prefix:
            wait_until(
                up,
                START_WITHIN,
                "cellctl serve to listen",
            )
            if process.poll() is not None:
                child.stop()
                raise AssertionError(
                    f"cellctl serve ended before it listened (exit {process.returncode}):\n"
                    f"{child.out}{child.err}"
                )
        yield child
    finally:
        if process.poll() is None and not child.ended:
            try:
                child.stop()
            finally:
                if process.poll() is None:
                    process.kill()
                    process.communicate()
