"""Figures 12-13: `cellctl serve` over OPC UA with 0 and 50 idle sessions: the `status` round
trip (every PackML status variable in one Read) and a command's latency (Unsuspend in Stopped: a
call the service refuses for the state, so it changes nothing), beside a bare asyncua server with
the same variables and a trivial method answering the same Bad status.

Both servers run in child processes of their own: ours is `cellctl serve` on the demo cell's
simulators (`python -m cellctl serve CELL --sim`, no users file, no certificates: loopback
development mode), press-fit loaded so that the refusal is the state's; the reference is
`python -m bench.service raw`: `Server()`, `init()`, an object with the same variables (same
types, same NodeId strings) and the same number of tag variables, one method that answers
BadInvalidState. The client is the same plain asyncua Client in the bench process for both
(`read_attributes` of every variable; `call_method`, which raises the Bad status), so the figures
are the servers' round trips. Idle sessions are asyncua Clients on the same loop, connected and
making no request (their liveness probe once a minute). Ours and the reference alternate, each
block of samples after a warm-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.childproc import ROOT, Child, running, say, stdin_closed
from bench.figure import Figure, percentile
from bench.state import STATE_VARIABLE, journal_where

#: The demo cell ours serves, and the recipe loaded before the refused command.
DEMO_CELL = ROOT / "recipes" / "demo" / "cell.yaml"
RECIPE = "press-fit"
#: The command measured: refused in Stopped (BadInvalidState), so it changes nothing.
COMMAND = "Unsuspend"
#: Idle sessions held while measuring.
IDLE_COUNTS = (0, 50)
#: Samples per block (each side, each operation, each idle count) and blocks per side.
SAMPLES = {True: 200, False: 1_000}
WARMUP = 20
BLOCKS = 2
#: Seconds a server has to listen; seconds a request may take before the bench gives up.
START_WITHIN = 60.0
REQUEST_TIMEOUT = 10.0
#: An idle session's liveness probe (asyncua's client reads the server's state every
#: `watchdog_intervall`, 1 s by default) and the session timeout it asks for.
IDLE_PROBE_S = 60.0
IDLE_SESSION_TIMEOUT_MS = 120_000


# -- the servers -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _no_users_or_certs() -> Iterator[None]:
    """For the block: the users file and certificate folder of `cellctl serve` point into the
    bench's own folder, where there are none (loopback development mode: every client has
    every role), whatever the user has configured."""
    folder = Path(os.environ.get(STATE_VARIABLE) or ROOT)
    names = {
        "CELLCTL_USERS": str(folder / "no-users.yaml"),
        "CELLCTL_CERTS": str(folder / "no-certs"),
    }
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(names)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.asynccontextmanager
async def _ours(folder: Path) -> AsyncIterator[str]:
    """`cellctl serve` on the demo cell's simulators in a child, listening: its URL. SIGTERM at
    the end (it stops, confirms the safe state and exits)."""
    url = f"opc.tcp://127.0.0.1:{_free_port()}"
    args = ["serve", str(DEMO_CELL), "--sim", "--endpoint", url]
    with _no_users_or_certs():
        async with running("cellctl", args, folder / "serve.err") as child:
            said = await child.line(START_WITHIN)
            if not said.startswith("serving cell"):
                raise RuntimeError(f"cellctl serve said {said!r} where 'serving cell' was due")
            try:
                yield url
            finally:
                await _terminate(child)


async def _terminate(child: Child) -> None:
    """SIGTERM, and wait for the end (killed after START_WITHIN)."""
    with contextlib.suppress(ProcessLookupError):
        child.process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(START_WITHIN):
            await child.process.wait()
    except TimeoutError:
        child.kill()
        raise RuntimeError("cellctl serve did not end on SIGTERM") from None


@contextlib.asynccontextmanager
async def _raw(folder: Path) -> AsyncIterator[str]:
    """The bare asyncua server in a child, listening: its URL."""
    async with running("bench.service", ["raw"], folder / "raw.err") as child:
        said = await child.line(START_WITHIN)
        if not said.startswith("ENDPOINT "):
            raise RuntimeError(f"bench.service raw said {said!r}")
        try:
            yield said.removeprefix("ENDPOINT ")
        finally:
            await child.finish()


async def raw_server() -> None:
    """The reference server: asyncua's Server with the service's status variables (types and
    NodeId strings from cellctl.service.api), as many tag variables as the demo cell has tags,
    and one method answering BadInvalidState; serves until stdin closes."""
    from asyncua import ua
    from asyncua.server.server import Server
    from asyncua.ua.status_codes import StatusCodes

    from cellctl.cell import load_cell
    from cellctl.service.api import NAMESPACE, PACKML, STATUS_VARIABLES, TAGS
    from cellctl.service.opcua_nodes import variable_type
    from drivers.opcua_types import ns0_node, status_code

    url = f"opc.tcp://127.0.0.1:{_free_port()}"
    server = Server()
    await server.init()
    server.set_endpoint(url)
    idx = await server.register_namespace(NAMESPACE)
    packml = await server.nodes.objects.add_object(
        ua.NodeId(ua.String(PACKML), ua.Int16(idx)), ua.QualifiedName(PACKML, idx)
    )
    for name in STATUS_VARIABLES:
        vtype, array = variable_type(name)
        empty: Any = [] if array else ("" if vtype == ua.VariantType.String else 0)
        await packml.add_variable(
            ua.NodeId(ua.String(f"{PACKML}.{name}"), ua.Int16(idx)),
            ua.QualifiedName(name, idx),
            ua.Variant(empty, vtype),
        )
    tags = await server.nodes.objects.add_folder(
        ua.NodeId(ua.String(TAGS), ua.Int16(idx)), ua.QualifiedName(TAGS, idx)
    )
    for tag in load_cell(DEMO_CELL).tags:
        await tags.add_variable(
            ua.NodeId(ua.String(f"{TAGS}.{tag}"), ua.Int16(idx)), ua.QualifiedName(tag, idx), 0
        )

    async def refuse(parent: ua.NodeId) -> ua.StatusCode:
        return status_code(StatusCodes.BadInvalidState)

    await packml.add_method(
        ua.NodeId(ua.String(f"{PACKML}.{COMMAND}"), ua.Int16(idx)),
        ua.QualifiedName(COMMAND, idx),
        refuse,
        [],
        [ua.Argument(Name="Result", DataType=ns0_node(ua.VariantType.String.value), ValueRank=-1)],
    )
    async with server:
        say(f"ENDPOINT {url}")
        await stdin_closed()


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Timings:
    """Round trips of one operation on one side with one idle count, in seconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        """The median, in ms."""
        return percentile(self.samples, 50) * 1e3

    @property
    def p99(self) -> float:
        """The 99th percentile, in ms."""
        return percentile(self.samples, 99) * 1e3


