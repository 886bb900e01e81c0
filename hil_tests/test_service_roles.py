"""Roles, logins and certificates of `cellctl serve` itself (the demo cell on its simulators, in
a child process), driven by plain asyncua clients: every role against every method (and a tag
write, which is a force), each answered and on record with its user; a wrong password refused,
recorded and, repeated, locked out; a trusted client certificate let in over SignAndEncrypt and
an untrusted one refused and recorded; and no security beyond loopback (192.0.2.1 on the
loopback link of a network namespace of the test's own) refused before anything starts."""

from __future__ import annotations

import asyncio
import functools
import signal
import subprocess
from collections import Counter
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256
from asyncua.ua.uaerrors import UaStatusCodeError

from cellctl.cli import run as cellctl_run
from cellctl.control.journal.rows import JournalRow
from cellctl.service.api import (
    METHODS,
    STATE_NUMBERS,
    TAGS,
    Role,
)
from cellctl.service.certs import CertDir, read_certificate
from cellctl.service.logins import LOCK_AFTER, WRONG_LOGIN
from cellctl.service.passwords import hash_password
from cellctl.service.users import ROLE_NAMES, UsersFile, save_users
from cellctl.testing import wait_until
from drivers.opcua.security import certificate_uri
from hil_tests.conftest import tool_missing
from hil_tests.service_support import START_WITHIN, ServiceChild, service_in_child
from hil_tests.service_support import Space as ServiceSpace
from tests.support import journal_rows

#: One user per role: name -> role (each one's password is PASSWORD % name).
USERS = {"vera": Role.VIEWER, "otto": Role.OPERATOR, "erin": Role.ENGINEER, "ada": Role.ADMIN}
#: A viewer whose wrong passwords lock them out (the matrix's users are never locked).
GUESSED = "lars"
PASSWORD = "pw-%s"
#: scrypt's cost for the test's users: cheap, so that logins are fast (the hash records it).
CHEAP_N = 2**4
#: Seconds for one client request on loopback.
TIMEOUT = 10.0
#: Seconds for the cell to leave a transitional state (Resetting, Starting, Holding ...).
SETTLE_WITHIN = 20.0
#: The tag the matrix forces (0 rpm: the conveyor stands still) and its tag variable.
FORCED = "conveyor.speed_rpm"
#: The matrix's name for a write of a tag variable (a force, not a method).
TAG_WRITE = f"write {TAGS}.{FORCED}"


@dataclass(frozen=True)
class Call:
    """One call of the matrix: a method (or TAG_WRITE) with arguments that would be accepted in
    the right state, the least role that may make it (as the issue's roles say: viewer reads;
    operator commands, loads, answers, acknowledges; engineer modes, steps, breakpoints,
    forces) and how the journal names the request."""

    method: str
    args: tuple[object, ...]
    least: Role
    recorded_as: str


_OPERATOR, _ENGINEER = Role.OPERATOR, Role.ENGINEER
#: The matrix's calls in order, each made by every role from viewer to admin. The order lets
#: the state allow most: Maintenance first (forcing, stepping and breakpoints need it) while
#: nothing runs, then a recipe, then the commands through the batch it loaded.
CALLS: tuple[Call, ...] = (
    Call("SetMode", ("Maintenance",), _ENGINEER, "mode Maintenance"),
    Call("LoadRecipe", ("press-fit", ["parts=1"]), _OPERATOR, "load press-fit parts=1"),
    Call("AddBreakpoint", ("start-conveyor",), _ENGINEER, "break add start-conveyor"),
    Call("RemoveBreakpoint", ("start-conveyor",), _ENGINEER, "break rm start-conveyor"),
    Call("Force", (FORCED, "0"), _ENGINEER, f"force {FORCED}=0"),
    Call(TAG_WRITE, ("0",), _ENGINEER, f"force {FORCED}=0"),
    Call("Unforce", (FORCED,), _ENGINEER, f"unforce {FORCED}"),
    Call("Acknowledge", (), _OPERATOR, "ack"),
    Call("AnswerPrompt", ("start-conveyor", "yes"), _OPERATOR, "answer start-conveyor=yes"),
    Call("Reset", (), _OPERATOR, "Reset"),
    Call("Step", ("run",), _ENGINEER, "step run"),
    Call("Start", (), _OPERATOR, "Start"),
    Call("Suspend", (), _OPERATOR, "Suspend"),
    Call("Unsuspend", (), _OPERATOR, "Unsuspend"),
    Call("Hold", (), _OPERATOR, "Hold"),
    Call("Unhold", ("",), _OPERATOR, "Unhold"),
    Call("Stop", (), _OPERATOR, "Stop"),
    Call("Abort", (), _OPERATOR, "Abort"),
    Call("Clear", (), _OPERATOR, "Clear"),
)
#: What a call allowed for the caller's role may answer: done, or refused for the state or input.
NOT_FOR_THE_ROLE = {"Good", "BadInvalidState", "BadInvalidArgument"}


