"""The remote CLI (`cellctl status`, `cmd`, `load`, `force`, `watch`, ...) in-process against the
real OPC UA surface of `cellctl serve` on 127.0.0.1, over a small command layer of the test's own
(the Desk): what the CLI prints, its exit codes, and the reason of a refusal as the service gave
it. The surface runs on a loop thread of its own, as in `cellctl serve`."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl.cell import Cell, load_cell
from cellctl.service.api import (
    REQUIRED_ROLE,
    Accepted,
    Action,
    Caller,
    RefusalKind,
    Refused,
    Request,
    Role,
    ServiceStatus,
)
from cellctl.service.certs import CertDir
from cellctl.service.opcua_surface import OpcuaSurface
from cellctl.service.security import server_security
from cellctl.testing import LoopThread, cli, wait_until
from cellctl.values import TagValue
from drivers.base import Quality, Value
from drivers.points import DataType
from hil_tests.support import with_room

DEMO_CELL = Path(__file__).resolve().parent.parent / "recipes" / "demo" / "cell.yaml"

#: The users the test's service knows: name -> (password, role).
USERS = {"olga": ("op-pass", Role.OPERATOR), "erik": ("eng-pass", Role.ENGINEER)}

#: The state each command leads to from the states it is legal in (enough for these tests).
NEXT = {
    ("Reset", "Stopped"): "Idle",
    ("Start", "Idle"): "Execute",
    ("Hold", "Execute"): "Held",
    ("Unhold", "Held"): "Execute",
    ("Stop", "Execute"): "Stopped",
}
LEGAL = {
    "Stopped": ("Reset", "Abort"),
    "Idle": ("Start", "Stop", "Abort"),
    "Execute": ("Stop", "Hold", "Abort"),
    "Held": ("Unhold", "Stop", "Abort"),
}


class Desk:
    """A stand-in for the command layer: a few PackML commands, load and force, with role and
    state refusals worded as the service words them; every request kept with its caller."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.surface: OpcuaSurface | None = None
        self.requests: list[tuple[Caller, Request]] = []
        self.status = ServiceStatus(
            cell=cell.cell,
            state="Stopped",
            mode="Production",
            legal=LEGAL["Stopped"],
            security="",
            recipes=("press-fit",),
        )

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """Carry out or refuse one request, and show the new status on the surface."""
        self.requests.append((caller, request))
        answer = self._answer(caller, request)
        if isinstance(answer, Accepted) and self.surface is not None:
            await self.surface.apply_status(self.status)
        return answer

    def _answer(self, caller: Caller, request: Request) -> Accepted | Refused:
        status = self.status
        needed = REQUIRED_ROLE[request.action]
        if caller.role < needed:
            return Refused(
                f"{request.describe()} needs the {needed.label} role; "
                f"{caller.name} is {caller.role.label}",
                RefusalKind.ROLE,
            )
        if request.action is Action.COMMAND:
            assert request.command is not None
            command = request.command.value
            target = NEXT.get((command, status.state))
            if target is None:
                legal = ", ".join(status.legal)
                return Refused(
                    f"{command} is not legal in {status.state} (legal now: {legal})",
                    RefusalKind.STATE,
                )
            self.status = dataclasses.replace(status, state=target, legal=LEGAL[target])
            return Accepted(target)
        if request.action is Action.LOAD:
            if request.name not in status.recipes:
                return Refused(f"no released recipe {request.name!r}", RefusalKind.INPUT)
            parameters = dict(p.split("=", 1) for p in request.parameters)
            self.status = dataclasses.replace(
                status, recipe=request.name, recipe_version=3, parameters=parameters
            )
            return Accepted(f"loaded {request.name} v3")
        if request.action is Action.FORCE:
            if request.name not in self.cell.tags:
                return Refused(f"unknown tag {request.name!r}", RefusalKind.INPUT)
            forced = {**status.forced, request.name: request.value}
            self.status = dataclasses.replace(status, forced=forced)
            return Accepted(f"{request.name} forced to {request.value}")
        return Refused(f"{request.describe()}: not in this test", RefusalKind.STATE)

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Refused logins are not what these tests look at."""


def tag_values(cell: Cell) -> dict[str, TagValue]:
    """A good value of every tag of the cell (the tag variables' first values)."""
    zero: dict[DataType, Value] = {DataType.BOOL: False, DataType.STRING: ""}
    zero |= {DataType.FLOAT32: 0.0, DataType.FLOAT64: 0.0}
    return {
        name: TagValue(name, tag.device, zero.get(tag.datatype, 0), Quality.GOOD, time.time())
        for name, tag in cell.tags.items()
    }


def authenticate(name: str | None, password: str | None, peer: str) -> Caller | None:
    """The users above; anonymous callers may only look."""
    if name is None:
        return Caller(None, Role.VIEWER, peer=peer)
    known = USERS.get(name)
    if known is None or known[0] != password:
        return None
    return Caller(name, known[1], peer=peer)


async def stop(surface: OpcuaSurface) -> None:
    """Stop the surface, then cancel what asyncua leaves of the sessions open at the time
    (their timeout and subscription loops), which the loop's close would find pending."""
    await surface.stop()
    current = asyncio.current_task()
    leftovers = [task for task in asyncio.all_tasks() if task is not current]
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)


