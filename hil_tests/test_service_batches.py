"""Acceptance of `cellctl serve`: a service on the demo cell's simulators, in a child process,
runs batches one after another driven from this process by the remote CLI alone, then by a plain
asyncua client calling the PackML methods; killed with SIGKILL mid-batch and started again on the
same journal, it takes the batch up Held at its step, and Unhold runs it to Complete. Every
batch's record names who gave each command, and the journal's chain verifies.

The remote CLI runs in-process (`cellctl.testing.cli`: a fresh interpreter costs seconds of
imports on a loaded machine, and status is polled); one refusal goes through a child `cellctl`
to show the console script's exit code.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua
from asyncua.client.client import Client
from asyncua.common.node import Node
from asyncua.ua.status_codes import StatusCodes
from asyncua.ua.uaerrors import UaStatusCodeError

from cellctl.service.api import NAMESPACE, PACKML
from cellctl.testing import CliResult, cli, wait_until
from hil_tests.service_support import service_in_child
from hil_tests.support import with_room
from tests.support import journal_rows

#: The simulators' speed-up where the CLI holds a batch: it stays in Execute long enough
#: (seconds) for a command sent after a status poll to find it there, on a loaded machine too.
SPEED = "2"
#: The speed-up elsewhere: a batch of two parts takes under 2 s in Execute.
FAST = "10"
#: Seconds a press-fit batch of two parts takes at SPEED at most (it takes about 3 s).
BATCH_WITHIN = with_room(6.0)
#: Seconds Reset, Hold or a command's effect takes to show in the status.
STATE_WITHIN = with_room(2.0)
#: The user the CLI logs in as (no users file: the service takes the name as given, on loopback).
USER = "tina"
#: The status block's label column (cellctl.cli.views.service).
LABEL = 12
#: What the service says of a batch it took up after a crash (StopReason, its start line).
RESUMED = "resumed after the controller stopped mid-batch"
#: Why Start is refused before any recipe is loaded.
NOTHING_LOADED = "Start: no recipe is loaded (Stopped): load one first"


# -- the remote CLI ------------------------------------------------------------------------------


def status_fields(text: str) -> dict[str, str]:
    """The `cellctl status` block as label -> value (a wrapped value joined again)."""
    fields: dict[str, str] = {}
    label = ""
    for line in text.splitlines():
        if line[:LABEL].strip():
            label = line[:LABEL].strip()
            fields[label] = line[LABEL:].strip()
        elif label:
            fields[label] += " " + line.strip()
    return fields


@dataclass
class Remote:
    """The remote CLI against one service, as one user (None: without --user)."""

    capsys: pytest.CaptureFixture[str]
    url: str
    user: str | None = None

    def __call__(self, *args: str) -> CliResult:
        """`cellctl ARGS --server URL [--user USER]`, in-process."""
        who = ["--user", self.user] if self.user else []
        return cli(self.capsys, *args, "--server", self.url, *who)

    def ok(self, *args: str) -> str:
        """Its output, once it exited 0 and printed no error."""
        code, out, err = self(*args)
        assert (code, err) == (0, ""), f"cellctl {' '.join(args)}: exit {code}\n{out}{err}"
        return out

    def status(self) -> dict[str, str]:
        """`cellctl status`, as fields."""
        return status_fields(self.ok("status"))

    def wait_state(
        self, state: str, within: float, unless: Sequence[str] = ("Stopped", "Aborted")
    ) -> dict[str, str]:
        """Poll `cellctl status` until the state is `state` (failing at once on one of
        `unless`): the status then."""
        seen: list[dict[str, str]] = []

        def reached() -> bool:
            seen.append(self.status())
            now = seen[-1]["state"].split()[0]
            assert now not in unless, f"the service is {now}, not {state}: {seen[-1]}"
            return now == state

        wait_until(reached, within, f"the service to be {state}")
        return seen[-1]


@pytest.fixture
def remote_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI's environment: no server, user or certificates of the machine's; a password for
    --user (the service has no users file: it takes the name, checks no password)."""
    for name in ("CELLCTL_SERVER", "CELLCTL_USER", "CELLCTL_CERTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CELLCTL_PASSWORD", "unused")