def password(name: str) -> str:
    """The test user's password."""
    return PASSWORD % name


def write_users(path: Path) -> Path:
    """The users file: USERS and GUESSED (a viewer), cheap scrypt hashes, anonymous off."""
    users = UsersFile()
    for name, role in {**USERS, GUESSED: Role.VIEWER}.items():
        users = users.added(name, ROLE_NAMES[role], hash_password(password(name), n=CHEAP_N), path)
    save_users(path, users)
    return path


async def connect(url: str, user: str, secret: str | None = None) -> Client:
    """A plain asyncua client, connected and logged in as `user`."""
    client = Client(url, timeout=TIMEOUT)
    client.set_user(user)
    client.set_password(password(user) if secret is None else secret)
    await client.connect()
    return client


class Space(ServiceSpace):
    """The service's address space as one client finds it, with a call or a tag write."""

    async def invoke(self, method: str, args: tuple[object, ...]) -> object:
        """Call a PackML method, or write a tag variable (TAG_WRITE, its value as text)."""
        if method == TAG_WRITE:
            tag = self.node(f"{TAGS}.{FORCED}")
            vtype = await tag.read_data_type_as_variant_type()
            await tag.write_value(ua.Variant(int(str(args[0])), vtype))
            return None
        return await self.call(method, *args)


async def status_of(call: Awaitable[object]) -> str:
    """The name of the status a call or write was answered with ("Good" when it was done)."""
    try:
        await call
    except UaStatusCodeError as refused:
        return str(ua.StatusCode(refused.code).name)
    return "Good"


def recorded(rows: list[JournalRow]) -> Counter[tuple[str, str]]:
    """(user, request) of every command and refused row."""
    found: Counter[tuple[str, str]] = Counter()
    for row in rows:
        if row.kind in ("command", "refused"):
            body = row.data()
            found[(str(body.get("operator")), str(body.get("command")))] += 1
    return found


async def settled(space: Space) -> str:
    """The state once it is not a transitional one (Resetting, Starting, ...)."""
    async with asyncio.timeout(SETTLE_WITHIN):
        while True:
            state = str(await space.read("State"))
            if not state.endswith("ing"):
                return state
            await asyncio.sleep(0.05)  # a poll interval; the timeout above is the deadline


# -- 1: every role against every method ---------------------------------------------------------


@pytest.fixture
def with_users(tmp_path: Path) -> Iterator[ServiceChild]:
    """The service with the users file (no certificates: no security, on loopback)."""
    users = write_users(tmp_path / "users.yaml")
    # Started outside the test's loop: service_in_child waits for it to listen by blocking.
    with service_in_child(tmp_path / "served", "--users", str(users)) as child:
        yield child


@pytest.mark.asyncio
async def test_every_role_against_every_method_is_answered_and_recorded_with_its_user(
    with_users: ServiceChild,
) -> None:
    methods = {call.method for call in CALLS}
    assert methods - {TAG_WRITE} == set(METHODS), "the matrix misses a method"
    child = with_users
    answers: list[tuple[str, Call, str, str]] = []  # (user, call, status, its LastRefusal)
    clients = {name: await connect(child.url, name) for name in USERS}
    try:
        spaces = {name: await Space.of(client) for name, client in clients.items()}
        for call in CALLS:
            for name in USERS:
                space = spaces[name]
                status = await status_of(space.invoke(call.method, call.args))
                reason = "" if status == "Good" else str(await space.read("LastRefusal"))
                answers.append((name, call, status, reason))
            await settled(spaces["vera"])
    finally:
        for client in clients.values():
            await client.disconnect()
    assert await asyncio.to_thread(child.stop) == 0, child.err
    table = "\n".join(f"{n:5} {c.method:24} {s:22} {r}" for n, c, s, r in answers)
    for name, call, status, reason in answers:
        if USERS[name] < call.least:
            assert status == "BadUserAccessDenied", f"{name} {call.method}\n{table}"
            assert f"needs the {call.least.label} role" in reason and name in reason, reason
        else:
            assert status in NOT_FOR_THE_ROLE, f"{name} {call.method}\n{table}"
    # The order let the state allow them: each call was carried out for some role, except
    # AnswerPrompt (press-fit asks nothing).
    done = {call.method for _, call, status, _ in answers if status == "Good"}
    assert methods - done == {"AnswerPrompt"}, table
    # Every call is on record with its user (a command row, or a refused one).
    on_record = recorded(journal_rows(child.journal))
    expected = Counter((name, call.recorded_as) for call in CALLS for name in USERS)
    missing = expected - on_record
    assert not missing, f"not on record: {sorted(missing)}\nrecorded: {sorted(on_record)}"


