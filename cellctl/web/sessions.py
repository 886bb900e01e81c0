"""The web view's sessions: a random token in a cookie, the caller and the CSRF token kept on
the server, forgotten after IDLE seconds unused; a bounded store."""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cellctl.service.api import Caller

__all__ = ["IDLE", "MAX_SESSIONS", "Session", "SessionStore", "new_token", "same_token"]

#: Seconds a session lives unused (a shift).
IDLE = 8 * 3600.0
#: The most sessions kept; past it the least recently used anonymous one goes first.
MAX_SESSIONS = 4096


def new_token() -> str:
    """A random token of 32 bytes, URL-safe text."""
    return secrets.token_urlsafe(32)


def same_token(given: str | None, expected: str) -> bool:
    """True when `given` is `expected`, compared in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


@dataclass
class Session:
    """One browser's session: who logged in (their caller), its CSRF token, when last used."""

    token: str
    caller: Caller
    csrf: str = field(default_factory=new_token)
    last_used: float = 0.0


class SessionStore:
    """Sessions by token, each forgotten IDLE seconds after its last use; at most MAX_SESSIONS
    (a flood of visitors evicts anonymous sessions before those of people who logged in)."""

    def __init__(
        self,
        idle: float = IDLE,
        limit: int = MAX_SESSIONS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._idle = idle
        self._limit = limit
        self._clock = clock
        self._lock = threading.Lock()
        # Least recently used first.
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, caller: Caller) -> Session:
        """A new session of `caller` (a fresh token and CSRF token)."""
        session = Session(new_token(), caller, last_used=self._clock())
        with self._lock:
            self._sessions[session.token] = session
            while len(self._sessions) > self._limit:
                self._evict()
        return session

    def get(self, token: str | None) -> Session | None:
        """The live session of `token` (its use now noted), or None (unknown or expired)."""
        if not token:
            return None
        now = self._clock()
        with self._lock:
            session = self._sessions.get(token)
            if session is None:
                return None
            if now - session.last_used > self._idle:
                del self._sessions[token]
                return None
            session.last_used = now
            self._sessions.move_to_end(token)
            self._expire(now)
            return session

    def drop(self, token: str | None) -> None:
        """Forget the session of `token` (a logout)."""
        if token:
            with self._lock:
                self._sessions.pop(token, None)

    def _expire(self, now: float) -> None:
        """Forget the sessions unused for longer than IDLE (the oldest are first)."""
        while self._sessions:
            oldest = next(iter(self._sessions.values()))
            if now - oldest.last_used <= self._idle:
                return
            del self._sessions[oldest.token]

    def _evict(self) -> None:
        """Forget one session to make room: the least recently used anonymous one, else the
        least recently used."""
        victim = next(
            (t for t, s in self._sessions.items() if s.caller.user is None),
            next(iter(self._sessions)),
        )
        del self._sessions[victim]
