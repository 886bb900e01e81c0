"""Users, roles and logins of `cellctl serve`: the users file, scrypt password hashes, the guard
that slows down guessing before any hash is computed, and the authenticator that turns a login
into a Caller (or a refusal)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import math
import os
import re
import secrets
import tempfile
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError

from cellctl.errors import CellctlError, InvalidField, Problem, ValidationFailed
from cellctl.service.api import Caller, Role
from cellctl.yamlload import Where, YamlDocument, load_yaml, validation_problems

__all__ = [
    "ANONYMOUS_OFF",
    "DEFAULT_N",
    "MAX_KEYS",
    "ROLE_NAMES",
    "USERS_VARIABLE",
    "WRONG_LOGIN",
    "Authenticator",
    "LoginGuard",
    "LoginRefused",
    "RoleName",
    "UnknownUser",
    "UserEntry",
    "UserExists",
    "UsersFile",
    "UsersFileUnwritable",
    "check_user_name",
    "default_users_path",
    "hash_password",
    "load_users",
    "save_users",
    "verify_password",
]

#: The environment variable that names the users file.
USERS_VARIABLE = "CELLCTL_USERS"

# -- password hashes ---------------------------------------------------------------------------

#: scrypt's cost parameters for new hashes: 16 MiB and about 50 ms a hash.
DEFAULT_N = 2**14
_R = 8
_P = 1
_SALT_BYTES = 16
_KEY_BYTES = 32
#: The most memory a stored hash may make verification use (128·r·N bytes): a users file
#: cannot make a login take gigabytes.
_MAX_MEMORY = 64 * 1024 * 1024
_MAX_P = 16
_SCHEME = "scrypt"


@dataclass(frozen=True)
class _Hash:
    """A stored hash taken apart: scrypt's parameters, the salt and the derived key."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    def text(self) -> str:
        """The hash as the users file stores it: scrypt$N$r$p$<salt b64>$<key b64>."""
        salt = base64.b64encode(self.salt).decode("ascii")
        key = base64.b64encode(self.key).decode("ascii")
        return f"{_SCHEME}${self.n}${self.r}${self.p}${salt}${key}"


def _derive(password: str, n: int, r: int, p: int, salt: bytes, length: int) -> bytes:
    # NFC: the same password typed on two systems that compose accents differently matches.
    secret = unicodedata.normalize("NFC", password).encode("utf-8")
    maxmem = 128 * r * (n + p + 2) + 1024 * 1024  # OpenSSL's own need, and some room
    return hashlib.scrypt(secret, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length)


def _parse_hash(stored: str) -> _Hash | None:
    """The parts of a stored hash, or None when it is not one this module can check (within
    bounds of cost, salt and key length)."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        return None
    try:
        n, r, p = (int(part, 10) for part in parts[1:4] if part.isdigit())
        salt = base64.b64decode(parts[4], validate=True)
        key = base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):  # too few numbers, or not base64
        return None
    power_of_two = n > 1 and n & (n - 1) == 0
    if not (power_of_two and r >= 1 and 1 <= p <= _MAX_P and 128 * r * n <= _MAX_MEMORY):
        return None
    if len(salt) < 8 or not 16 <= len(key) <= 64:
        return None
    return _Hash(n, r, p, salt, key)


def hash_password(password: str, *, n: int = DEFAULT_N) -> str:
    """The scrypt hash of a password, with a fresh salt, as the users file stores it; `n` is
    scrypt's cost (a power of two; the hash records it)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    return _Hash(n, _R, _P, salt, _derive(password, n, _R, _P, salt, _KEY_BYTES)).text()


def verify_password(stored: str, password: str) -> bool:
    """True when `password` is the one `stored` was made from; False for any other, and for a
    stored hash that is malformed (never raises)."""
    parsed = _parse_hash(stored)
    if parsed is None:
        return False
    try:
        key = _derive(password, parsed.n, parsed.r, parsed.p, parsed.salt, len(parsed.key))
    except (ValueError, MemoryError):  # OpenSSL refused the parameters after all
        return False
    return hmac.compare_digest(key, parsed.key)


# -- the users file ----------------------------------------------------------------------------

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
    if _parse_hash(text) is None:
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


# -- logins ------------------------------------------------------------------------------------

#: Failed logins in a row after which a user name is locked out.
LOCK_AFTER = 5
#: Failed logins in a row after which a peer host is locked out, whatever the names tried:
#: more than a name's, since one panel PC or HMI server is many people's one host.
PEER_LOCK_AFTER = 20
#: The first lockout, and the longest (it doubles per further failure up to it), in seconds.
FIRST_LOCK = 1.0
LONGEST_LOCK = 60.0
#: A name or peer whose last failure is this old (seconds) and that is not locked starts over.
FORGET_AFTER = 15 * 60.0
#: The most user names and peers tracked; the one whose last failure is oldest goes first.
MAX_KEYS = 10_000


def peer_host(peer: str) -> str:
    """The host of a peer written HOST:PORT or [IPV6]:PORT (a bare host as it is)."""
    if peer.startswith("["):
        return peer[1 : peer.find("]")] if "]" in peer else peer
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() and ":" not in host else peer


@dataclass
class _Failures:
    """Failed logins in a row of one user name or one peer."""

    count: int = 0
    last: float = 0.0
    locked_until: float = 0.0


