"""Users of `cellctl serve`: password hashes, the users file, the login guard's lockouts and the
authenticator's rules (cellctl.service.passwords, users, logins)."""

from __future__ import annotations

import base64
import hashlib
import stat
import unicodedata
from pathlib import Path
from typing import get_args

import pytest

from cellctl.errors import ValidationFailed
from cellctl.service.api import Caller, Role
from cellctl.service.logins import (
    ANONYMOUS_OFF,
    MAX_KEYS,
    PEER_LOCK_AFTER,
    WRONG_LOGIN,
    Authenticator,
    LoginGuard,
    LoginRefused,
    peer_host,
)
from cellctl.service.passwords import hash_password, verify_password
from cellctl.service.users import (
    ROLE_NAMES,
    RoleName,
    UserEntry,
    UsersFile,
    default_users_path,
    load_users,
    save_users,
)

#: A cheap scrypt cost for tests (the hash records it; verification reads it).
CHEAP = 16


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingVerify:
    """verify_password, counting the hashes it computes and the stored hashes it was given."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    def __call__(self, stored: str, password: str) -> bool:
        self.stored.append(stored)
        return verify_password(stored, password)


def users_file(anonymous: str = "none") -> UsersFile:
    return UsersFile.model_validate(
        {
            "anonymous": anonymous,
            "users": {
                "olga": {"role": "operator", "password": hash_password("right", n=CHEAP)},
                "ed": {"role": "engineer", "password": hash_password("other", n=CHEAP)},
            },
        }
    )


# -- hashes ------------------------------------------------------------------------------------


def test_default_hash_is_scrypt_n14_r8_p1_with_16_byte_salt_and_32_byte_key() -> None:
    stored = hash_password("correct horse")
    scheme, n, r, p, salt, key = stored.split("$")
    assert (scheme, n, r, p) == ("scrypt", str(2**14), "8", "1")
    assert (len(base64.b64decode(salt)), len(base64.b64decode(key))) == (16, 32)
    assert verify_password(stored, "correct horse")
    assert not verify_password(stored, "correct horse ")


def test_cheap_hash_verifies_by_the_cost_it_records_and_salts_differ() -> None:
    first, second = hash_password("pw", n=CHEAP), hash_password("pw", n=CHEAP)
    assert first.startswith(f"scrypt${CHEAP}$8$1$")
    assert first != second  # a fresh salt each time
    assert verify_password(first, "pw") and verify_password(second, "pw")
    assert not verify_password(first, "pW")
    assert not verify_password(first, "")


def test_a_password_matches_however_its_accents_are_composed() -> None:
    composed = unicodedata.normalize("NFC", "Grüße")
    decomposed = unicodedata.normalize("NFD", "Grüße")
    assert composed != decomposed
    assert verify_password(hash_password(composed, n=CHEAP), decomposed)


_GOOD = hash_password("pw", n=CHEAP)
# Fixed: parametrize ids must be the same in every test worker.
_SALT = base64.b64encode(bytes(range(16))).decode()
_KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "stored",
    [
        "",
        "pw",
        "scrypt",
        f"bcrypt$16$8$1${_SALT}${_KEY}",
        f"scrypt$16$8${_SALT}${_KEY}",  # a number missing
        f"scrypt$16$8$1${_SALT}${_KEY}$more",
        f"scrypt$15$8$1${_SALT}${_KEY}",  # N not a power of two
        f"scrypt$1$8$1${_SALT}${_KEY}",
        f"scrypt$0$8$1${_SALT}${_KEY}",
        f"scrypt${2**30}$8$1${_SALT}${_KEY}",  # a gigabyte per login: refused unhashed
        f"scrypt$16$0$1${_SALT}${_KEY}",
        f"scrypt$16$8$0${_SALT}${_KEY}",
        f"scrypt$16$8$99${_SALT}${_KEY}",
        f"scrypt$-16$8$1${_SALT}${_KEY}",
        f"scrypt$16$8$1$not*base64${_KEY}",
        f"scrypt$16$8$1${_SALT}$%%%",
        f"scrypt$16$8$1${_SALT}$",  # no key
        f"scrypt$16$8$1$$${_KEY}",  # no salt
        f"scrypt$１６$8$1${_SALT}${_KEY}",  # full-width digits
    ],
)
def test_a_malformed_stored_hash_verifies_false_and_never_raises(stored: str) -> None:
    assert verify_password(stored, "pw") is False


def genuine(n: int, r: int, p: int, salt: bytes, length: int = 32) -> str:
    """A hash of "pw" with these parameters, made by hashlib itself (not by hash_password)."""
    key = hashlib.scrypt(b"pw", salt=salt, n=n, r=r, p=p, dklen=length)
    return f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


@pytest.mark.parametrize(
    ("n", "r", "p", "salt", "length"),
    [(16, 8, 17, 16, 32), (16, 8, 1, 4, 32), (16, 8, 1, 16, 8), (16, 8, 1, 16, 128)],
    ids=["p over 16", "salt under 8 bytes", "key under 16 bytes", "key over 64 bytes"],
)
def test_a_matching_hash_outside_the_bounds_is_refused(
    n: int, r: int, p: int, salt: int, length: int
) -> None:
    assert verify_password(genuine(n, 8, 1, bytes(16)), "pw")  # the bounds' inside matches
    assert not verify_password(genuine(n, r, p, bytes(salt), length), "pw")


# -- the users file ----------------------------------------------------------------------------


def test_role_names_are_roles_labels() -> None:
    assert set(get_args(RoleName)) == {role.label for role in Role}
    assert all(ROLE_NAMES[role] == role.label for role in Role)
    assert UserEntry(role="engineer", password=_GOOD).level is Role.ENGINEER


def test_file_round_trip_private_and_whole(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "users.yaml"  # the folder is made
    users = UsersFile.model_validate(
        {
            "anonymous": "viewer",
            "users": {
                # Names YAML would read as a bool, a number or null if written bare.
                name: {"role": role, "password": hash_password(name, n=CHEAP)}
                for name, role in [
                    ("true", "viewer"),
                    ("123", "operator"),
                    ("null", "engineer"),
                    ("0x1f", "admin"),
                    ("a.b@c-d_e", "viewer"),
                ]
            },
        }
    )
    save_users(path, users)
    assert load_users(path) == users
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["users.yaml"]  # no temporary file left
    again = users.removed("true", path).added("olga", "operator", _GOOD, path)
    save_users(path, again)
    assert load_users(path) == again
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_saving_through_a_symlink_writes_the_file_it_names(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    link = tmp_path / "users.yaml"
    link.symlink_to(real)
    save_users(link, UsersFile())
    assert link.is_symlink() and load_users(real) == UsersFile()


def test_a_bad_users_file_names_every_problem_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(
        "anonymous: everyone\n"  # 1
        "users:\n"
        "  olga:\n"
        "    role: boss\n"  # 4
        f"    password: {_GOOD}\n"
        "  ed:\n"
        "    role: viewer\n"
        "    password: secret\n"  # 8: a password written as text, not a hash
        "  'bad name':\n"  # 9
        f"    role: viewer\n    password: {_GOOD}\n"
        "  anonymous:\n"  # 12: how records name a caller without a login
        f"    role: viewer\n    password: {_GOOD}\n"
        "  ann:\n"
        f"    role: viewer\n    password: {_GOOD}\n    pasword: x\n",  # 18: a typo
        encoding="utf-8",
    )
    with pytest.raises(ValidationFailed) as failed:
        load_users(path)
    where = {(p.line, p.code): p.message for p in failed.value.problems}
    assert all(p.file == str(path) for p in failed.value.problems)
    assert "'viewer'" in where[(1, "literal_error")] and "everyone" in where[(1, "literal_error")]
    assert where[(4, "literal_error")].startswith("user olga: role: ")
    assert "passwd" in where[(8, "bad-hash")] and where[(8, "bad-hash")].startswith("user ed: ")
    assert "bad user name 'bad name'" in where[(9, "bad-name")]
    assert (12, "reserved-name") in where
    assert "did you mean 'password'" in where[(18, "unknown-key")]
    assert str(failed.value).splitlines()[0].startswith(f"{path}:1:")


def test_a_user_given_twice_is_refused_at_the_second(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    entry = f"    role: viewer\n    password: {_GOOD}\n"
    path.write_text(f"users:\n  olga:\n{entry}  olga:\n{entry}", encoding="utf-8")
    with pytest.raises(ValidationFailed) as failed:
        load_users(path)
    assert [(p.line, p.code) for p in failed.value.problems] == [(5, "duplicate-key")]


def test_a_missing_users_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ValidationFailed) as failed:
        load_users(tmp_path / "users.yaml")
    assert "cellctl users add" in str(failed.value)


def test_default_users_path(tmp_path: Path) -> None:
    home = Path.home()
    assert default_users_path({}) == home / ".config" / "cellctl" / "users.yaml"
    assert default_users_path({"XDG_CONFIG_HOME": "relative"}) == default_users_path({})
    assert default_users_path({"XDG_CONFIG_HOME": str(tmp_path)}) == (
        tmp_path / "cellctl" / "users.yaml"
    )
    named = {"CELLCTL_USERS": str(tmp_path / "u.yaml"), "XDG_CONFIG_HOME": "/elsewhere"}
    assert default_users_path(named) == tmp_path / "u.yaml"


# -- the login guard ---------------------------------------------------------------------------


def fail(guard: LoginGuard, times: int, name: str | None = "olga", peer: str = "10.0.0.9") -> None:
    for _ in range(times):
        guard.failed(name, peer)


def test_five_failures_lock_a_name_for_1_s_then_doubling_up_to_60_s() -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    fail(guard, 4)
    assert guard.refusal("olga", "10.0.0.9") is None  # four in a row: still heard
    locks = []
    for _ in range(9):
        fail(guard, 1)
        start = clock.now
        while guard.refusal("olga", "10.0.0.9") is not None:
            clock.now += 0.25
        locks.append(clock.now - start)
    assert locks == [1, 2, 4, 8, 16, 32, 60, 60, 60]


def test_a_lockout_names_the_user_or_the_peer_and_the_wait() -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    fail(guard, 6)  # a 2 s lock on the name; the peer is not locked yet
    assert guard.refusal("olga", "10.0.0.1") == (
        "too many failed logins for user 'olga': try again in 2 s"
    )
    assert guard.refusal("ed", "10.0.0.9") is None
    fail(guard, PEER_LOCK_AFTER - 5)  # the peer's 2 s lock now
    clock.now += 0.5
    assert guard.refusal("ed", "10.0.0.9") == (
        "too many failed logins from 10.0.0.9: try again in 2 s"
    )
    assert guard.refusal("ed", "10.0.0.1") is None


def test_a_peer_trying_many_names_is_locked_and_a_name_tried_from_many_peers_too() -> None:
    guard = LoginGuard(Clock())
    for index in range(PEER_LOCK_AFTER - 1):
        guard.failed(f"user{index}", "10.0.0.9")
    assert guard.refusal("someone", "10.0.0.9") is None  # one host is many people's
    guard.failed("user-last", "10.0.0.9")
    assert guard.refusal("someone", "10.0.0.9") is not None
    assert guard.refusal("someone", "10.0.0.8") is None
    for index in range(5):
        guard.failed("ed", f"10.0.1.{index}")
    assert guard.refusal("ed", "10.0.2.1") is not None


def test_a_peer_is_its_host_whatever_port_each_connection_comes_from() -> None:
    guard = LoginGuard(Clock())
    for index in range(PEER_LOCK_AFTER):  # asyncua names the peer HOST:PORT, a port each
        guard.failed(f"user{index}", f"10.0.0.9:{40000 + index}")
    assert guard.refusal("someone", "10.0.0.9:50000") is not None
    for index in range(PEER_LOCK_AFTER):
        guard.failed(f"v6user{index}", f"[::1]:{40000 + index}")
    assert guard.refusal("someone", "[::1]:1234") is not None
    assert peer_host("[fe80::1]:4840") == "fe80::1" and peer_host("::1") == "::1"


def test_a_success_resets_the_name_and_the_peer() -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    fail(guard, 4)
    guard.succeeded("olga", "10.0.0.9")
    fail(guard, 4)
    assert guard.refusal("olga", "10.0.0.9") is None  # four again, not eight
    fail(guard, 1)
    assert guard.refusal("olga", "10.0.0.9") is not None


def test_failures_long_ago_are_forgotten() -> None:
    clock = Clock()
    guard = LoginGuard(clock)
    fail(guard, 4)
    clock.now += 16 * 60
    fail(guard, 1)
    assert guard.refusal("olga", "10.0.0.9") is None


def test_the_guard_tracks_at_most_max_keys_dropping_the_oldest() -> None:
    guard = LoginGuard(Clock())
    fail(guard, 5, "olga", "10.0.0.9")  # two keys, locked
    for index in range(MAX_KEYS // 2 - 1):  # two keys each: MAX_KEYS in all
        guard.failed(f"n{index}", f"p{index}")
    assert guard.refusal("olga", "10.0.0.9") is not None
    guard.failed("one", "more")  # past MAX_KEYS: the oldest (olga's) go
    assert guard.refusal("olga", "") is None
    assert guard.refusal(None, "10.0.0.9") is None


# -- the authenticator -------------------------------------------------------------------------


def test_a_locked_login_is_refused_without_computing_a_hash() -> None:
    clock = Clock()
    verify = CountingVerify()
    auth = Authenticator(users_file(), loopback=False, guard=LoginGuard(clock), verify=verify)
    for _ in range(5):
        assert auth.login("olga", "wrong", "10.0.0.9") == LoginRefused(WRONG_LOGIN)
    assert len(verify.stored) == 5
    refused = auth.login("olga", "right", "10.0.0.9")  # even the right password, while locked
    assert isinstance(refused, LoginRefused) and "too many failed logins" in refused.reason
    assert len(verify.stored) == 5  # no hash computed
    clock.now += 1
    assert auth.login("olga", "right", "10.0.0.9") == Caller(
        "olga", Role.OPERATOR, "opcua", "10.0.0.9"
    )
    assert len(verify.stored) == 6


def test_unknown_user_and_wrong_password_are_refused_alike_after_the_same_work() -> None:
    users = users_file()
    verify = CountingVerify()
    auth = Authenticator(users, loopback=True, guard=LoginGuard(Clock()), verify=verify)
    unknown = auth.login("nobody", "right", "127.0.0.1")
    wrong = auth.login("olga", "wrong", "127.0.0.1")
    assert unknown == wrong == LoginRefused(WRONG_LOGIN)
    # Both computed one hash of the same cost: the unknown user's against a dummy hash.
    dummy, real = verify.stored
    assert dummy != real and dummy.split("$")[:4] == real.split("$")[:4]
    # Both count as failures: enough more of either lock the peer out.
    for index in range(PEER_LOCK_AFTER - 2):  # many names: no name is locked first
        auth.login(f"nobody{index}", "x", "127.0.0.1")
    assert isinstance(auth.login("ed", "other", "127.0.0.1"), LoginRefused)


def test_a_right_login_gives_the_users_role() -> None:
    auth = Authenticator(users_file(), loopback=False, guard=LoginGuard(Clock()), via="web")
    assert auth.login("ed", "other", "10.0.0.9") == Caller("ed", Role.ENGINEER, "web", "10.0.0.9")
    assert auth.login("ed", None, "10.0.0.9") == LoginRefused(WRONG_LOGIN)


def test_anonymous_is_refused_unless_the_file_lets_viewers_in() -> None:
    verify = CountingVerify()
    off = Authenticator(users_file(), loopback=True, guard=LoginGuard(Clock()), verify=verify)
    assert off.login(None, None, "127.0.0.1") == LoginRefused(ANONYMOUS_OFF)
    assert "--user" in ANONYMOUS_OFF
    on = Authenticator(users_file("viewer"), loopback=False, guard=LoginGuard(Clock()))
    assert on.login(None, None, "10.0.0.9") == Caller(None, Role.VIEWER, "opcua", "10.0.0.9")
    assert verify.stored == []


def test_without_a_users_file_every_caller_is_admin_on_loopback_only() -> None:
    verify = CountingVerify()
    local = Authenticator(None, loopback=True, guard=LoginGuard(Clock()), verify=verify)
    assert local.login(None, None, "127.0.0.1") == Caller(None, Role.ADMIN, "opcua", "127.0.0.1")
    assert local.login("ann", "any", "127.0.0.1") == Caller("ann", Role.ADMIN, "opcua", "127.0.0.1")
    remote = Authenticator(None, loopback=False, guard=LoginGuard(Clock()))
    refused = remote.login("ann", "any", "10.0.0.9")
    assert isinstance(refused, LoginRefused) and "users file" in refused.reason
    assert verify.stored == []
