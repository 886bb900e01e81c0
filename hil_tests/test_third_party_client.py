"""A third-party OPC UA client against `cellctl serve`: node-opcua (hil_tests/node_client, a
JavaScript stack other than asyncua) finds the service's namespace by its URI, browses the PackML
object and the tags, loads and resets, and drives a batch to Complete with Start.

The node client is installed by `.ci/node-client` (npm ci); without Node.js or that install the
test skips, and fails where CELLCTL_REQUIRE names `node` (CI).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from asyncua.client.client import Client

from cellctl.cell import load_cell
from cellctl.service.api import METHODS, NAMESPACE, PACKML, STATUS_VARIABLES
from cellctl.testing import LoopThread, wait_until
from hil_tests.conftest import tool_missing
from hil_tests.service_support import DEMO_CELL, ServiceChild, service_in_child
from hil_tests.support import with_room

NODE_CLIENT = Path(__file__).resolve().parent / "node_client"
#: The hash of the package-lock.json that `.ci/node-client` installed node_modules from.
INSTALLED_FROM = NODE_CLIENT / "node_modules" / ".cellctl-lock-sha256"
#: Seconds one run of the node client may take: its own deadline (60 s) and room to print.
NODE_WITHIN = 70.0
#: Simulators' speed-up: a one-part batch of press-fit in seconds.
SPEED = "10"
#: Seconds the demo's one-part batch may take to reach Complete at SPEED, with room.
BATCH_WITHIN = with_room(10.0)


@pytest.fixture(scope="module")
def node() -> str:
    """Node.js, with hil_tests/node_client installed from its lock file as it is now."""
    executable = shutil.which("node")
    if executable is None:
        tool_missing("node", "Node.js is not installed (apt-get install nodejs npm)")
    lock = hashlib.sha256((NODE_CLIENT / "package-lock.json").read_bytes()).hexdigest()
    if not INSTALLED_FROM.exists() or INSTALLED_FROM.read_text().strip() != lock:
        tool_missing(
            "node", "hil_tests/node_client is not installed as locked: run .ci/node-client"
        )
    return executable


def node_client(node: str, service: ServiceChild, *calls: str) -> dict[str, Any]:
    """`node client.mjs URL CALLS`: what it saw and answered (its JSON), once it exited 0."""
    run = subprocess.run(
        [node, str(NODE_CLIENT / "client.mjs"), service.url, *calls],
        capture_output=True,
        text=True,
        env=service.env,  # its PKI folder under the test's XDG_CONFIG_HOME, not the user's
        timeout=NODE_WITHIN,
        stdin=subprocess.DEVNULL,
    )
    assert run.returncode == 0, f"node client exit {run.returncode}:\n{run.stdout}{run.stderr}"
    return cast(dict[str, Any], json.loads(run.stdout))


class StateReader:
    """PackML.State read by a plain asyncua client (on a loop thread of its own), to wait for a
    state between two runs of the node client."""

    def __init__(self, url: str) -> None:
        self.loop = LoopThread()
        self.client = Client(url, timeout=5)
        try:
            self.loop.run(self._connect())
        except BaseException:
            self.loop.close()
            raise

    async def _connect(self) -> None:
        await self.client.connect()
        ns = await self.client.get_namespace_index(NAMESPACE)
        self.state = self.client.get_node(f"ns={ns};s={PACKML}.State")

    def read(self) -> str:
        """The state now."""
        return cast(str, self.loop.run(self.state.read_value()))

    def wait_for(self, wanted: str, within: float) -> None:
        """Wait until the state is `wanted`; AssertionError naming the states seen."""
        seen: list[str] = []

        def there() -> bool:
            state = self.read()
            if not seen or seen[-1] != state:
                seen.append(state)
            return state == wanted

        try:
            wait_until(there, within, f"PackML.State {wanted}")
        except AssertionError as error:
            raise AssertionError(f"{error}; states seen: {' -> '.join(seen)}") from None

    def close(self) -> None:
        """Disconnect and stop the loop."""
        try:
            self.loop.run(self.client.disconnect())
        finally:
            self.loop.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceChild]:
    """`cellctl serve` on the demo cell's simulators in a child, its files in tmp_path (killed
    at the end if the test has not ended it)."""
    with service_in_child(
        tmp_path, "--speed", SPEED, "--journal", str(tmp_path / "journal.sqlite")
    ) as child:
        yield child


# A service started and stopped, two node runs (1-3 s each) and a batch: usually 10-20 s, but
# each node run may take 70 s before it fails with what it saw, past the suite's 60 s.
@pytest.mark.timeout(240)
def test_node_opcua_browses_the_packml_object_and_runs_a_batch_with_start(
    node: str, service: ServiceChild
) -> None:
    """node-opcua finds every status variable, method and tag by browsing; its calls answer
    Good (a command not legal now, BadInvalidState), and its Start runs the batch to Complete;
    SIGTERM then ends the service with exit 0."""
    prepared = node_client(node, service, "LoadRecipe", "press-fit", "parts=1", "Reset")

    assert prepared["namespace"]["uri"] == NAMESPACE
    assert sorted(prepared["packml"]["variables"]) == sorted(STATUS_VARIABLES)
    assert sorted(prepared["packml"]["methods"]) == sorted(METHODS)
    assert sorted(prepared["tags"]) == sorted(load_cell(DEMO_CELL).tags)
    assert prepared["stateBefore"] == {"status": "Good", "value": "Stopped"}
    load, reset = prepared["calls"]
    assert load["inputs"] == {"Name": "press-fit", "Parameters": ["parts=1"]}
    assert load["status"] == "Good" and "press-fit" in load["outputs"][0], load
    assert reset["status"] == "Good", reset

    reader = StateReader(service.url)
    try:
        reader.wait_for("Idle", with_room(5.0))
        started = node_client(node, service, "Hold", "Start")
        hold, start = started["calls"]
        assert started["stateBefore"] == {"status": "Good", "value": "Idle"}
        assert hold["status"] == "BadInvalidState", hold  # Hold is not legal in Idle
        assert start["status"] == "Good" and len(start["outputs"]) == 1, start
        reader.wait_for("Complete", BATCH_WITHIN)
    finally:
        reader.close()

    assert service.stop(signal.SIGTERM) == 0, service.err
    assert f"serving cell demo on {service.url}" in service.out
    assert "Traceback" not in service.err, service.err
