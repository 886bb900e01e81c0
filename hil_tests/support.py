"""Helpers of the hil tests: a safety bound with room for a loaded machine, an OPC UA server's
logins (waiting, free ports and loop threads come from the testing kit, cellctl.testing)."""

from __future__ import annotations

from typing import Any

from asyncua.crypto.permission_rules import User, UserRole
from asyncua.server.user_managers import UserManager


def with_room(bound: float) -> float:
    """A safety bound as a test asserts it on a loaded 2-core machine: × 3 + 1 s (DESIGN §6)."""
    return bound * 3 + 1.0


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
