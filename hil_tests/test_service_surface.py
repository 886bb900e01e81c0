"""The OPC UA surface of `cellctl serve` on its own thread, driven by real asyncua clients on
loopback: the address space by NAMESPACE, status and tags kept current from the backend, method
calls and tag writes as requests with the session's caller, refusals as Bad statuses with a
per-session LastRefusal, never BadUnexpectedError, and a thread that stops and reports a crash.

The backend here is a small table-driven stand-in for the service's core (a collaborator of the
surface, not the code under test): it records each request and answers from `answer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pytest
import pytest_asyncio
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.attribute_ids import AttributeIds
from asyncua.ua.status_codes import StatusCodes

from cellctl.cell import Cell, load_cell
from cellctl.control.machine import Command
from cellctl.service.api import (
    METHODS,
    PACKML,
    STATUS_VARIABLES,
    TAGS,
    Accepted,
    Action,
    Caller,
    RefusalKind,
    Refused,
    Request,
    Role,
    ServiceStatus,
)
from cellctl.service.certs import CertDir
from cellctl.service.logins import LoginRefused
from cellctl.service.opcua_surface import BadEndpoint, OpcuaSurface, SurfaceStartFailed
from cellctl.service.opcua_thread import SurfaceThread
from cellctl.service.security import server_security
from cellctl.testing import wait_until
from cellctl.values import TagValue
from drivers.base import Quality
from hil_tests.service_support import Space

CELL = """\
cell: surface
devices:
  m: {driver: memory}
tags:
  m.run: {device: m, type: bool, access: rw}
  m.count: {device: m, type: int16, access: rw}
  m.speed: {device: m, type: float64, access: rw}
  m.name: {device: m, type: string}
"""
#: The users the test login knows: name -> (password, role); anonymous callers are viewers.
USERS = {"olga": ("pw-olga", Role.OPERATOR), "erik": ("pw-erik", Role.ENGINEER)}
WRONG = "wrong user name or password"
STATUS = ServiceStatus(
    cell="surface", state="Stopped", mode="Production", legal=("Reset",), security=""
)
#: A submit deadline short enough to see BadTimeout in a test.
DEADLINE = 1.0


def login(name: str | None, password: str | None, peer: str) -> Caller | LoginRefused:
    """The service's login as the surface gets it (cellctl.service.logins.Authenticator.login)."""
    if name is None:
        return Caller(None, Role.VIEWER, "opcua", peer)
    known = USERS.get(name)
    if known is None or known[0] != password:
        return LoginRefused(WRONG)
    return Caller(name, known[1], "opcua", peer)


