"""The users file of `cellctl serve`: who may log in, with which role (its model, where it is,
reading and writing it). Password hashes are cellctl.service.passwords; logins are
cellctl.service.logins."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from cellctl.errors import CellctlError, InvalidField, Problem, ValidationFailed
from cellctl.service.api import Role
from cellctl.service.passwords import checkable
from cellctl.yamlload import Where, YamlDocument, load_yaml, validation_problems

__all__ = [
    "ROLE_NAMES",
    "USERS_VARIABLE",
    "RoleName",
    "UnknownUser",
    "UserEntry",
    "UserExists",
    "UsersFile",
    "UsersFileUnwritable",
    "check_user_name",
    "default_users_path",
    "load_users",
    "save_users",
]

#: The environment variable that names the users file.
USERS_VARIABLE = "CELLCTL_USERS"

#: A role as the users file writes it (Role's labels).
RoleName = Literal["viewer", "operator", "engineer", "admin"]

#: Each Role as the users file names it.
ROLE_NAMES: Mapping[Role, RoleName] = {
    Role.VIEWER: "viewer",
    Role.OPERATOR: "operator",
    Role.ENGINEER: "engineer",
    Role.ADMIN: "admin",
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: How records name a caller without a user name (Caller.name): never a user's name.
_RESERVED = "anonymous"


def check_user_name(name: str) -> str:
    """`name` when it may name a user; InvalidField saying what a name may be otherwise."""
    if name == _RESERVED:
        raise InvalidField(
            f"{name!r} is how records name a caller who did not log in: choose another name",
            "reserved-name",
        )
    if not _NAME.fullmatch(name):
        raise InvalidField(
            f"bad user name {name!r}: 1 to 64 letters, digits and . _ @ - (ASCII), "
            "starting with a letter or digit",
            "bad-name",
        )
    return name


def _check_hash(text: str) -> str:
    if not checkable(text):
        raise InvalidField(
            "not a password hash cellctl can check (scrypt$N$r$p$salt$key): "
            "set the password again with `cellctl users passwd NAME`",
            "bad-hash",
        )
    return text


_CONFIG = ConfigDict(extra="forbid", frozen=True, strict=True)


class UserEntry(BaseModel):
    """One user: their role and their password's scrypt hash."""

    model_config = _CONFIG

    role: RoleName
    password: Annotated[str, AfterValidator(_check_hash)]

    @property
    def level(self) -> Role:
        """The role as the command layer checks it."""
        return Role.parse(self.role)


class UsersFile(BaseModel):
    """The users file of `cellctl serve`: who may log in, with which role, and whether a caller
    who does not log in may watch (`anonymous: viewer`)."""

    model_config = _CONFIG

    anonymous: Literal["none", "viewer"] = "none"
    users: dict[Annotated[str, AfterValidator(check_user_name)], UserEntry] = {}

    def check_new(self, name: str, file: Path) -> None:
        """InvalidField when `name` cannot name a user, UserExists when it names one already
        (`file` names the users file in that message)."""
        check_user_name(name)
        if name in self.users:
            raise UserExists(name, file)

    def entry(self, name: str, file: Path) -> UserEntry:
        """The user `name`; UnknownUser when there is none."""
        entry = self.users.get(name)
        if entry is None:
            raise UnknownUser(name, file)
        return entry

    def added(self, name: str, role: RoleName, password_hash: str, file: Path) -> UsersFile:
        """A copy with one more user; see check_new."""
        self.check_new(name, file)
        entry = UserEntry(role=role, password=password_hash)
        return self.model_copy(update={"users": {**self.users, name: entry}})

    def removed(self, name: str, file: Path) -> UsersFile:
        """A copy without the user `name`; UnknownUser when there is none."""
        self.entry(name, file)
        users = {key: entry for key, entry in self.users.items() if key != name}
        return self.model_copy(update={"users": users})

    def with_password(self, name: str, password_hash: str, file: Path) -> UsersFile:
        """A copy where the user `name` has a new password hash; UnknownUser when there is none."""
        entry = self.entry(name, file)
        users = {**self.users, name: entry.model_copy(update={"password": password_hash})}
        return self.model_copy(update={"users": users})