@dataclasses.dataclass
class Service:
    """The surface listening, the desk behind it, and the loop thread they run on."""

    url: str
    desk: Desk
    surface: OpcuaSurface
    loop: LoopThread


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One service for the module, on 127.0.0.1 port 0, no security (loopback)."""
    cell = load_cell(DEMO_CELL)
    desk = Desk(cell)
    security = server_security("127.0.0.1", CertDir(tmp_path_factory.mktemp("certs")))
    loop = LoopThread()
    surface = OpcuaSurface(desk, "opc.tcp://127.0.0.1:0", security, authenticate, cell)
    desk.surface = surface
    try:
        url = loop.run(surface.start(desk.status, tag_values(cell)))
        yield Service(url, desk, surface, loop)
    finally:
        loop.run(stop(surface))
        loop.close()


@pytest.fixture
def fresh(service: Service, monkeypatch: pytest.MonkeyPatch) -> Service:
    """The service back in Stopped with nothing loaded or forced; the CLI's environment clean."""
    for variable in ("CELLCTL_SERVER", "CELLCTL_USER", "CELLCTL_PASSWORD", "CELLCTL_CERTS"):
        monkeypatch.delenv(variable, raising=False)
    desk = service.desk
    desk.status = dataclasses.replace(
        desk.status, state="Stopped", legal=LEGAL["Stopped"], recipe="", parameters={}, forced={}
    )
    desk.requests.clear()
    service.loop.run(service.surface.apply_status(desk.status))
    return service


def as_user(monkeypatch: pytest.MonkeyPatch, name: str) -> list[str]:
    """The CLI's options to log in as `name` (the password in the environment, never argv)."""
    monkeypatch.setenv("CELLCTL_PASSWORD", USERS[name][0])
    return ["--user", name]