def batch_of(loaded: str) -> str:
    """The batch id in LoadRecipe's result ('loaded press-fit v4 as batch B-... (Stopped)')."""
    found = re.search(r" as batch (B-\S+) ", loaded)
    assert found, loaded
    return found.group(1)


# -- the journal -------------------------------------------------------------------------------


def outcomes(capsys: pytest.CaptureFixture[str], journal: Path) -> dict[str, str]:
    """`cellctl history`: batch id -> outcome."""
    code, out, err = cli(capsys, "history", "--journal", journal)
    assert (code, err) == (0, ""), out + err
    rows = [line.split("\t") for line in out.splitlines()[1:]]
    return {row[0]: row[2] for row in rows}


def record(capsys: pytest.CaptureFixture[str], journal: Path, batch: str) -> dict[str, Any]:
    """`cellctl report BATCH --format json`."""
    code, out, err = cli(capsys, "report", batch, "--format", "json", "--journal", journal)
    assert (code, err) == (0, ""), out + err
    report: dict[str, Any] = json.loads(out)
    return report


def commands(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(command, user) of each command on a batch's record, but the service's own Stop."""
    return [(c["command"], c["operator"]) for c in report["commands"] if c["operator"] != "service"]


def verify(capsys: pytest.CaptureFixture[str], journal: Path) -> None:
    """`cellctl audit verify` passes."""
    code, out, err = cli(capsys, "audit", "verify", "--journal", journal)
    assert (code, err) == (0, ""), out + err
    assert "the chain holds" in out


# -- the tests -----------------------------------------------------------------------------------


def test_two_batches_driven_by_the_remote_cli_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], remote_env: None
) -> None:
    """Load, Reset, Start, Hold, Unhold to Complete as one user, then a second batch without
    --user; refusals exit 7 naming why; the record names each command's user."""
    with service_in_child(tmp_path / "served", "--speed", SPEED) as child:
        tina, anyone = Remote(capsys, child.url, USER), Remote(capsys, child.url)
        # A console script of its own: the exit code and message a shell sees.
        refused = child.remote("cmd", "start", user=USER, password="unused")
        assert refused.returncode == 7, refused.stderr
        assert refused.stderr == f"error: refused: {NOTHING_LOADED}\n"

        first = batch_of(tina.ok("load", "press-fit", "-p", "parts=2"))
        assert tina.ok("cmd", "reset") == "Resetting\n"
        tina.wait_state("Idle", STATE_WITHIN)
        assert tina.ok("cmd", "start") == "Starting\n"
        tina.wait_state("Execute", STATE_WITHIN, unless=("Complete", "Held", "Stopped"))
        code, out, err = tina("cmd", "unhold")
        assert (code, out) == (7, "")
        assert err.startswith("error: refused: Unhold is not legal in Execute"), err
        assert tina.ok("cmd", "hold") == "Holding\n"
        held = tina.wait_state("Held", STATE_WITHIN, unless=("Complete", "Stopped", "Aborted"))
        assert held["batch"] == first
        assert tina.ok("cmd", "unhold") == "Unholding\n"
        done = tina.wait_state("Complete", BATCH_WITHIN, unless=("Held", "Stopped", "Aborted"))
        assert done["parts"] == "produced 2, rejected 0"

        assert anyone.ok("cmd", "reset") == "Resetting\n"
        anyone.wait_state("Idle", STATE_WITHIN)
        second = batch_of(anyone.ok("load", "press-fit", "-p", "parts=1"))
        assert second != first
        assert anyone.ok("cmd", "start") == "Starting\n"
        done = anyone.wait_state("Complete", BATCH_WITHIN, unless=("Held", "Stopped", "Aborted"))
        assert (done["batch"], done["parts"]) == (second, "produced 1, rejected 0")
        assert child.stop() == 0, child.err

    journal = child.journal
    assert outcomes(capsys, journal) == {first: "Complete", second: "Complete"}
    one = record(capsys, journal, first)
    # The Reset after Complete is the first batch's: it is still loaded until the next load.
    assert commands(one) == [
        ("load press-fit parts=2", USER),
        ("Reset", USER),
        ("Start", USER),
        ("Unhold", USER),
        ("Hold", USER),
        ("Unhold", USER),
        ("Reset", "anonymous"),
    ]
    assert [r["command"] for r in one["refusals"]] == ["Unhold"]
    assert "not legal in Execute" in one["refusals"][0]["reason"]
    two = record(capsys, journal, second)
    assert commands(two) == [("load press-fit parts=1", "anonymous"), ("Start", "anonymous")]
    # The Start refused before any batch is on the service's own record, with its user.
    outside = [r.data() for r in journal_rows(journal) if r.batch is None and r.kind == "refused"]
    assert [(r["command"], r["operator"]) for r in outside] == [("Start", USER)]
    verify(capsys, journal)


class StateLog:
    """asyncua's subscription handler for PackML.State: every value it publishes, in order."""

    def __init__(self) -> None:
        self.values: list[str] = []

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        """A new state."""
        self.values.append(str(val))


class PlainClient:
    """A plain asyncua client's view of the service: the PackML object's methods and
    variables, the state as a subscription publishes it."""

    def __init__(self, client: Client, ns: int, packml: Node) -> None:
        self.client = client
        self.ns = ns
        self.packml = packml
        self.states = StateLog()
        #: Where the state log stood when the last call was made: waits look at what came since.
        self.mark = 0

    def variable(self, name: str) -> Node:
        """PackML.<name>."""
        return self.client.get_node(ua.NodeId(ua.String(f"{PACKML}.{name}"), ua.Int16(self.ns)))

    async def call(self, method: str, *args: str | list[str]) -> Any:
        """Call a method with String (String[]) inputs: its Result."""
        self.mark = len(self.states.values)
        inputs = [ua.Variant(a, ua.VariantType.String, is_array=isinstance(a, list)) for a in args]
        return await self.packml.call_method(ua.QualifiedName(method, self.ns), *inputs)

    async def refused(self, method: str, *args: str) -> tuple[int, str]:
        """Call a method that the service refuses: its status code and LastRefusal's text."""
        with pytest.raises(UaStatusCodeError) as raised:
            await self.call(method, *args)
        return raised.value.code, await self.variable("LastRefusal").read_value()

    async def wait_state(
        self, state: str, within: float, unless: Sequence[str] = ("Stopped", "Aborted")
    ) -> None:
        """Wait until the subscription publishes `state` since the last call (failing at once
        on one of `unless`)."""

        def reached() -> bool:
            since = self.states.values[self.mark :]
            assert not set(since) & set(unless), f"the service went {since}, not to {state}"
            return state in since

        await wait_until(reached, within, f"the service to be {state}")

    async def read(self, *names: str) -> list[Any]:
        """The values of PackML variables."""
        return [await self.variable(name).read_value() for name in names]


async def plain_batches(url: str) -> tuple[str, str]:
    """The two batches of the CLI test through asyncua method calls alone: their batch ids."""
    async with Client(url, timeout=10) as client:
        ns = await client.get_namespace_index(NAMESPACE)
        service = PlainClient(client, ns, await client.nodes.objects.get_child(f"{ns}:{PACKML}"))
        subscription = await client.create_subscription(50, service.states)
        await subscription.subscribe_data_change(service.variable("State"), queuesize=20)
        await service.wait_state("Stopped", STATE_WITHIN, unless=())

        code, reason = await service.refused("Start")
        assert code == StatusCodes.BadInvalidState
        assert reason == NOTHING_LOADED
        first = batch_of(await service.call("LoadRecipe", "press-fit", ["parts=2"]))
        assert await service.call("Reset") == "Resetting"
        await service.wait_state("Idle", STATE_WITHIN)
        assert await service.call("Start") == "Starting"
        await service.wait_state("Execute", STATE_WITHIN, unless=("Complete", "Held"))
        code, reason = await service.refused("Unhold", "")
        assert code == StatusCodes.BadInvalidState
        assert reason.startswith("Unhold is not legal in Execute"), reason
        assert await service.call("Hold") == "Holding"
        await service.wait_state("Held", STATE_WITHIN, unless=("Complete", "Stopped", "Aborted"))
        assert await service.call("Unhold", "") == "Unholding"
        await service.wait_state("Complete", BATCH_WITHIN, unless=("Held", "Stopped", "Aborted"))
        assert await service.read("BatchId", "Produced") == [first, 2]

        assert await service.call("Reset") == "Resetting"
        await service.wait_state("Idle", STATE_WITHIN)
        second = batch_of(await service.call("LoadRecipe", "press-fit", ["parts=1"]))
        assert await service.call("Start") == "Starting"
        await service.wait_state("Complete", BATCH_WITHIN, unless=("Held", "Stopped", "Aborted"))
        assert await service.read("BatchId", "Produced") == [second, 1]
        await subscription.delete()
    return first, second


@pytest.mark.extended  # 11 s: the remote CLI test drives the same two batches
def test_two_batches_driven_by_a_plain_asyncua_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same batches as method calls: Good with a Result, a refusal BadInvalidState with
    its reason in LastRefusal; both batches Complete on record with the session's user."""
    with service_in_child(tmp_path / "served", "--speed", FAST) as child:
        first, second = asyncio.run(plain_batches(child.url))
        assert child.stop() == 0, child.err
    journal = child.journal
    assert outcomes(capsys, journal) == {first: "Complete", second: "Complete"}
    one = record(capsys, journal, first)
    assert {user for _, user in commands(one)} == {"anonymous"}
    assert [c for c, _ in commands(one)][:3] == ["load press-fit parts=2", "Reset", "Start"]
    assert [r["command"] for r in one["refusals"]] == ["Unhold"]
    verify(capsys, journal)


def cycle_step_running(remote: Remote, journal: Path) -> Callable[[], bool]:
    """A condition: the batch is in Execute at a step of its cycle (2.x), and that step's start
    is on disk (a resume can only stand where the journal says the batch was)."""

    def running() -> bool:
        now = remote.status()
        assert now["state"].split()[0] in ("Starting", "Execute"), now
        if not now["step"].startswith("2."):
            return False
        path = now["step"].split()[0]
        started = [r.data() for r in journal_rows(journal) if r.kind == "step_started"]
        return any(s["path"] == path for s in started)

    return running


def test_a_batch_killed_mid_cycle_comes_back_held_at_its_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], remote_env: None
) -> None:
    """SIGKILL while a step of the cycle runs; the service started again on the same journal
    has the batch Held at that step, and Unhold runs it to Complete."""
    folder = tmp_path / "served"
    with service_in_child(folder, "--speed", FAST) as child:
        tina = Remote(capsys, child.url, USER)
        batch = batch_of(tina.ok("load", "press-fit", "-p", "parts=2"))
        tina.ok("cmd", "reset")
        tina.wait_state("Idle", STATE_WITHIN)
        tina.ok("cmd", "start")
        wait_until(cycle_step_running(tina, child.journal), BATCH_WITHIN, "a step of the cycle")
        assert child.stop(signal.SIGKILL) == -signal.SIGKILL

    with service_in_child(folder, "--speed", FAST) as again:
        tina = Remote(capsys, again.url, USER)
        now = tina.status()
        assert now["state"].split()[0] == "Held"
        assert now["batch"] == batch
        assert now["step"].startswith("2"), now  # the cycle
        assert RESUMED in now["stop reason"]
        # The simulators started afresh: a write caught by the kill has an unknown outcome,
        # and Unhold then needs a choice; retry runs the step again (no question: ignored).
        assert tina.ok("cmd", "unhold", "--choice", "retry") == "Unholding\n"
        done = tina.wait_state("Complete", BATCH_WITHIN, unless=("Held", "Stopped", "Aborted"))
        assert done["batch"] == batch
        assert again.stop() == 0, again.err
    assert re.search(rf"batch {batch} .* taken up Held at step 2\.\d+ \S+", again.out), again.out
    assert outcomes(capsys, again.journal) == {batch: "Complete"}
    verify(capsys, again.journal)
