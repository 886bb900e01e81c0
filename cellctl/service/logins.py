"""Logins of `cellctl serve`: the guard that slows down guessing before any hash is computed,
and the authenticator that turns a login into a Caller (or a refusal)."""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from cellctl.service.api import Caller, Role
from cellctl.service.passwords import unmatchable_hash, verify_password
from cellctl.service.users import UsersFile

__all__ = [
    "ANONYMOUS_OFF",
    "FIRST_LOCK",
    "FORGET_AFTER",
    "LOCK_AFTER",
    "LONGEST_LOCK",
    "MAX_KEYS",
    "PEER_LOCK_AFTER",
    "WRONG_LOGIN",
    "Authenticator",
    "LoginGuard",
    "LoginRefused",
    "peer_host",
]

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
        return unmatchable_hash(entries[0].password if entries else None)

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