class Side:
    """One server as the measuring client sees it: its status read and its refused command."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: Any = None
        self.idle: list[Any] = []
        self._nodes: list[Any] = []
        self._packml: Any = None
        self._method: Any = None

    async def open(self) -> None:
        """Connect the measuring client and find the variables and the method."""
        from asyncua import ua
        from asyncua.client.client import Client

        from cellctl.service.api import NAMESPACE, PACKML, STATUS_VARIABLES

        self.client = Client(self.url, timeout=REQUEST_TIMEOUT)
        self.client.session_timeout = IDLE_SESSION_TIMEOUT_MS  # within both servers' limits
        await self.client.connect()
        idx = await self.client.get_namespace_index(NAMESPACE)

        def node(name: str) -> Any:
            return self.client.get_node(ua.NodeId(ua.String(name), ua.Int16(idx)))

        self._nodes = [node(f"{PACKML}.{name}") for name in STATUS_VARIABLES]
        self._packml = node(PACKML)
        self._method = ua.QualifiedName(COMMAND, idx)

    async def status(self) -> None:
        """Every status variable in one Read."""
        await self.client.read_attributes(self._nodes)

    async def command(self) -> None:
        """The refused command: asyncua raises its BadInvalidState."""
        from asyncua.ua.uaerrors import BadInvalidState

        try:
            await self._packml.call_method(self._method)
        except BadInvalidState:
            return
        raise RuntimeError(f"{COMMAND} was not refused with BadInvalidState")

    async def hold_idle(self, count: int) -> None:
        """Hold `count` idle sessions (opening or closing some)."""
        from asyncua.client.client import Client

        while len(self.idle) > count:
            await self.idle.pop().disconnect()
        while len(self.idle) < count:
            client = Client(self.url, timeout=REQUEST_TIMEOUT, watchdog_intervall=IDLE_PROBE_S)
            client.session_timeout = IDLE_SESSION_TIMEOUT_MS
            await client.connect()
            self.idle.append(client)

    async def close(self) -> None:
        """Close every session."""
        await self.hold_idle(0)
        if self.client is not None:
            await self.client.disconnect()


async def _timed(operation: Callable[[], Coroutine[Any, Any, None]], count: int) -> list[float]:
    """`count` round trips of `operation` after a warm-up, one at a time: each one's seconds."""
    for _ in range(WARMUP):
        await operation()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await operation()
        samples.append(time.perf_counter() - start)
    return samples