# -- the service with users and certificates, on loopback ----------------------------------------


@dataclass(frozen=True)
class Secured:
    """The service with users and certificates, the trusted client's and the stranger's
    certificate directories, and the server's certificate (what clients encrypt to)."""

    child: ServiceChild
    trusted: CertDir
    stranger: CertDir
    server: CertDir


def cellctl(*args: str | Path) -> None:
    """A cellctl command in-process, as an administrator types it; it must succeed."""
    code = cellctl_run([str(a) for a in args])
    assert code == 0, f"cellctl {' '.join(map(str, args))} exited {code}"


def make_certificates(folder: Path, host: str) -> tuple[CertDir, CertDir, CertDir]:
    """With the cellctl certs commands: the server's certificate for `host`, client alice's
    (trusted by the server) and client bob's (not): their three directories."""
    server, alice, bob = CertDir(folder / "D"), CertDir(folder / "C"), CertDir(folder / "S")
    cellctl("certs", "init", "--dir", server.path, "--host", host)
    cellctl("certs", "client", "alice", "--dir", alice.path)
    cellctl("certs", "client", "bob", "--dir", bob.path)
    cellctl("certs", "trust", alice.client_cert, "--dir", server.path)
    return server, alice, bob


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """One service for the login and certificate tests: users file and certificates, on
    127.0.0.1 (it offers no security, and SignAndEncrypt)."""
    folder = tmp_path_factory.mktemp("secured")
    server, alice, bob = make_certificates(folder / "certs", "127.0.0.1")
    users = write_users(folder / "users.yaml")
    args = ("--users", str(users), "--certs", str(server.path))
    with service_in_child(folder / "served", *args) as child:
        yield Secured(child, alice, bob, server)
        # After the refusals it still stops as it should.
        assert child.stop() == 0, child.err


def refusals(journal: Path, what: str, who: str) -> list[str]:
    """The reasons of the refused rows of `what` (login, certificate) naming `who`, in order."""
    return [
        str(body["reason"])
        for row in journal_rows(journal)
        if row.kind == "refused"
        and (body := row.data()).get("command") == what
        and body.get("operator") == who
    ]


async def on_record(journal: Path, what: str, who: str, count: int) -> list[str]:
    """Wait until `count` refusals of `what` naming `who` are on record; their reasons."""
    await asyncio.to_thread(
        wait_until,
        lambda: len(refusals(journal, what, who)) >= count,
        TIMEOUT,
        f"{count} refused {what} rows naming {who}",
    )
    return refusals(journal, what, who)


async def secure_client(url: str, certdir: CertDir, server: CertDir) -> Client:
    """A plain asyncua client with `certdir`'s certificate over Basic256Sha256 SignAndEncrypt,
    logged in as the viewer (not connected yet)."""
    client = Client(url, timeout=TIMEOUT)
    # The application URI the certificate was issued for (the server checks that they match).
    client.application_uri = certificate_uri(read_certificate(certdir.client_cert)) or ""
    await client.set_security(
        SecurityPolicyBasic256Sha256,
        str(certdir.client_cert),
        str(certdir.client_key),
        server_certificate=str(server.server_cert),
        mode=ua.MessageSecurityMode.SignAndEncrypt,
    )
    client.set_user("vera")
    client.set_password(password("vera"))
    return client


# -- 2: logins ----------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_wrong_password_is_refused_and_recorded_and_guessing_is_locked_out(
    secured: Secured,
) -> None:
    url, journal = secured.child.url, secured.child.journal
    with pytest.raises(ua.uaerrors.BadUserAccessDenied):
        await connect(url, GUESSED, "not-the-password")
    assert await on_record(journal, "login", GUESSED, 1) == [WRONG_LOGIN]
    # Guessing on: LOCK_AFTER failures in a row lock the name out (1 s, doubling), and a login
    # while locked is refused unheard. Each lockout that ends before the next guess arrives
    # (a slow machine) makes the next one twice as long: a few more guesses always meet one.
    for guesses in range(2, LOCK_AFTER + 6):
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await connect(url, GUESSED, f"guess-{guesses}")
        reasons = await on_record(journal, "login", GUESSED, guesses)
        if reasons[-1].startswith("too many failed logins"):
            break
    assert reasons[:LOCK_AFTER] == [WRONG_LOGIN] * LOCK_AFTER, reasons
    assert reasons[-1].startswith(f"too many failed logins for user {GUESSED!r}"), reasons
    # Only that name is locked: the others log in.
    client = await connect(url, "otto")
    await client.disconnect()


