"""Figure 14: event to page. How long a change of the controller's state takes to reach the open
pages of the web view (`cellctl serve --http`): from the moment a request for the change is sent
to the arrival of the `status` event that shows it in every reader of /api/events, with 1 and 10
open pages; beside a bare Starlette app on uvicorn that pushes the same JSON over server-sent
events from another thread's loop.

Ours is `cellctl serve` on the demo cell's simulators in a child process (no users file, no
certificates: loopback development mode, every visitor an admin), `--http` on a free port,
press-fit loaded with 500 parts and running. Each change is a PackML command through the web
view's command layer (POST /api/request, the session's CSRF token): Hold (timed to the first
`status` event showing Holding or Held), then Unhold once every page shows Held (timed to
Unholding or Execute); the batch runs on between the two, its tags streaming to every page.
So the time counts the request's way to the control loop (the figure is an upper bound of
the event's own way to the page), the command layer, the status built and handed to the web
loop, and the event written to every stream and read.

The reference is `python -m bench.web raw REFERENCE_JSON`: one Starlette app on uvicorn on a
thread with its own loop; its POST /api/request carries the command to the process's main loop (the
"control loop", through `run_coroutine_threadsafe`, as the service's bridge does), which makes
the status (the status and batch detail JSON captured from ours, its state changed, then the
end state one loop turn later), and hands it back with `call_soon_threadsafe` to every open
stream's queue on the web loop. The same client in the bench process measures both (the same
paths): one HTTP connection for the requests and N raw SSE readers (asyncio streams, chunked
transfer decoded by hand, each event timed when its chunk is read). Ours and the reference
alternate in blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.childproc import running, say, stdin_closed
from bench.figure import Figure, percentile
from bench.service import DEMO_CELL, START_WITHIN, _free_port, _no_users_or_certs, _terminate
from bench.state import journal_where

#: The recipe run while measuring, and its parameters (a batch that outlasts the bench).
RECIPE = "press-fit"
PARAMETERS = ["parts=500"]
#: Open pages (event streams) while measuring.
PAGES = (1, 10)
#: State changes timed per side and page count (half Hold, half Unhold), in BLOCKS blocks.
CHANGES = {True: 60, False: 300}
BLOCKS = 2
#: Changes made before each block's samples.
WARMUP = 4
#: The issue's goal: every event on every open page within this many seconds.
GOAL_S = 0.200
#: Seconds one change may take to reach every page, or a request to be answered, before the
#: bench gives up.
CHANGE_WITHIN = 30.0
#: Seconds the batch runs on after reaching Execute, before the next Hold: at random within
#: this range, so that changes fall at any phase of the polls and the tag streams.
EXECUTE_PAUSE = (0.02, 0.12)
#: The states the controller leaves by itself.
TRANSIENT = frozenset(
    {"Resetting", "Starting", "Holding", "Unholding", "Suspending", "Unsuspending"}
    | {"Stopping", "Aborting", "Clearing", "Completing"}
)
#: What brings ours from a stable state on toward Execute.
TOWARD_EXECUTE = {
    "Stopped": "Reset",
    "Complete": "Reset",
    "Aborted": "Clear",
    "Idle": "Start",
    "Held": "Unhold",
    "Suspended": "Unsuspend",
}
#: The changes timed: the command, the states that show it, the state to wait for after.
HOLD = ("Hold", frozenset({"Holding", "Held"}), "Held")
UNHOLD = ("Unhold", frozenset({"Unholding", "Execute"}), "Execute")


# -- a plain HTTP/1.1 client over asyncio streams ---------------------------------------------


class Http:
    """One keep-alive HTTP/1.1 connection: a request at a time, answers with a Content-Length."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, host: str, port: int) -> Http:
        """Connect to host:port."""
        reader, writer = await asyncio.open_connection(host, port)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, f"{host}:{port}")

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> None:
        """Write one request (headers: beyond Host and Content-Length)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    async def head(self) -> tuple[int, dict[str, list[str]]]:
        """The answer's status and headers (names in lower case)."""
        line = await self.reader.readline()
        if not line:
            raise ConnectionError(f"{self.host} closed the connection")
        status = int(line.split()[1])
        headers: dict[str, list[str]] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode().partition(":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        return status, headers

    async def request(
        self, method: str, path: str, headers: dict[str, str], body: bytes = b""
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One request and its whole answer."""
        self.send(method, path, headers, body)
        async with asyncio.timeout(CHANGE_WITHIN):
            status, answer = await self.head()
            length = int(answer.get("content-length", ["0"])[0])
            return status, answer, await self.reader.readexactly(length)

    async def close(self) -> None:
        """Close the connection."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Page:
    """One open page's event stream, read by a task: the state its last `status` showed, and
    when the state awaited arrived."""

    http: Http
    state: str = ""
    status: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] | None = None
    expect: Collection[str] = ()
    arrived: float | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def read(self) -> None:
        """Read the stream until it ends: chunked transfer, events split on blank lines."""
        reader = self.http.reader
        buffer = b""
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            chunk = await reader.readexactly(size + 2)
            now = time.perf_counter()
            if size == 0:
                return
            buffer += chunk[:-2]
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                self._event(event, now)

    def _event(self, event: bytes, now: float) -> None:
        """One event read at `now` (tag batches are not parsed: a page would, the bench
        need not)."""
        name, _, rest = event.partition(b"\n")
        if name == b"event: status":
            self.status = json.loads(rest.removeprefix(b"data: "))
        elif name == b"event: detail":
            self.detail = json.loads(rest.removeprefix(b"data: "))
            return
        elif name == b"event: state":
            first = json.loads(rest.removeprefix(b"data: "))
            self.status, self.detail = first["status"], first["detail"]
        else:
            return
        self.state = self.status["state"]
        if self.arrived is None and self.state in self.expect:
            self.arrived = now
        self.changed.set()


class Side:
    """One server as the bench drives it: `command` makes a change, pages read its streams."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        host, port = url.removeprefix("http://").rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.headers: dict[str, str] = {}
        self.pages: list[Page] = []
        self.http: Http | None = None
        #: Seconds from each timed request's send to its answer (context for the figure).
        self.answers: list[float] = []

    async def open(self) -> None:
        """The request connection, and a session (cookie and CSRF token) where there is one."""
        self.http = await Http.open(self.host, self.port)
        if self.name != "ours":
            return
        status, headers, body = await self.http.request("GET", "/api/state", {})
        if status != 200:
            raise RuntimeError(f"GET /api/state answered {status}: {body[:200]!r}")
        cookie = next(c for c in headers["set-cookie"] if c.startswith("cellctl_session="))
        self.headers = {
            "Cookie": cookie.split(";", 1)[0],
            "X-CSRF-Token": json.loads(body)["me"]["csrf"],
            "Content-Type": "application/json",
        }

    async def hold_pages(self, count: int) -> None:
        """Hold `count` open event streams, each showing the state."""
        while len(self.pages) > count:
            page = self.pages.pop()
            if page.task is not None:
                page.task.cancel()
            await page.http.close()
        while len(self.pages) < count:
            http = await Http.open(self.host, self.port)
            cookie = {"Cookie": self.headers["Cookie"]} if "Cookie" in self.headers else {}
            http.send("GET", "/api/events", {"Accept": "text/event-stream", **cookie})
            status, _ = await http.head()
            if status != 200:
                raise RuntimeError(f"{self.name}: GET /api/events answered {status}")
            page = Page(http)
            page.task = asyncio.create_task(_alive(page.read(), self.name))
            self.pages.append(page)
        if self.pages:
            await self.stable()

    async def until(self, shown: Callable[[Page], bool]) -> None:
        """Wait until `shown(page)` holds for every page (a reader's change wakes the test)."""
        async with asyncio.timeout(CHANGE_WITHIN):
            while not all(shown(page) for page in self.pages):
                waits = [asyncio.create_task(page.changed.wait()) for page in self.pages]
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for wait in waits:
                        wait.cancel()
                for page in self.pages:
                    page.changed.clear()

    async def stable(self) -> str:
        """Wait until every page shows the same state, not one that passes by itself
        (Resetting, Holding, ...): that state."""
        first = self.pages[0]
        await self.until(
            lambda page: page.state not in (*TRANSIENT, "") and page.state == first.state
        )
        return first.state

    async def ready(self) -> Http:
        """The request connection, opened again if the server closed it (uvicorn closes one
        idle for 5 s: while the other side is measured)."""
        if self.http is None or self.http.reader.at_eof():
            if self.http is not None:
                await self.http.close()
            self.http = await Http.open(self.host, self.port)
        return self.http

    async def ask(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """One request: its status code and JSON answer."""
        await self.ready()
        assert self.http is not None
        status, _, answer = await self.http.request(
            "POST", "/api/request", self.headers, json.dumps(body).encode()
        )
        return status, json.loads(answer or b"{}")

    async def change(self, command: str, shows: Collection[str], then: str) -> list[float]:
        """Send `command`, time it to every page's first status that `shows` it (the seconds,
        one per page), and wait until every page shows `then`."""
        for page in self.pages:
            page.expect, page.arrived = shows, None
        wanted = {"action": "command", "command": command}
        await self.ready()
        sent = time.perf_counter()
        status, answer = await self.ask(wanted)
        if status == 409 and command == "Unhold":  # the safe state undid a step's writes:
            sent = time.perf_counter()  # the refusal changed nothing; this one is timed
            status, answer = await self.ask({**wanted, "choice": "retry"})
        if status != 200:
            raise RuntimeError(f"{self.name}: {command} answered {status}: {answer}")
        self.answers.append(time.perf_counter() - sent)
        await self.until(lambda page: page.arrived is not None)
        times = [page.arrived - sent for page in self.pages if page.arrived is not None]
        for page in self.pages:
            page.expect = ()
        await self.until(lambda page: page.state == then)
        return times

    async def close(self) -> None:
        """Close every connection."""
        await self.hold_pages(0)
        if self.http is not None:
            await self.http.close()


async def _alive(work: Awaitable[None], side: str) -> None:
    """A page's reader: an error or the stream's end is said (the waits then time out)."""
    try:
        await work
        print(f"{side}: an event stream ended", file=sys.stderr)
    except (asyncio.IncompleteReadError, ConnectionError, ValueError) as error:
        print(f"{side}: an event stream failed: {error!r}", file=sys.stderr)


# -- the servers -------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _ours(folder: Path) -> AsyncIterator[str]:
    """`cellctl serve --http` on the demo cell's simulators in a child, listening: the web
    view's URL. SIGTERM at the end (it stops the batch, confirms the safe state and exits)."""
    endpoint = f"opc.tcp://127.0.0.1:{_free_port()}"
    http = f"127.0.0.1:{_free_port()}"
    args = ["serve", str(DEMO_CELL), "--sim", "--endpoint", endpoint, "--http", http]
    with _no_users_or_certs():
        async with running("cellctl", args, folder / "serve.err") as child:
            async with asyncio.timeout(START_WITHIN):
                while not (said := await child.line(START_WITHIN)).startswith("web view on "):
                    pass
            try:
                yield said.removeprefix("web view on ")
            finally:
                await _terminate(child)


@contextlib.asynccontextmanager
async def _raw(folder: Path, reference: Path) -> AsyncIterator[str]:
    """The bare Starlette app in a child, listening: its URL."""
    async with running("bench.web", ["raw", str(reference)], folder / "raw.err") as child:
        said = await child.line(START_WITHIN)
        if not said.startswith("URL "):
            raise RuntimeError(f"bench.web raw said {said!r}")
        try:
            yield said.removeprefix("URL ")
        finally:
            await child.finish()


def _encode(name: str, data: Any) -> bytes:
    """One server-sent event, as the web view writes it."""
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def raw_server(captured: dict[str, Any]) -> None:
    """The reference: a Starlette app on uvicorn on a thread and loop of its own; this loop
    (the "control loop") makes each change and hands the status and detail JSON (`captured`
    from ours) to every open stream; serves until stdin closes."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    control = asyncio.get_running_loop()
    status: dict[str, Any] = dict(captured["status"], state="Execute")
    detail = captured["detail"]
    streams: set[asyncio.Queue[bytes]] = set()  # used on the web loop only
    web: list[asyncio.AbstractEventLoop] = []
    states = {"Hold": ("Holding", "Held"), "Unhold": ("Unholding", "Execute")}

    def publish(event: bytes) -> None:
        """On the web loop: the event to every open stream."""
        for queue in streams:
            queue.put_nowait(event)

    def push(state: str) -> None:
        """On the control loop: a new status, handed to the web loop."""
        nonlocal status
        status = dict(status, state=state, seq=status["seq"] + 1)
        event = _encode("status", status) + _encode("detail", detail)
        web[0].call_soon_threadsafe(publish, event)

    async def command(name: str) -> str:
        """On the control loop: the change, its end state a loop turn later."""
        now, then = states[name]
        push(now)
        control.call_soon(push, then)
        return now

    async def request(http: Request) -> Response:
        body = await http.json()
        work = asyncio.run_coroutine_threadsafe(command(body["command"]), control)
        return JSONResponse({"accepted": True, "result": await asyncio.wrap_future(work)})

    async def events(http: Request) -> Response:
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        streams.add(queue)
        first = _encode("state", {"status": status, "detail": detail, "tags": {}})

        async def chunks() -> AsyncIterator[bytes]:
            try:
                yield first
                while True:
                    yield await queue.get()
            finally:
                streams.discard(queue)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/api/request", request, methods=["POST"]),
            Route("/api/events", events, methods=["GET"]),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    config = uvicorn.Config(
        app,
        loop="asyncio",
        http="h11",
        ws="none",
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    started: asyncio.Future[None] = control.create_future()

    async def serve() -> None:
        """uvicorn's serve() step by step: the control loop hears when it listens."""
        web.append(asyncio.get_running_loop())
        try:
            config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
        except BaseException as error:
            control.call_soon_threadsafe(started.set_exception, error)
            raise
        control.call_soon_threadsafe(started.set_result, None)
        await server.main_loop()
        await server.shutdown(sockets=[sock])

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="raw-web", daemon=True)
    thread.start()
    async with asyncio.timeout(START_WITHIN):
        await started
    say(f"URL http://127.0.0.1:{sock.getsockname()[1]}")
    await stdin_closed()
    server.should_exit = True
    await asyncio.to_thread(thread.join, START_WITHIN)


# -- measuring ---------------------------------------------------------------------------------


async def _to_execute(side: Side) -> None:
    """Bring our batch to Execute from wherever it is (it may have ended): the commands that
    lead there, a load of press-fit where one is wanted."""
    for _ in range(12):
        state = await side.stable()
        if state == "Execute":
            return
        command = TOWARD_EXECUTE.get(state)
        if command is None:
            raise RuntimeError(f"{side.name} is {state}: no way to Execute")
        wanted: dict[str, Any] = {"action": "command", "command": command}
        status, answer = await side.ask(wanted)
        if status == 409 and command == "Unhold":  # a failed step: run it again
            status, answer = await side.ask({**wanted, "choice": "retry"})
        elif status == 409 and command in ("Reset", "Start"):  # no batch loaded for it
            load = {"action": "load", "name": RECIPE, "parameters": PARAMETERS}
            status, answer = await side.ask(load)
            if status != 200:
                raise RuntimeError(f"{side.name}: load {RECIPE} answered {status}: {answer}")
            continue
        if status != 200:
            raise RuntimeError(f"{side.name}: {command} in {state} answered {status}: {answer}")
        await side.until(_leaves(state))
    raise RuntimeError(f"{side.name} did not reach Execute")


def _leaves(state: str) -> Callable[[Page], bool]:
    """Whether a page shows a state other than `state`."""
    return lambda page: page.state != state


async def _block(side: Side, count: int) -> list[float]:
    """`count` changes after a warm-up, Hold and Unhold in turn: each page's seconds."""
    samples: list[float] = []
    for i in range(WARMUP + count):
        command, shows, then = HOLD if i % 2 == 0 else UNHOLD
        if command == "Hold":
            await _to_execute(side)
            await asyncio.sleep(random.uniform(*EXECUTE_PAUSE))  # a random phase, not a wait
        times = await side.change(command, shows, then)
        if i >= WARMUP:
            samples.extend(times)
    return samples


#: (side, open pages) -> seconds: "page", one per page and change; "answer", one per change.
Results = dict[tuple[str, str, int], list[float]]


async def _measure(quick: bool, folder: Path) -> Results:
    """Every sample: (side, open pages) -> seconds, one per page and change."""
    count = CHANGES[quick] // BLOCKS
    results: Results = {}
    async with _ours(folder) as ours_url:
        ours = Side("ours", ours_url)
        try:
            await ours.open()
            await ours.hold_pages(1)
            await _to_execute(ours)
            reference = folder / "reference.json"
            page = ours.pages[0]
            reference.write_text(json.dumps({"status": page.status, "detail": page.detail}))
            async with _raw(folder, reference) as raw_url:
                raw = Side("raw", raw_url)
                try:
                    await raw.open()
                    for pages in PAGES:
                        for side in (ours, raw):
                            await side.hold_pages(pages)
                        for _ in range(BLOCKS):
                            for side in (ours, raw):
                                side.answers.clear()
                                samples = await _block(side, count)
                                key = (side.name, "page", pages)
                                results.setdefault(key, []).extend(samples)
                                answers = side.answers[WARMUP:]
                                results.setdefault((side.name, "answer", pages), []).extend(answers)
                finally:
                    await raw.close()
        finally:
            await ours.close()
    return results


def _ms(samples: list[float]) -> tuple[float, float, float]:
    """Median, p99 and max, in ms."""
    return percentile(samples, 50) * 1e3, percentile(samples, 99) * 1e3, max(samples) * 1e3


def _figures(results: Results, quick: bool) -> list[Figure]:
    """Figure 14, one line per count of open pages."""
    figures = []
    changes = CHANGES[quick]
    for pages in PAGES:
        ours, raw = results[("ours", "page", pages)], results[("raw", "page", pages)]
        (p50, p99, worst), (raw50, raw99, raw_worst) = _ms(ours), _ms(raw)
        answer = percentile(results[("ours", "answer", pages)], 50) * 1e3
        raw_answer = percentile(results[("raw", "answer", pages)], 50) * 1e3
        detail = (
            f"median / p99 / max: ours {p50:.2f} / {p99:.2f} / {worst:.2f} ms, bare Starlette "
            f"{raw50:.2f} / {raw99:.2f} / {raw_worst:.2f} ms; {changes} changes a side (Hold "
            f"and Unhold in turn) x {pages} open page{'s' if pages > 1 else ''}, {BLOCKS} "
            "alternating blocks; from the request's send to the status event read (the "
            f"request's own answer: median {answer:.2f} ms, bare {raw_answer:.2f} ms); "
            f"`cellctl serve --http` on the demo cell's simulators, {RECIPE} running, "
            f"{journal_where()}"
        )
        figures.append(
            Figure(
                14,
                f"event to page, {pages} open page{'s' if pages > 1 else ''}",
                p50,
                "ms",
                raw50,
                "bare Starlette SSE",
                raw50 / p50 if p50 else None,
                f"every event <= {GOAL_S * 1e3:g} ms",
                worst <= GOAL_S * 1e3,
                detail,
                {
                    "pages": pages,
                    "changes": changes,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "max_ms": worst,
                    "raw_p50_ms": raw50,
                    "raw_p99_ms": raw99,
                    "raw_max_ms": raw_worst,
                    "answer_p50_ms": answer,
                    "raw_answer_p50_ms": raw_answer,
                    "quick": quick,
                },
            )
        )
    return figures


def measure(quick: bool) -> list[Figure]:
    """Figure 14."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        results = asyncio.run(_measure(quick, Path(tmp)))
    return _figures(results, quick)


def main(argv: list[str]) -> int:
    """`python -m bench.web raw REFERENCE_JSON`: the reference server (see raw_server)."""
    if len(argv) != 2 or argv[0] != "raw":
        print("usage: python -m bench.web raw REFERENCE_JSON", file=sys.stderr)
        return 1
    asyncio.run(raw_server(json.loads(Path(argv[1]).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