async def _load(url: str) -> None:
    """Load the recipe on our service (Stopped, loaded: Unsuspend is refused for the state)."""
    from cellctl.service.client import RemoteCell

    async with RemoteCell(url, timeout=REQUEST_TIMEOUT) as remote:
        await remote.call("LoadRecipe", RECIPE, [])


Results = dict[tuple[str, str, int], list[float]]


async def _measure(quick: bool, folder: Path) -> Results:
    """Every sample: (side, operation, idle sessions) -> seconds."""
    count = SAMPLES[quick] // BLOCKS
    results: Results = {}
    async with _ours(folder) as ours_url, _raw(folder) as raw_url:
        await _load(ours_url)
        sides = {"ours": Side(ours_url), "raw": Side(raw_url)}
        try:
            for side in sides.values():
                await side.open()
            for idle in IDLE_COUNTS:
                for side in sides.values():
                    await side.hold_idle(idle)
                for _ in range(BLOCKS):
                    for name, side in sides.items():
                        for operation in ("status", "command"):
                            samples = await _timed(getattr(side, operation), count)
                            results.setdefault((name, operation, idle), []).extend(samples)
        finally:
            for side in sides.values():
                await side.close()
    return results


def _figures(results: Results, quick: bool) -> list[Figure]:
    """Figures 12 (status) and 13 (command), one per idle count."""
    names = {
        "status": (12, "`status` round trip (every PackML variable)", "Read of the same nodes"),
        "command": (13, f"command latency ({COMMAND} refused)", "trivial method, same status"),
    }
    figures = []
    for operation, (number, title, what) in names.items():
        for idle in IDLE_COUNTS:
            ours = Timings(results[("ours", operation, idle)])
            raw = Timings(results[("raw", operation, idle)])
            detail = (
                f"median / p99: ours {ours.median:.2f} / {ours.p99:.2f} ms, raw asyncua "
                f"{raw.median:.2f} / {raw.p99:.2f} ms; {len(ours.samples)} round trips a side in "
                f"{BLOCKS} alternating blocks, {idle} idle sessions on each server; `cellctl "
                f"serve` on the demo cell's simulators vs a bare asyncua Server ({what})"
            )
            if operation == "command":
                detail += f"; ours records each refusal ({journal_where()})"
            figures.append(
                Figure(
                    number,
                    f"{title}, {idle} idle sessions",
                    ours.median,
                    "ms",
                    raw.median,
                    "raw asyncua server",
                    raw.median / ours.median if ours.median else None,
                    "context",
                    None,
                    detail,
                    {
                        "idle": idle,
                        "p50_ms": ours.median,
                        "p99_ms": ours.p99,
                        "raw_p50_ms": raw.median,
                        "raw_p99_ms": raw.p99,
                        "quick": quick,
                    },
                )
            )
    return figures


def measure(quick: bool) -> list[Figure]:
    """Figures 12-13."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        results = asyncio.run(_measure(quick, Path(tmp)))
    return _figures(results, quick)


def main(argv: list[str]) -> int:
    """`python -m bench.service raw`: the reference server (see raw_server)."""
    if argv != ["raw"]:
        print("usage: python -m bench.service raw", file=sys.stderr)
        return 1
    asyncio.run(raw_server())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