# -- 3: certificates ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_trusted_certificate_reads_over_sign_and_encrypt_an_untrusted_one_is_refused(
    secured: Secured,
) -> None:
    url, journal = secured.child.url, secured.child.journal
    trusted = await secure_client(url, secured.trusted, secured.server)
    async with trusted:
        assert trusted.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        assert await (await Space.of(trusted)).read("State") in STATE_NUMBERS
    stranger = await secure_client(url, secured.stranger, secured.server)
    with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
        await stranger.connect()
    (reason,) = await on_record(journal, "certificate", "CN=cellctl client bob", 1)
    assert reason.startswith("BadCertificateUntrusted: not in the trust list"), reason
    # The service keeps serving: the trusted client, and one without security on loopback.
    again = await secure_client(url, secured.trusted, secured.server)
    async with again:
        assert await (await Space.of(again)).read("State") in STATE_NUMBERS
    plain = await connect(url, "vera")
    try:
        assert await (await Space.of(plain)).read("State") in STATE_NUMBERS
    finally:
        await plain.disconnect()


# -- 4: beyond loopback ---------------------------------------------------------------------------

#: An address beyond loopback, on the loopback link of the test's own network namespace.
PLANT_HOST = "192.0.2.1"
#: `unshare -rn sh -c NETNS ARGS...`: a user and network namespace of the child's own, its
#: loopback up and holding PLANT_HOST, then ARGS run there.
NETNS = f'ip link set lo up && ip addr add {PLANT_HOST}/32 dev lo && exec "$@"'
IN_NETNS = ("unshare", "-rn", "sh", "-c", NETNS, "sh")


@functools.cache
def _netns_problem() -> str | None:
    """Why the test cannot make its network namespace here, or None when it can."""
    try:
        done = subprocess.run(
            [*IN_NETNS, "true"], capture_output=True, text=True, timeout=START_WITHIN
        )
    except FileNotFoundError:
        return "unshare is not installed"
    if done.returncode != 0:
        return f"unshare -rn cannot make a network namespace with {PLANT_HOST}: {done.stderr}"
    return None


def test_no_security_beyond_loopback_refuses_to_start_and_with_certificates_it_starts(
    tmp_path: Path,
) -> None:
    problem = _netns_problem()
    if problem is not None:
        tool_missing("netns", problem)
    users = write_users(tmp_path / "users.yaml")
    # No certificates: no --certs, and the default folder (in the test's own) does not exist.
    with service_in_child(
        tmp_path / "bare", "--users", str(users), host=PLANT_HOST, prefix=IN_NETNS
    ) as bare:
        wait_until(lambda: bare.process.poll() is not None, START_WITHIN, "serve to refuse")
        assert bare.stop() == 1, bare.out + bare.err
    said = bare.err
    assert f"refusing to serve on {PLANT_HOST}" in said, said
    assert "Basic256Sha256 SignAndEncrypt" in said
    default = bare.folder / "data" / "cellctl" / "certs"  # XDG_DATA_HOME's, empty
    assert f"cellctl certs init --dir {default} --host {PLANT_HOST}" in said
    assert f"cellctl certs trust CLIENT-CERT --dir {default}" in said
    # On record in its log file; not in the journal, which is opened only once the whole
    # configuration is valid.
    log = Path(bare.env["CELLCTL_LOG_FILE"]).read_text()
    assert "serve refused to start" in log and f"refusing to serve on {PLANT_HOST}" in log
    assert not bare.journal.exists()
    # With its certificate, key and a trusted client it starts, SignAndEncrypt only.
    server, _, _ = make_certificates(tmp_path / "certs", PLANT_HOST)
    args = ("--users", str(users), "--certs", str(server.path))
    with service_in_child(tmp_path / "secured", *args, host=PLANT_HOST, prefix=IN_NETNS) as child:
        log_file = Path(child.env["CELLCTL_LOG_FILE"])
        listening = f"OPC UA server listening on {child.url}"

        def started() -> bool:
            logged = log_file.exists() and listening in log_file.read_text()
            return logged or child.process.poll() is not None

        wait_until(started, START_WITHIN, "serve to listen")
        if child.process.poll() is not None:
            child.stop()
            pytest.fail(f"serve ended instead of listening:\n{child.out}{child.err}")
        assert child.stop(signal.SIGTERM) == 0, child.out + child.err
    assert f"serving cell demo on {child.url}" in child.out
    assert "security: Basic256Sha256 SignAndEncrypt, 1 trusted client certificate" in child.out