class LoginGuard:
    """Counts failed logins per user name and per peer host, and locks a name out after
    LOCK_AFTER failures in a row, a peer after PEER_LOCK_AFTER (1 s, doubling per further
    failure up to 60 s).

    Asked before any hash is computed, so that guessing costs the guesser time and the server
    no CPU. Thread-safe: asyncua asks from the server's own thread.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently failed first: the first to go when MAX_KEYS are tracked.
        self._keys: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    @staticmethod
    def _keys_of(name: str | None, peer: str) -> list[tuple[str, str]]:
        keys = [] if name is None else [("user", name)]
        host = peer_host(peer)  # each connection has a port of its own: the host guesses
        return [*keys, ("peer", host)] if host else keys

    def refusal(self, name: str | None, peer: str) -> str | None:
        """Why a login of `name` from `peer` is refused unheard (a lockout), or None."""
        now = self._clock()
        with self._lock:
            waits = [
                (failures.locked_until - now, key)
                for key in self._keys_of(name, peer)
                if (failures := self._keys.get(key)) is not None and now < failures.locked_until
            ]
        if not waits:
            return None
        wait, (kind, who) = max(waits)
        where = f"for user {who!r}" if kind == "user" else f"from {who}"
        return f"too many failed logins {where}: try again in {math.ceil(wait)} s"

    def failed(self, name: str | None, peer: str) -> None:
        """Count a failed login of `name` from `peer`."""
        now = self._clock()
        with self._lock:
            for key in self._keys_of(name, peer):
                failures = self._keys.pop(key, None) or _Failures()
                if now - failures.last > FORGET_AFTER and now >= failures.locked_until:
                    failures = _Failures()
                failures.count += 1
                failures.last = now
                after = LOCK_AFTER if key[0] == "user" else PEER_LOCK_AFTER
                if failures.count >= after:
                    doublings = min(failures.count - after, 16)
                    failures.locked_until = now + min(FIRST_LOCK * 2**doublings, LONGEST_LOCK)
                self._keys[key] = failures  # to the end: the newest
                while len(self._keys) > MAX_KEYS:
                    self._keys.popitem(last=False)

    def succeeded(self, name: str | None, peer: str) -> None:
        """A login of `name` from `peer` succeeded: both start over."""
        with self._lock:
            for key in self._keys_of(name, peer):
                self._keys.pop(key, None)


@dataclass(frozen=True)
class LoginRefused:
    """A login was refused: why, in words a person at the client can act on."""

    reason: str


#: The one refusal for an unknown user and a wrong password: it does not tell which.
WRONG_LOGIN = "wrong user name or password"
#: The refusal of a caller who did not log in, when the users file does not let them watch.
ANONYMOUS_OFF = "anonymous access is off: log in with --user"
_NO_USERS_FILE = (
    "this server has no users file, so it takes clients on loopback only: "
    "give `cellctl serve` a users file (--users FILE)"
)


class Authenticator:
    """Turns a login (user name and password, or none) from a peer into a Caller with a role,
    or a refusal; failed logins go through the LoginGuard.

    Without a users file every caller is an admin, on loopback only. With one, a caller who
    does not log in is a viewer if the file says `anonymous: viewer`, else refused; an unknown
    user and a wrong password are refused alike, after the same work.
    """

    def __init__(
        self,
        users: UsersFile | None,
        loopback: bool,
        guard: LoginGuard,
        *,
        verify: Callable[[str, str], bool] = verify_password,
        via: str = "opcua",
    ) -> None:
        self.users = users
        self.loopback = loopback
        self.guard = guard
        #: Checks a password against a stored hash (verify_password; a counting one in tests).
        self.verify = verify
        self.via = via
        self._dummy = self._dummy_hash(users)

    @staticmethod
    def _dummy_hash(users: UsersFile | None) -> str:
        """A hash no password matches, of the same cost as the file's: an unknown user's
        login takes as long as a known one's."""
        entries = list(users.users.values()) if users is not None else []
        parsed = _parse_hash(entries[0].password) if entries else None
        n, r, p = (parsed.n, parsed.r, parsed.p) if parsed is not None else (DEFAULT_N, _R, _P)
        return _Hash(n, r, p, bytes(_SALT_BYTES), bytes(_KEY_BYTES)).text()

    def login(self, name: str | None, password: str | None, peer: str) -> Caller | LoginRefused:
        """The caller `name` (None: did not log in) from `peer` is, or why they are refused."""
        if self.users is None:
            if not self.loopback:
                return LoginRefused(_NO_USERS_FILE)
            return Caller(name or None, Role.ADMIN, self.via, peer)
        if name is None:
            if self.users.anonymous == "viewer":
                return Caller(None, Role.VIEWER, self.via, peer)
            return LoginRefused(ANONYMOUS_OFF)
        locked = self.guard.refusal(name, peer)
        if locked is not None:
            return LoginRefused(locked)  # before any hash: a lockout costs the server nothing
        entry = self.users.users.get(name)
        # An unknown user is checked against the dummy hash: the answer takes as long.
        matches = self.verify(entry.password if entry is not None else self._dummy, password or "")
        if entry is None or not matches:
            self.guard.failed(name, peer)
            return LoginRefused(WRONG_LOGIN)
        self.guard.succeeded(name, peer)
        return Caller(name, entry.level, self.via, peer)
