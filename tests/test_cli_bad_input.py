"""Bad input from people, over every command of the CLI (enumerated from the typer app: a new
command without cases here fails): a missing file, a folder, a binary file, an unknown tag, a
value out of range, a wrong server URL. Each answers one clear message naming what is wrong and
its exit code (README "Exit codes"), never a traceback, and touches no device: the cell's
devices point at a listening socket that must never see a connection."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cellctl.testing import cli, free_port

#: Each command (its words) and its cases: the arguments ({name} is a file or URL of the
#: bench), the exit code, and what the message must say.
Case = tuple[list[str], int, str]

_READ = "cannot read"
_NOT_UTF8 = "file is not UTF-8 text"
_URL = "write opc.tcp://HOST:PORT"
_REFUSED = "connection refused"


def _remote(*words: str) -> list[Case]:
    """A remote command's cases: a closed port (exit 2, fast), a malformed URL, an http:// URL
    (exit 1, before any connection), a --certs folder that is not one."""
    return [
        ([*words, "--server", "{closed}"], 2, "{closed}: " + _REFUSED),
        ([*words, "--server", "not-a-url"], 1, "--server not-a-url: " + _URL),
        ([*words, "--server", "opc.tcp://127.0.0.1:99999"], 1, "127.0.0.1:99999: " + _URL),
        ([*words, "--server", "{http}"], 1, "the web view's"),
        ([*words, "--certs", "{missing}", "--server", "{closed}"], 1, "--certs {missing}:"),
    ]


CASES: dict[str, list[Case]] = {
    "validate": [
        (["validate", "{missing}"], 1, "{missing}:1:1: " + _READ),
        (["validate", "{folder}"], 1, "{folder}:1:1: " + _READ + ": is a folder"),
        (["validate", "{binary}"], 1, "{binary}:"),
        (["validate", "{recipe}", "--cell", "{png}"], 1, "{png}:1:1: " + _NOT_UTF8),
        (["validate", "{ghost}", "--cell", "{cell}"], 1, "plc.ghost"),
        (["validate", "{recipe}", "--cell", "{cell}", "-p", "parts=99"], 1, "99 is out of range"),
    ],
    "plan": [
        (["plan", "{missing}", "--cell", "{cell}"], 1, "{missing}:1:1: " + _READ),
        (["plan", "{recipe}", "--cell", "{binary}"], 1, "{binary}:"),
        (["plan", "{recipe}", "--cell", "{cell}", "-p", "parts=0"], 1, "0 is out of range"),
        (["plan", "{recipe}", "--cell", "{cell}", "-p", "nosuch=1"], 1, "'nosuch'"),
    ],
    "run": [
        (["run", "{missing}", "--cell", "{cell}"], 1, "{missing}:1:1: " + _READ),
        (["run", "{recipe}", "--cell", "{folder}"], 1, "{folder}:1:1: " + _READ),
        (["run", "{png}", "--cell", "{cell}"], 1, "{png}:1:1: " + _NOT_UTF8),
        (["run", "{ghost}", "--cell", "{cell}"], 1, "plc.ghost"),
        (["run", "{recipe}", "--cell", "{cell}", "--operator", "b\udcff"], 1, "--operator 'b"),
        (["run", "{recipe}", "--cell", "{cell}", "-p", "parts=99"], 1, "99 is out of range"),
        (["run", "{recipe}", "--cell", "{cell}", "--speed", "0"], 1, "'--speed'"),
        (["run", "{recipe}", "--cell", "{cell}", "--break", "nosuch"], 1, "no step 'nosuch'"),
        (["run", "{recipe}", "--cell", "{cell}", "--journal", "{binary}"], 6, "{binary}: not a"),
    ],
    "read": [
        (["read", "--cell", "{missing}"], 1, "{missing}:1:1: " + _READ),
        (["read", "--cell", "{png}"], 1, "{png}:1:1: " + _NOT_UTF8),
        (["read", "--cell", "{cell}", "plc.ghost"], 1, "'plc.ghost'"),
    ],
    "write": [
        (["write", "--cell", "{folder}", "plc.x=1"], 1, "{folder}:1:1: " + _READ),
        (["write", "--cell", "{cell}", "plc.ghost=1"], 1, "'plc.ghost'"),
        (["write", "--cell", "{cell}", "plc.x=1000"], 1, "plc.x on device plc: 1000 is above"),
        (["write", "--cell", "{cell}", "plc.run=maybe"], 1, "plc.run on device plc: expects"),
        (["write", "--cell", "{cell}", "--operator", "b\udcff", "plc.x=1"], 1, "not UTF-8 text"),
        (["write", "--cell", "{cell}", "--operator", " ", "plc.x=1"], 1, "--operator: give a name"),
    ],
    "check": [
        (["check", "{missing}"], 1, "{missing}:1:1: " + _READ),
        (["check", "{folder}"], 1, "{folder}:1:1: " + _READ),
        (["check", "{binary}"], 1, "{binary}:"),
    ],
    "sim": [
        (["sim", "{missing}"], 1, "{missing}:1:1: " + _READ),
        (["sim", "{png}"], 1, "{png}:1:1: " + _NOT_UTF8),
        (["sim", "{cell}", "--speed", "0"], 1, "'--speed'"),
        (["sim", "{cell}", "--write-cell", "{folder}"], 1, "is a folder"),
    ],
    "demo": [
        (["demo", "--cell", "{missing}"], 1, "--cell {missing}"),
        (["demo", "-p", "parts=0"], 1, "0 is out of range"),
        (["demo", "--fault", "nosuch"], 1, "--fault nosuch"),
        (["demo", "--journal", "{binary}"], 6, "{binary}: not a journal"),
    ],
    "serve": [
        (["serve", "{missing}", "--check"], 1, "{missing}:1:1: " + _READ),
        (["serve", "{binary}", "--check"], 1, "{binary}:"),
        (["serve", "{cell}", "--users", "{png}", "--check"], 1, "{png}:1:1: " + _NOT_UTF8),
        (["serve", "{cell}", "--certs", "{png}", "--check"], 1, "--certs {png}: not a folder"),
        (["serve", "{cell}", "--recipes", "{missing}", "--check"], 1, "--recipes {missing}"),
        (["serve", "{cell}", "--http", "99999", "--check"], 1, "--http 99999"),
        (["serve", "{cell}", "--endpoint", "opc.tcp://[::1", "--check"], 1, "[::1: " + _URL),
        (["serve", "{cell}", "--endpoint", "{http}", "--check"], 1, "the web view's"),
        (["serve", "{cell}", "--journal", "{folder}", "--check"], 6, "{folder}: is a folder"),
    ],
    "states": [(["states", "extra"], 1, "extra")],
    "schema": [(["schema", "nosuch"], 1, "'nosuch'")],
    "history": [
        (["history", "--journal", "{missing}"], 6, "journal {missing}: no such file"),
        (["history", "--journal", "{png}"], 6, "journal {png}: not a journal"),
        (["history", "--last", "0"], 1, "'--last'"),
    ],
    "report": [
        (["report", "B-1", "--journal", "{folder}"], 6, "journal {folder}: is a folder"),
        (["report", "B-1", "--format", "nosuch"], 1, "'nosuch'"),
    ],
    "audit verify": [
        (["audit", "verify", "--journal", "{binary}"], 6, "journal {binary}: not a journal"),
        (["audit", "verify", "--head", "nothex", "--journal", "{missing}"], 1, "--head nothex"),
        (["audit", "verify", "--key-file", "{missing}"], 1, "key file {missing}"),
    ],
    "resume": [
        (["resume", "--journal", "{missing}"], 6, "journal {missing}: no such file"),
        (["resume", "--journal", "{png}"], 6, "journal {png}: not a journal"),
    ],
    "users add": [
        (["users", "add", "olga", "--role", "op", "--file", "{folder}"], 1, "--role: unknown role"),
        (["users", "add", "olga", "--role", "operator", "--file", "{png}"], 1, "{png}:1:1:"),
    ],
    "users list": [
        (["users", "list", "--file", "{missing}"], 1, "{missing}:1:1: no users file"),
        (["users", "list", "--file", "{folder}"], 1, "{folder}:1:1: " + _READ),
    ],
    "users passwd": [(["users", "passwd", "olga", "--file", "{binary}"], 1, "{binary}:")],
    "users rm": [(["users", "rm", "olga", "--file", "{missing}"], 1, "{missing}:1:1:")],
    "certs init": [
        (["certs", "init", "--dir", "{binary}"], 1, "{binary}"),
        (["certs", "init", "--dir", "{tmp}/new", "--days", "0"], 1, "at least 1 day, not 0"),
        (["certs", "init", "--dir", "{tmp}/new", "--host", ""], 1, "--host '':"),
    ],
    "certs client": [
        (["certs", "client", "me", "--dir", "{png}"], 1, "{png}"),
        (["certs", "client", "../me", "--dir", "{tmp}/new"], 1, "client name '../me'"),
    ],
    "certs trust": [
        (["certs", "trust", "{missing}", "--dir", "{tmp}/new"], 1, "{missing}: no such file"),
        (["certs", "trust", "{folder}", "--dir", "{tmp}/new"], 1, "{folder} is a directory"),
        (["certs", "trust", "{png}", "--dir", "{tmp}/new"], 1, "{png} is not a certificate"),
    ],
    "certs list": [(["certs", "list", "--dir", "{missing}"], 1, "--dir {missing}: not a folder")],
    "status": _remote("status"),
    "watch": _remote("watch"),
    "cmd": [
        *_remote("cmd", "reset"),
        (["cmd", "jump"], 1, "'jump'"),
        # PackML's own spelling is a command too: it goes as far as the closed port.
        (["cmd", "Start", "--server", "{closed}"], 2, "{closed}: " + _REFUSED),
        (["cmd", "UNHOLD", "--choice", "Skip", "--server", "{closed}"], 2, _REFUSED),
    ],
    "load": [*_remote("load", "press-fit"), (["load", "r", "-p", "parts"], 1, "-p 'parts'")],
    "mode": [*_remote("mode", "manual"), (["mode", "fast"], 1, "mode 'fast': write")],
    "step": [
        *_remote("step", "run"),
        (["step", "jump"], 1, "'jump'"),
        (["step", "Run", "--server", "{closed}"], 2, _REFUSED),
    ],
    "break add": _remote("break", "add", "press"),
    "break rm": _remote("break", "rm", "press"),
    "answer": _remote("answer", "press", "ok"),
    "ack": _remote("ack"),
    "force": [*_remote("force", "plc.x=1"), (["force", "plc.x"], 1, "force 'plc.x': write")],
    "unforce": _remote("unforce", "plc.x"),
}


def _commands() -> list[str]:
    """Every command of the typer app, as typed ('audit verify'), groups walked."""
    import typer.main

    from cellctl.cli import app

    found: list[str] = []

    def walk(group: object, prefix: str) -> None:
        for name, command in getattr(group, "commands", {}).items():
            if hasattr(command, "commands"):
                walk(command, f"{prefix}{name} ")
            else:
                found.append(prefix + name)

    walk(typer.main.get_command(app), "")
    return sorted(found)


def _params() -> list[object]:
    """One param per (command, case); a command without cases is a param that fails."""
    params: list[object] = []
    for command in _commands():
        cases = CASES.get(command, [])
        if not cases:
            params.append(pytest.param(command, None, id=f"{command}: no case"))
        for args, code, says in cases:
            params.append(pytest.param(command, (args, code, says), id=" ".join(args)))
    return params


@dataclass(frozen=True)
class Bench:
    """The files and URLs the cases name, and the 'device' every cell points at."""

    names: dict[str, str]
    device: socket.socket

    def connections(self) -> int:
        """How many connections the device accepted since the last call (each closed)."""
        count = 0
        while True:
            try:
                peer, _ = self.device.accept()
            except BlockingIOError:
                return count
            peer.close()
            count += 1


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bench]:
    """A cell whose Modbus device is a listening socket nothing may connect to, a recipe, a
    recipe naming an unknown tag, a PNG, random bytes, a folder, a missing file, a closed port."""
    tmp = tmp_path_factory.mktemp("bad-input")
    device = socket.socket()
    device.bind(("127.0.0.1", 0))
    device.listen(16)
    device.setblocking(False)
    port = device.getsockname()[1]
    cell = tmp / "cell.yaml"
    cell.write_text(
        "cell: bench\n"
        "devices:\n"
        f"  plc: {{driver: modbus-tcp, host: 127.0.0.1, port: {port}}}\n"
        "tags:\n"
        "  plc.x: {device: plc, address: 'hr:0', type: int16, access: rw, min: 0, max: 100}\n"
        "  plc.run: {device: plc, address: 'coil:0', type: bool, access: rw}\n",
        encoding="utf-8",
    )
    head = "recipe: r\nversion: 1\nparameters:\n  parts: {type: int, min: 1, max: 10, default: 1}\n"
    recipe = tmp / "r.yaml"
    recipe.write_text(head + "steps:\n  - {id: a, set: {plc.x: 5}}\n", encoding="utf-8")
    ghost = tmp / "ghost.yaml"
    ghost.write_text(head + "steps:\n  - {id: a, set: {plc.ghost: 5}}\n", encoding="utf-8")
    png = tmp / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + os.urandom(256))
    binary = tmp / "random.yaml"
    binary.write_bytes(os.urandom(4096) + b"\xff")  # \xff: never UTF-8, whatever came before
    folder = tmp / "folder"
    folder.mkdir()
    closed = free_port()
    names = {
        "tmp": str(tmp),
        "cell": str(cell),
        "recipe": str(recipe),
        "ghost": str(ghost),
        "png": str(png),
        "binary": str(binary),
        "folder": str(folder),
        "missing": str(tmp / "missing.yaml"),
        "closed": f"opc.tcp://127.0.0.1:{closed}",
        "http": f"http://127.0.0.1:{closed}",
    }
    yield Bench(names, device)
    device.close()


@pytest.fixture(autouse=True)
def _no_remote_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No server, user, password or certificates from the environment."""
    for variable in ("CELLCTL_SERVER", "CELLCTL_USER", "CELLCTL_PASSWORD", "CELLCTL_CERTS"):
        monkeypatch.delenv(variable, raising=False)


@pytest.mark.timeout(10)  # a command that hangs on bad input fails here, not the whole run
@pytest.mark.parametrize(("command", "case"), _params())
def test_bad_input_is_named_with_its_exit_code_and_touches_nothing(
    capsys: pytest.CaptureFixture[str], bench: Bench, command: str, case: Case | None
) -> None:
    assert case is not None, f"`cellctl {command}` has no bad-input case in CASES: add some"
    args, code, says = case
    argv = [arg.format(**bench.names) for arg in args]
    started = time.monotonic()
    result = cli(capsys, *argv)
    took = time.monotonic() - started
    shown = result.out + result.err
    assert "Traceback" not in shown and "internal error" not in shown, shown
    assert result.exit_code == code, (argv, shown)
    assert says.format(**bench.names) in result.err, (argv, result.err)
    assert result.err.startswith(("error: ", "Usage: ", argv[-1], *bench.names.values())), shown
    assert bench.connections() == 0, f"{argv}: a device was connected to"
    if code == 2:  # an unreachable server is said at once, not after the 5 s timeout
        assert took < 2.0, took