class TableBackend:
    """The service as the surface sees it: a status, tag values, listeners, and `answer`."""

    def __init__(self, cell: Cell) -> None:
        self.cell = cell
        self.now = STATUS
        self.values: dict[str, TagValue] = {
            "m.speed": TagValue("m.speed", "m", 1.5, Quality.GOOD, time.time()),
            "m.name": TagValue("m.name", "m", None, Quality.BAD, time.time(), "lost"),
        }
        self.requests: list[tuple[Caller, Request]] = []
        self.refusals: list[tuple[str, str, str, str]] = []
        self.answer: Callable[[Request], Any] = self.accept
        self.listeners: list[tuple[Callable[..., None], Callable[..., None]]] = []
        self.on_control_loop: list[bool] = []

    @staticmethod
    def accept(request: Request) -> Accepted:
        """Accept anything, saying what it was."""
        return Accepted(f"done: {request.describe()}")

    def status(self) -> ServiceStatus:
        """The status now."""
        return self.now

    def tag_values(self) -> Mapping[str, TagValue]:
        """The latest tag values."""
        return dict(self.values)

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """Keep the listeners; returns their removal."""
        pair = (on_status, on_tags)
        self.listeners.append(pair)
        return lambda: self.listeners.remove(pair)

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """Record the request and answer it from `answer` (awaiting a coroutine answer)."""
        self.on_control_loop.append(threading.current_thread() is threading.main_thread())
        self.requests.append((caller, request))
        answer = self.answer(request)
        if asyncio.iscoroutine(answer):
            answer = await answer
        return cast(Accepted | Refused, answer)

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login or certificate."""
        self.refusals.append((what, who, peer, reason))

    def publish(self, status: ServiceStatus) -> None:
        """A new status, to every listener (as the core does on the control loop)."""
        self.now = status
        for on_status, _ in list(self.listeners):
            on_status(status)

    def publish_tags(self, values: Mapping[str, TagValue]) -> None:
        """Changed tag values, to every listener."""
        self.values.update(values)
        for _, on_tags in list(self.listeners):
            on_tags(values)


class Surface:
    """A started SurfaceThread, its backend, and the failures it reported."""

    def __init__(self, backend: TableBackend, thread: SurfaceThread, url: str) -> None:
        self.backend = backend
        self.thread = thread
        self.url = url
        self.failures: list[BaseException] = []


async def serve(tmp: Path, endpoint: str = "opc.tcp://127.0.0.1:0/cellctl") -> Surface:
    """A surface on `endpoint` (port 0: a free one) over a fresh TableBackend, started."""
    failures: list[BaseException] = []
    backend = TableBackend(load_cell(cell_file(tmp)))
    security = server_security("127.0.0.1", CertDir(tmp / "certs"))
    thread = SurfaceThread(
        backend,
        endpoint,
        security,
        login,
        failures.append,
        submit_deadline=DEADLINE,
    )
    surface = Surface(backend, thread, await thread.start())
    surface.failures = failures
    return surface


def cell_file(tmp: Path) -> Path:
    """The test cell, written once into `tmp`."""
    path = tmp / "cell.yaml"
    if not path.exists():
        path.write_text(CELL)
    return path


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def surface(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Surface]:
    """One surface for the module's tests (they reset `backend.answer`)."""
    served = await serve(tmp_path_factory.mktemp("surface"))
    yield served
    await served.thread.stop()


@pytest.fixture
def backend(surface: Surface) -> TableBackend:
    """The module surface's backend, answering `accept` and with no requests recorded yet."""
    surface.backend.answer = TableBackend.accept
    surface.backend.requests.clear()
    return surface.backend


async def connect(url: str, user: str | None = None) -> Client:
    """A connected asyncua client, logged in as `user` (its password from USERS) or anonymous."""
    client = Client(url, timeout=5)
    if user is not None:
        client.set_user(user)
        client.set_password(USERS[user][0])
    await client.connect()
    return client


async def refused_with(call: Any) -> int:
    """The status code a call or write was refused with (the asyncua client raises it)."""
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await call
    return int(refused.value.code)


# -- the address space -------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_browse_finds_packml_and_tags_by_namespace(surface: Surface) -> None:
    client = await connect(surface.url)
    try:
        space = await Space.of(client)
        objects = await client.nodes.objects.get_children()
        children = {n.Name: n for n in [await c.read_browse_name() for c in objects]}
        assert children[PACKML].NamespaceIndex == children[TAGS].NamespaceIndex == space.idx
        in_packml = {
            (await c.read_browse_name()).Name for c in await space.node(PACKML).get_children()
        }
        assert set(STATUS_VARIABLES) | set(METHODS) <= in_packml
        in_tags = {(await c.read_browse_name()).Name for c in await space.node(TAGS).get_children()}
        assert in_tags == {"m.run", "m.count", "m.speed", "m.name"}
        # Each variable has its declared type: tags their cell type, status variables theirs.
        types = {
            "Tags.m.count": ua.VariantType.Int16,
            "Tags.m.speed": ua.VariantType.Double,
            "PackML.StateCurrent": ua.VariantType.Int32,
            "PackML.Produced": ua.VariantType.Int64,
            "PackML.LegalCommands": ua.VariantType.String,
        }
        for name, vtype in types.items():
            assert await space.node(name).read_data_type() == ua.NodeId(vtype.value), name
        assert await space.packml("LegalCommands").read_value_rank() == 1
        assert await space.packml("State").read_value() == "Stopped"
        assert await space.packml("StateCurrent").read_value() == 2
        # A tag's value, quality and time come from its TagValue; no reading yet: Bad.
        speed = await space.tag("m.speed").read_data_value()
        assert speed.Value is not None and speed.Value.Value == 1.5
        assert speed.StatusCode is not None and speed.StatusCode.is_good()
        assert speed.SourceTimestamp is not None
        name = await space.tag("m.name").read_data_value(raise_on_bad_status=False)
        assert name.StatusCode is not None and name.StatusCode.is_bad()
        waiting = await space.tag("m.count").read_data_value(raise_on_bad_status=False)
        assert waiting.StatusCode == ua.StatusCode(StatusCodes.BadWaitingForInitialData)
        # Arguments as METHODS names them: LoadRecipe(Name, Parameters[]) -> Result.
        load = await space.node(PACKML).get_child(ua.QualifiedName("LoadRecipe", space.idx))
        inputs = await (await load.get_child("0:InputArguments")).read_value()
        assert [(a.Name, a.ValueRank) for a in inputs] == [("Name", -1), ("Parameters", 1)]
        outputs = await (await load.get_child("0:OutputArguments")).read_value()
        assert [a.Name for a in outputs] == ["Result"]
    finally:
        await client.disconnect()


