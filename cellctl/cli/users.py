"""`cellctl users add|rm|passwd|list`: the users file of `cellctl serve` (names, roles and
password hashes). A password comes from CELLCTL_PASSWORD or a prompt, never an argument."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cellctl.cli import consoles
from cellctl.cli.app import users_app

# pydantic and the models load for a users command only, never for --version or --help.
if TYPE_CHECKING:
    from cellctl.service.users import RoleName, UsersFile

#: The environment variable a password is read from when no one types it.
PASSWORD_VARIABLE = "CELLCTL_PASSWORD"

#: `--file PATH`, as every users command takes it.
FileOption = Annotated[
    Path | None,
    typer.Option(
        "--file",
        metavar="PATH",
        help="the users file (default: CELLCTL_USERS or ~/.config/cellctl/users.yaml)",
    ),
]
NameArgument = Annotated[str, typer.Argument(metavar="NAME", help="the user's name")]


def _path(option: Path | None) -> Path:
    from cellctl.service.users import default_users_path

    return option if option is not None else default_users_path()


def _load(path: Path) -> UsersFile:
    from cellctl.service.users import load_users

    return load_users(path)


def _new_password(user: str) -> str:
    """The new password of `user`: CELLCTL_PASSWORD, else typed twice at the terminal (not
    echoed); BadValue when there is none, or the two differ."""
    import getpass

    from cellctl.errors import BadValue

    given = os.environ.get(PASSWORD_VARIABLE)
    if given is not None:
        if not given:
            raise BadValue(f"{PASSWORD_VARIABLE} is set but empty: a password cannot be empty")
        return given
    if not sys.stdin.isatty():
        raise BadValue(
            f"no terminal to ask for the password of {user!r}: "
            f"set {PASSWORD_VARIABLE} in the environment (never on the command line)"
        )
    first = getpass.getpass(f"password for {user}: ")
    if not first:
        raise BadValue("a password cannot be empty; nothing changed")
    if getpass.getpass(f"password for {user} again: ") != first:
        raise BadValue("the two passwords differ; nothing changed")
    return first


def _role(text: str) -> RoleName:
    """The role named `text` as the users file writes it; BadValue naming the roles."""
    from cellctl.errors import BadValue
    from cellctl.service.api import Role
    from cellctl.service.users import ROLE_NAMES

    try:
        return ROLE_NAMES[Role.parse(text)]
    except ValueError as err:
        raise BadValue(f"--role: {err}") from None


@users_app.command()
def add(
    name: NameArgument,
    role: Annotated[
        str,
        typer.Option(
            "--role", metavar="ROLE", help="viewer, operator, engineer or admin", show_default=False
        ),
    ],
    file: FileOption = None,
) -> None:
    """Add a user with a role; the password from CELLCTL_PASSWORD or typed twice."""
    from cellctl.service.passwords import hash_password
    from cellctl.service.users import UsersFile, save_users

    path = _path(file)
    label = _role(role)
    # A missing file is created; an existing one must be valid (its problems are shown).
    users = _load(path) if os.path.lexists(path) else UsersFile()
    users.check_new(name, path)  # before the password is asked for
    password = _new_password(name)
    save_users(path, users.added(name, label, hash_password(password), path))
    consoles.out.print(f"added {name} ({label}) to {path}", markup=False, soft_wrap=True)


@users_app.command()
def rm(name: NameArgument, file: FileOption = None) -> None:
    """Remove a user."""
    from cellctl.service.users import save_users

    path = _path(file)
    save_users(path, _load(path).removed(name, path))
    consoles.out.print(f"removed {name} from {path}", markup=False, soft_wrap=True)


@users_app.command()
def passwd(name: NameArgument, file: FileOption = None) -> None:
    """Set a user's password, from CELLCTL_PASSWORD or typed twice."""
    from cellctl.service.passwords import hash_password
    from cellctl.service.users import save_users

    path = _path(file)
    users = _load(path)
    users.entry(name, path)  # before the password is asked for
    password = _new_password(name)
    save_users(path, users.with_password(name, hash_password(password), path))
    consoles.out.print(f"new password for {name} in {path}", markup=False, soft_wrap=True)


@users_app.command("list")
def list_users(file: FileOption = None) -> None:
    """The users and their roles (never a password hash)."""
    path = _path(file)
    users = _load(path)
    if not users.users:
        consoles.out.print(f"no user in {path}", markup=False, soft_wrap=True)
        return
    # A name is 64 characters at most, a role 8: a line fits 80 columns.
    width = max(len(name) for name in users.users)
    for name in sorted(users.users):
        consoles.out.print(f"{name:<{width}}  {users.users[name].role}", markup=False)