class UserExists(CellctlError):
    """`users add` of a name the users file has already."""

    def __init__(self, user: str, file: Path) -> None:
        super().__init__(
            f"user {user!r} exists already in {file} "
            f"(`cellctl users passwd {user}` sets a new password)"
        )
        self.user = user
        self.file = file


class UnknownUser(CellctlError):
    """A user name the users file does not have."""

    def __init__(self, user: str, file: Path) -> None:
        super().__init__(f"no user {user!r} in {file} (`cellctl users list` shows them)")
        self.user = user
        self.file = file


class UsersFileUnwritable(CellctlError):
    """The users file could not be written; the file as it was is unchanged."""

    def __init__(self, file: Path, reason: str) -> None:
        super().__init__(f"cannot write the users file {file}: {reason}; nothing changed")
        self.file = file
        self.reason = reason


def default_users_path(environ: Mapping[str, str] | None = None) -> Path:
    """$CELLCTL_USERS, else $XDG_CONFIG_HOME/cellctl/users.yaml, else
    ~/.config/cellctl/users.yaml."""
    env = os.environ if environ is None else environ
    named = env.get(USERS_VARIABLE)
    if named:
        return Path(named).expanduser()
    config = env.get("XDG_CONFIG_HOME")
    # The XDG spec: a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = Path(config) if config and Path(config).is_absolute() else Path.home() / ".config"
    return base / "cellctl" / "users.yaml"


def load_users(path: Path) -> UsersFile:
    """Read and validate a users file; ValidationFailed with every problem, located."""
    if not os.path.lexists(path):
        message = "no users file here (`cellctl users add NAME --role ROLE` creates it)"
        raise ValidationFailed([Problem(str(path), 1, 1, "missing", message)])
    doc = load_yaml(path)
    problems = list(doc.problems)
    users: UsersFile | None = None
    try:
        users = UsersFile.model_validate(doc.data)
    except ValidationError as err:
        problems.extend(validation_problems(doc, err, _describer(doc)))
    if problems or users is None:
        raise ValidationFailed(sorted(problems, key=lambda p: (p.line, p.col)))
    return users


def _keys(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(model.model_fields)


def _describer(doc: YamlDocument) -> Callable[[tuple[str | int, ...]], Where]:
    """Names the user a pydantic error's loc points into."""

    def describe(loc: tuple[str | int, ...]) -> Where:
        if len(loc) >= 2 and loc[0] == "users":
            return Where(f"user {loc[1]}", loc[2:], _keys(UserEntry))
        return Where("users file", loc, _keys(UsersFile))

    return describe


_HEADER = (
    "# Users of `cellctl serve`: written by `cellctl users add|rm|passwd`.\n"
    "# Roles: viewer, operator, engineer, admin. Passwords are scrypt hashes, never the text.\n"
    "# `anonymous: viewer` lets a client that does not log in watch; `none` refuses it.\n"
)


def save_users(path: Path, users: UsersFile) -> None:
    """Write the users file whole (mode 0600), so that a reader sees the old file or the new one,
    never half of one; UsersFileUnwritable when it cannot be written."""
    from ruamel.yaml import YAML

    data = {
        "anonymous": users.anonymous,
        "users": {
            name: {"role": entry.role, "password": entry.password}
            for name, entry in users.users.items()
        },
    }
    # Through a symlink to the file it names, as a shell's '>' would.
    real = Path(os.path.realpath(path))
    try:
        real.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A fresh private name beside the file (mkstemp: mode 0600 from the start, so that the
        # hashes are never readable by others, not even for a moment).
        fd, partial = tempfile.mkstemp(prefix=f".{real.name}.", suffix=".part", dir=real.parent)
        try:
            with open(fd, "w", encoding="utf-8") as out:
                out.write(_HEADER)
                yaml = YAML(typ="rt")
                yaml.width = 4096  # a hash on one line, as written
                yaml.dump(data, out)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(partial, 0o600)
            os.replace(partial, real)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
    except OSError as err:
        raise UsersFileUnwritable(path, err.strerror or str(err)) from err