class Changes:
    """A subscription handler keeping every value each node took."""

    def __init__(self) -> None:
        self.seen: dict[str, list[object]] = {}

    def datachange_notification(self, node: Node, val: object, data: object) -> None:
        """asyncua's callback: keep the value."""
        self.seen.setdefault(str(node.nodeid.Identifier), []).append(val)

    def saw(self, name: str, value: object) -> bool:
        """True once the node (its NodeId string) took `value`."""
        return value in self.seen.get(name, [])


@pytest.mark.asyncio(loop_scope="module")
async def test_status_and_tags_follow_the_backend(surface: Surface, backend: TableBackend) -> None:
    client = await connect(surface.url)
    try:
        space = await Space.of(client)
        changes = Changes()
        subscription = await client.create_subscription(50, changes)
        names = ["PackML.State", "PackML.StateCurrent", "PackML.LegalCommands", "Tags.m.count"]
        await subscription.subscribe_data_change([space.node(n) for n in names])
        legal = ("Hold", "Stop", "Abort")
        backend.publish(replace(STATUS, state="Execute", legal=legal))
        count = TagValue("m.count", "m", -7, Quality.GOOD, time.time())
        backend.publish_tags({"m.count": count})
        await wait_until(lambda: changes.saw("PackML.State", "Execute"), what="State Execute")
        await wait_until(lambda: changes.saw("PackML.StateCurrent", 6), what="StateCurrent 6")
        await wait_until(lambda: changes.saw("PackML.LegalCommands", list(legal)), what="legal")
        await wait_until(lambda: changes.saw("Tags.m.count", -7), what="m.count -7")
    finally:
        backend.publish(STATUS)
        await client.disconnect()


# -- methods -----------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_method_call_reaches_submit_with_the_caller_and_request(
    surface: Surface, backend: TableBackend
) -> None:
    client = await connect(surface.url, "olga")
    try:
        space = await Space.of(client)
        result = await space.call("LoadRecipe", "press-fit", ["speed=5", "parts=3"])
        assert result == "done: load press-fit speed=5 parts=3"
        await space.call("Unhold", "skip")
    finally:
        await client.disconnect()
    (caller, load), (_, unhold) = backend.requests
    assert (caller.user, caller.role, caller.via) == ("olga", Role.OPERATOR, "opcua")
    assert caller.peer.startswith("127.0.0.1:")
    assert load == Request(Action.LOAD, name="press-fit", parameters=("speed=5", "parts=3"))
    assert unhold == Request(Action.COMMAND, command=Command.UNHOLD, choice="skip")
    assert all(backend.on_control_loop)  # submit ran on the control loop, not the server's