def test_status_shows_the_block_within_80_columns(
    fresh: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = cli(capsys, "status", "--server", fresh.url)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["cell", "demo"]
    assert "state       Stopped (mode Production)" in lines
    assert "legal       Reset, Abort" in lines
    assert any(line.startswith("security    no security (loopback") for line in lines), out
    assert max(len(line) for line in lines) <= 80


def test_commands_load_and_force_go_through_with_the_users_role(
    fresh: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    olga = ["--server", fresh.url, *as_user(monkeypatch, "olga")]
    assert cli(capsys, "cmd", "reset", *olga)[:2] == (0, "Idle\n")
    code, out, _ = cli(capsys, "load", "press-fit", "-p", "count=5", "-p", "note=a b", *olga)
    assert (code, out) == (0, "loaded press-fit v3\n")
    assert cli(capsys, "cmd", "start", *olga)[:2] == (0, "Execute\n")
    erik = ["--server", fresh.url, *as_user(monkeypatch, "erik")]
    assert cli(capsys, "force", "conveyor.speed_rpm=120", *erik)[:2] == (
        0,
        "conveyor.speed_rpm forced to 120\n",
    )
    callers = [(caller.user, caller.role) for caller, _ in fresh.desk.requests]
    assert callers == [("olga", Role.OPERATOR)] * 3 + [("erik", Role.ENGINEER)]
    load = fresh.desk.requests[1][1]
    assert (load.name, load.parameters) == ("press-fit", ("count=5", "note=a b"))
    code, out, _ = cli(capsys, "status", "--server", fresh.url)
    assert "state       Execute (mode Production)" in out.splitlines()
    assert "parameters  count=5, note=a b" in out.splitlines()
    assert "forced      conveyor.speed_rpm=120" in out.splitlines()


def test_refusals_exit_7_or_1_with_the_services_reason(
    fresh: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    olga = ["--server", fresh.url, *as_user(monkeypatch, "olga")]
    code, out, err = cli(capsys, "cmd", "start", *olga)  # not legal in Stopped
    assert (code, out) == (7, "")
    assert err == "error: refused: Start is not legal in Stopped (legal now: Reset, Abort)\n"
    code, _, err = cli(capsys, "force", "conveyor.run=1", *olga)  # an operator may not force
    assert code == 7
    assert "force conveyor.run=1 needs the engineer role; olga is operator" in err
    code, _, err = cli(capsys, "load", "no-such-recipe", *olga)
    assert code == 1
    assert "no released recipe 'no-such-recipe'" in err
    code, _, err = cli(capsys, "cmd", "reset", "--server", fresh.url)  # anonymous: a viewer
    assert code == 7
    assert err == "error: refused: Reset needs the operator role; anonymous is viewer\n"
    assert fresh.desk.status.state == "Stopped"


def test_a_wrong_password_is_refused_with_exit_7(
    fresh: Service, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLCTL_PASSWORD", "not-hers")
    code, _, err = cli(capsys, "status", "--server", fresh.url, "--user", "olga")
    assert code == 7
    assert "refused the login (user 'olga'): BadUserAccessDenied" in err
    assert "Traceback" not in err


class Watching:
    """`cellctl watch` in a child process (it runs until a signal), its lines read as they come."""

    def __init__(self, url: str, log: Path) -> None:
        self.child = subprocess.Popen(
            [sys.executable, "-m", "cellctl", "watch", "--server", url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "CELLCTL_LOG_FILE": str(log)},
        )
        self.lines: list[str] = []
        stdout = self.child.stdout
        assert stdout is not None
        self._reader = threading.Thread(target=lambda: self.lines.extend(iter(stdout.readline, "")))
        self._reader.start()

    def wait_lines(self, count: int, what: str) -> None:
        """Wait until the child printed `count` lines."""
        wait_until(lambda: len(self.lines) >= count, within=with_room(3.0), what=what)

    def end(self, stop: signal.Signals | None = None) -> tuple[int, str]:
        """Its exit code and stderr, after `stop` was sent (if any); killed if it hangs."""
        if stop is not None and self.child.poll() is None:
            self.child.send_signal(stop)
        try:
            self.child.wait(timeout=with_room(3.0))
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()
        self._reader.join(timeout=5)
        stderr = self.child.stderr
        return self.child.returncode, stderr.read() if stderr is not None else ""


def show(service: Service, **changes: object) -> None:
    """Change the desk's status and write it to the surface."""
    service.desk.status = dataclasses.replace(service.desk.status, **changes)  # type: ignore[arg-type]
    service.loop.run(service.surface.apply_status(service.desk.status))


def test_watch_prints_a_line_per_change_and_ends_on_sigterm(fresh: Service, tmp_path: Path) -> None:
    """Off a terminal: one line per change of state, step or parts produced; SIGTERM ends it
    with exit 0."""
    watching = Watching(fresh.url, tmp_path / "watch.log")
    try:
        watching.wait_lines(1, "the first line")
        assert watching.lines[0].endswith(" Stopped · step — · produced 0\n")
        show(fresh, state="Idle", legal=LEGAL["Idle"])
        watching.wait_lines(2, "a line for Idle")
        assert watching.lines[1].endswith(" Idle · step — · produced 0\n")
        show(fresh, state="Execute", step="1 home", produced=2)
        watching.wait_lines(3, "a line for Execute")
        assert watching.lines[2].endswith(" Execute · step 1 home · produced 2\n")
        show(fresh, mode="Maintenance")  # no line: none of what a line shows changed
    finally:
        code, err = watching.end(signal.SIGTERM)
    assert code == 0, err
    assert len(watching.lines) == 3, watching.lines


def test_watch_ends_with_exit_2_when_the_service_goes_away(tmp_path: Path) -> None:
    """A service of its own, stopped while a child watches it."""
    cell = load_cell(DEMO_CELL)
    desk = Desk(cell)
    security = server_security("127.0.0.1", CertDir(tmp_path / "certs"))
    loop = LoopThread()
    surface = OpcuaSurface(desk, "opc.tcp://127.0.0.1:0", security, authenticate, cell)
    try:
        url = loop.run(surface.start(desk.status, tag_values(cell)))
        watching = Watching(url, tmp_path / "watch.log")
        try:
            watching.wait_lines(1, "the child following the service")
            stopped = time.monotonic()
            loop.run(stop(surface))
        finally:
            code, err = watching.end()
        assert time.monotonic() - stopped < with_room(3.0)
        assert code == 2, err
        assert f"error: {url}: the service went away" in err
    finally:
        loop.run(stop(surface))
        loop.close()
