"""Test helpers: waiting for a condition with a deadline, a free port, a loop in a thread, an
OPC UA server's logins."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager

T = TypeVar("T")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `predicate` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def with_room(bound: float) -> float:
    """A safety bound as a test asserts it on a loaded 2-core machine: × 3 + 1 s (DESIGN §6)."""
    return bound * 3 + 1.0


def free_port() -> int:
    """A loopback port nobody listens on right now (bound and released; connecting is refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoopThread:
    """An asyncio loop in a daemon thread, so simulators keep serving while sync tests run."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run a coroutine on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Logins(UserManager):
    """An asyncua user manager that decides on the user name and password alone: `login` says
    who they are, or None to refuse (asyncua answers BadUserAccessDenied)."""

    def get_user(
        self,
        iserver: object,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        """asyncua's hook, called with each session's identity token."""
        return self.login(username, password)

    def login(self, username: str | None, password: str | None) -> User | None:
        """The user these credentials log in as (no user name: an anonymous login)."""
        raise NotImplementedError


def operator(username: str | None, password: str | None) -> User | None:
    """The one user the secured test servers know: operator / s3cret; anyone else: None."""
    if username == "operator" and password == "s3cret":
        return User(role=UserRole.User, name=username)
    return None