@pytest.mark.asyncio(loop_scope="module")
async def test_refusals_answer_their_status_and_each_session_reads_its_own_reason(
    surface: Surface, backend: TableBackend
) -> None:
    reasons = {
        "Start": Refused("Start: not in Stopped; Reset first", RefusalKind.STATE),
        "SetMode": Refused("SetMode needs the engineer role (olga: operator)", RefusalKind.ROLE),
        "AnswerPrompt": Refused("no prompt 3.1 waits for an answer", RefusalKind.INPUT),
    }

    def table(request: Request) -> Refused:
        named = {Action.MODE: "SetMode", Action.ANSWER: "AnswerPrompt"}
        return reasons[named.get(request.action, str(request.command))]

    backend.answer = table
    first, second = await connect(surface.url, "olga"), await connect(surface.url, "erik")
    try:
        one, two = await Space.of(first), await Space.of(second)
        assert await refused_with(one.call("Start")) == StatusCodes.BadInvalidState
        assert await refused_with(two.call("SetMode", "Manual")) == StatusCodes.BadUserAccessDenied
        assert await one.last_refusal() == reasons["Start"].reason
        assert await two.last_refusal() == reasons["SetMode"].reason
        assert await refused_with(one.call("AnswerPrompt", "3.1", "x")) == (
            StatusCodes.BadInvalidArgument
        )
        assert await one.last_refusal() == reasons["AnswerPrompt"].reason
        assert await two.last_refusal() == reasons["SetMode"].reason
        # A call that does not fit its method never reaches the command layer.
        before = len(backend.requests)
        assert await refused_with(two.call("SetMode")) == StatusCodes.BadArgumentsMissing
        assert await refused_with(two.call("SetMode", 3)) == StatusCodes.BadInvalidArgument
        assert "Mode must be a String" in await two.last_refusal()
        assert len(backend.requests) == before
    finally:
        await first.disconnect()
        await second.disconnect()


@pytest.mark.asyncio(loop_scope="module")
async def test_an_exception_in_submit_is_bad_internal_error_not_unexpected(
    surface: Surface, backend: TableBackend
) -> None:
    def broken(request: Request) -> Accepted:
        raise RuntimeError("the journal vanished")

    backend.answer = broken
    client = await connect(surface.url, "olga")
    try:
        space = await Space.of(client)
        assert await refused_with(space.call("Hold")) == StatusCodes.BadInternalError
        assert "the journal vanished" in await space.last_refusal()
    finally:
        await client.disconnect()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_controller_that_does_not_answer_gives_bad_timeout(
    surface: Surface, backend: TableBackend
) -> None:
    release = asyncio.Event()

    async def late() -> Accepted:
        await release.wait()
        return Accepted("late")

    backend.answer = lambda request: late()
    client = await connect(surface.url, "olga")
    try:
        space = await Space.of(client)
        assert await refused_with(space.call("Stop")) == StatusCodes.BadTimeout
        assert f"did not answer within {DEADLINE:g} s" in await space.last_refusal()
    finally:
        release.set()
        await client.disconnect()


# -- tags --------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_tag_write_is_a_force_request(surface: Surface, backend: TableBackend) -> None:
    engineer, operator = await connect(surface.url, "erik"), await connect(surface.url, "olga")
    try:
        space, other = await Space.of(engineer), await Space.of(operator)
        await space.tag("m.speed").write_value(ua.Variant(2.5, ua.VariantType.Double))
        await space.tag("m.run").write_value(ua.Variant(True, ua.VariantType.Boolean))
        (caller, speed), (_, run) = backend.requests
        assert caller.user == "erik" and caller.role is Role.ENGINEER
        assert speed == Request(Action.FORCE, name="m.speed", value="2.5")
        assert run == Request(Action.FORCE, name="m.run", value="true")
        # The command layer's refusal is the write's status, and the session's LastRefusal.
        backend.answer = lambda r: Refused("force needs the engineer role", RefusalKind.ROLE)
        write = other.tag("m.count").write_value(ua.Variant(3, ua.VariantType.Int16))
        assert await refused_with(write) == StatusCodes.BadUserAccessDenied
        assert await other.last_refusal() == "force needs the engineer role"
        # A value of another type is refused before any request, naming the node's type.
        requests = len(backend.requests)
        write = space.tag("m.speed").write_value(ua.Variant(3, ua.VariantType.Int32))
        assert await refused_with(write) == StatusCodes.BadTypeMismatch
        assert "Double" in await space.last_refusal()
        # Read-only nodes stay asyncua's: a status variable, a read-only tag.
        write = space.packml("State").write_value(ua.Variant("Execute", ua.VariantType.String))
        assert await refused_with(write) == StatusCodes.BadUserAccessDenied
        write = space.tag("m.name").write_value(ua.Variant("x", ua.VariantType.String))
        assert await refused_with(write) == StatusCodes.BadUserAccessDenied
        assert len(backend.requests) == requests

        # What a browsing client shows: writable for a role that may force, not for others.
        def writable(level: int) -> bool:
            return bool(level & ua.AccessLevel.CurrentWrite.mask)

        user_level = AttributeIds.UserAccessLevel
        mine = (await space.tag("m.speed").read_attribute(user_level)).Value
        theirs = (await other.tag("m.speed").read_attribute(user_level)).Value
        assert mine is not None and writable(mine.Value)
        assert theirs is not None and not writable(theirs.Value)
    finally:
        await engineer.disconnect()
        await operator.disconnect()


