"""`cellctl users add|rm|passwd|list`, in-process (the password from CELLCTL_PASSWORD), and the
prompt on a real pseudo-terminal in a child."""

from __future__ import annotations

import io
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellctl.service.passwords import hash_password, verify_password
from cellctl.service.users import load_users, save_users
from cellctl.testing import cli


@pytest.fixture
def users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A users file path (not there yet); no password in the environment, stdin no terminal."""
    monkeypatch.delenv("CELLCTL_PASSWORD", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO())  # as under CI, even with pytest -s
    return tmp_path / "users.yaml"


def add(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    path: Path,
    name: str,
    role: str,
    password: str,
) -> int:
    monkeypatch.setenv("CELLCTL_PASSWORD", password)
    return cli(capsys, "users", "add", name, "--role", role, "--file", path).exit_code


def test_add_passwd_rm_list(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    assert add(capsys, monkeypatch, users, "olga", "operator", "pw-olga") == 0
    assert add(capsys, monkeypatch, users, "ed", "Engineer", "pw-ed") == 0
    stored = load_users(users)
    assert {name: entry.role for name, entry in stored.users.items()} == {
        "olga": "operator",
        "ed": "engineer",
    }
    assert verify_password(stored.users["olga"].password, "pw-olga")
    assert "pw-olga" not in users.read_text(encoding="utf-8")

    monkeypatch.setenv("CELLCTL_PASSWORD", "new-pw")
    assert cli(capsys, "users", "passwd", "olga", "--file", users).exit_code == 0
    olga = load_users(users).users["olga"]
    assert verify_password(olga.password, "new-pw") and olga.role == "operator"

    code, out, _ = cli(capsys, "users", "list", "--file", users)
    assert (code, out) == (0, "ed    engineer\nolga  operator\n")

    assert cli(capsys, "users", "rm", "ed", "--file", users).exit_code == 0
    assert list(load_users(users).users) == ["olga"]


def test_the_default_file_is_cellctl_users(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    monkeypatch.setenv("CELLCTL_USERS", str(users))
    monkeypatch.setenv("CELLCTL_PASSWORD", "pw")
    assert cli(capsys, "users", "add", "olga", "--role", "viewer").exit_code == 0
    assert list(load_users(users).users) == ["olga"]


def test_list_never_shows_a_hash_and_fits_80_columns(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    longest = "a" * 64
    assert add(capsys, monkeypatch, users, longest, "engineer", "pw") == 0
    assert add(capsys, monkeypatch, users, "b", "admin", "pw") == 0
    code, out, _ = cli(capsys, "users", "list", "--file", users)
    assert code == 0
    assert out.splitlines() == [f"{longest}  engineer", f"{'b':<64}  admin"]
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "scrypt" not in out


def test_add_of_a_user_there_already_is_refused_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    assert add(capsys, monkeypatch, users, "olga", "operator", "first") == 0
    before = users.read_bytes()
    monkeypatch.setenv("CELLCTL_PASSWORD", "second")
    code, _, err = cli(capsys, "users", "add", "olga", "--role", "admin", "--file", users)
    assert code == 1
    assert "user 'olga' exists already" in err and "passwd" in err
    assert users.read_bytes() == before
    # Refused before a password is asked for: no terminal is needed to hear it.
    monkeypatch.delenv("CELLCTL_PASSWORD")
    code, _, err = cli(capsys, "users", "add", "olga", "--role", "admin", "--file", users)
    assert code == 1 and "exists already" in err and "terminal" not in err


@pytest.mark.parametrize("command", ["rm", "passwd"])
def test_rm_and_passwd_of_an_unknown_user_are_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path, command: str
) -> None:
    assert add(capsys, monkeypatch, users, "olga", "operator", "first") == 0
    before = users.read_bytes()
    monkeypatch.delenv("CELLCTL_PASSWORD")  # refused before a password is asked for
    code, _, err = cli(capsys, "users", command, "ed", "--file", users)
    assert code == 1
    assert f"no user 'ed' in {users}" in err
    assert users.read_bytes() == before


@pytest.mark.parametrize("command", ["rm", "passwd", "list"])
def test_a_missing_users_file_is_bad_input_saying_how_to_make_one(
    capsys: pytest.CaptureFixture[str], users: Path, command: str
) -> None:
    args = [command] if command == "list" else [command, "olga"]
    code, _, err = cli(capsys, "users", *args, "--file", users)
    assert code == 1
    assert f"{users}:1:1:" in err and "cellctl users add" in err
    assert not users.exists()


def test_without_a_terminal_or_cellctl_password_nothing_is_written(
    capsys: pytest.CaptureFixture[str], users: Path
) -> None:
    code, _, err = cli(capsys, "users", "add", "olga", "--role", "viewer", "--file", users)
    assert code == 1
    assert "no terminal" in err and "CELLCTL_PASSWORD" in err
    assert "Traceback" not in err
    assert not users.exists()


@pytest.mark.parametrize(
    ("name", "role", "password", "says"),
    [
        ("olga", "boss", "pw", "unknown role 'boss'"),
        ("olga", "viewer", "", "CELLCTL_PASSWORD is set but empty"),
        ("bad name", "viewer", "pw", "bad user name 'bad name'"),
        ("anonymous", "viewer", "pw", "'anonymous' is how records name"),
    ],
)
def test_bad_role_name_or_empty_password_is_bad_input(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    users: Path,
    name: str,
    role: str,
    password: str,
    says: str,
) -> None:
    monkeypatch.setenv("CELLCTL_PASSWORD", password)
    code, _, err = cli(capsys, "users", "add", name, "--role", role, "--file", users)
    assert code == 1
    assert says in err
    assert not users.exists()


def test_a_broken_users_file_is_named_at_its_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    users.write_text("users:\n  olga:\n    role: boss\n    password: x\n", encoding="utf-8")
    code, _, err = cli(capsys, "users", "list", "--file", users)
    assert code == 1
    assert f"{users}:3:" in err and "boss" in err
    monkeypatch.setenv("CELLCTL_PASSWORD", "pw")
    assert cli(capsys, "users", "add", "ed", "--role", "viewer", "--file", users).exit_code == 1
    assert "ed" not in users.read_text(encoding="utf-8")  # a broken file is not overwritten


def test_the_anonymous_setting_survives_an_edit(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    entry = f"    role: viewer\n    password: {hash_password('pw', n=16)}\n"
    users.write_text(f"anonymous: viewer\nusers:\n  olga:\n{entry}", encoding="utf-8")
    assert add(capsys, monkeypatch, users, "ed", "admin", "pw") == 0
    assert load_users(users).anonymous == "viewer"


# -- the prompt, on a real terminal ------------------------------------------------------------

# The child makes the pty its controlling terminal (getpass reads /dev/tty), then becomes
# cellctl: exec keeps the pid, the session and the terminal.
_TAKE_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


class Terminal:
    """A child on a pseudo-terminal: what it wrote, and lines typed into it."""

    def __init__(self, args: list[str]) -> None:
        master, slave = os.openpty()
        env = {k: v for k, v in os.environ.items() if k != "CELLCTL_PASSWORD"}
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-c", _TAKE_TERMINAL, "-m", "cellctl", *args],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                start_new_session=True,
            )
        finally:
            os.close(slave)
        self.master = master
        self.text = ""

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        """Read until `text` was written (the deadline on the monotonic clock)."""
        deadline = time.monotonic() + timeout
        while text not in self.text:
            left = deadline - time.monotonic()
            assert left > 0, f"{text!r} never came; the child wrote {self.text!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:  # EIO: the child is gone
                    chunk = b""
                assert chunk, f"the child ended before {text!r}; it wrote {self.text!r}"
                self.text += chunk.decode(errors="replace")

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\r")

    def close(self) -> int:
        """Wait for the child; its exit code (what it wrote last is read too)."""
        try:
            code = self.child.wait(timeout=30)
            while select.select([self.master], [], [], 0)[0]:
                try:
                    chunk = os.read(self.master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                self.text += chunk.decode(errors="replace")
            return code
        finally:
            os.close(self.master)


@pytest.mark.parametrize("again", ["typed twice", "typo"])
def test_the_password_is_asked_twice_at_a_terminal_unechoed(tmp_path: Path, again: str) -> None:
    path = tmp_path / "users.yaml"
    term = Terminal(["users", "add", "olga", "--role", "operator", "--file", str(path)])
    try:
        term.wait_for("password for olga: ")
        term.type("typed twice")
        term.wait_for("password for olga again: ")
        term.type(again)
    finally:
        code = term.close()
    assert "typed twice" not in term.text  # not echoed
    if again == "typed twice":
        assert code == 0, term.text
        assert verify_password(load_users(path).users["olga"].password, "typed twice")
    else:
        assert code == 1, term.text
        assert "the two passwords differ; nothing changed" in term.text
        assert not path.exists()


def test_passwd_keeps_the_file_private(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, users: Path
) -> None:
    from cellctl.service.users import UsersFile

    save_users(users, UsersFile())
    users.chmod(0o644)  # made readable by hand
    assert add(capsys, monkeypatch, users, "olga", "viewer", "pw") == 0
    assert users.stat().st_mode & 0o777 == 0o600