# -- logins ------------------------------------------------------------------------------------


@pytest.mark.asyncio(loop_scope="module")
async def test_a_refused_login_is_recorded_with_its_peer(surface: Surface) -> None:
    client = Client(surface.url, timeout=5)
    client.set_user("olga")
    client.set_password("guess")
    with pytest.raises(ua.UaStatusCodeError):
        await client.connect()
    await wait_until(lambda: bool(surface.backend.refusals), what="the refusal on record")
    what, who, peer, reason = surface.backend.refusals[-1]
    assert (what, who, reason) == ("login", "olga", WRONG)
    assert peer.startswith("127.0.0.1:")


# -- the thread --------------------------------------------------------------------------------


def surface_threads() -> int:
    """Threads of OPC UA surfaces alive now."""
    return sum(t.name == "cellctl-opcua" and t.is_alive() for t in threading.enumerate())


@pytest.mark.asyncio(loop_scope="module")
async def test_the_thread_stops_cleanly_and_a_crash_is_reported(tmp_path: Path) -> None:
    before = surface_threads()
    served = await serve(tmp_path)
    assert surface_threads() == before + 1
    await served.thread.stop()
    assert surface_threads() == before
    with pytest.raises(OSError):  # nobody listens there any more
        await connect(served.url)
    assert served.failures == []
    # A port in use: the start fails, naming the endpoint, and leaves no thread behind.
    holder = await serve(tmp_path)
    port = int(holder.url.rsplit(":", 1)[1].split("/")[0])
    taken = f"opc.tcp://127.0.0.1:{port}/cellctl"
    with pytest.raises(SurfaceStartFailed, match=re.escape(taken)):
        await serve(tmp_path, taken)
    await holder.thread.stop()
    with pytest.raises(BadEndpoint, match=re.escape("give an opc.tcp://HOST:PORT URL")):
        await serve(tmp_path, "opc.tcp://127.0.0.1:http/x")
    assert surface_threads() == before
    # A status the surface cannot show kills its loop: on_failure hears of it.
    crashing = await serve(tmp_path)
    crashing.backend.publish(cast(ServiceStatus, object()))
    await wait_until(lambda: bool(crashing.failures), what="on_failure")
    assert isinstance(crashing.failures[0], AttributeError)
    await crashing.thread.stop()
    assert surface_threads() == before


@pytest.mark.asyncio(loop_scope="module")
async def test_stop_leaves_no_session_behind(tmp_path: Path) -> None:
    """A client with a subscription keeps its session across a lost connection (for it to
    come back); the surface's stop closes it, leaving no timeout task running."""
    backend = TableBackend(load_cell(cell_file(tmp_path)))
    security = server_security("127.0.0.1", CertDir(tmp_path / "certs"))
    viewer = Caller(None, Role.VIEWER)
    surface = OpcuaSurface(
        backend, "opc.tcp://127.0.0.1:0", security, lambda *login: viewer, backend.cell
    )
    url = await surface.start(STATUS, {})
    client = await connect(url)

    def session_tasks() -> list[asyncio.Task[Any]]:
        return [
            t
            for t in asyncio.all_tasks()
            if getattr(t.get_coro(), "__qualname__", "") == "InternalSession._timeout_loop"
        ]

    try:
        subscription = await client.create_subscription(100, Changes())
        await subscription.subscribe_data_change([(await Space.of(client)).packml("State")])
        assert session_tasks()
        await surface.stop()
        assert session_tasks() == []
    finally:
        with contextlib.suppress(Exception):
            await client.disconnect()
