"""A network partition with standard tools only: in a network namespace of its own (`unshare
-rn`, loopback up), a child (hil_tests/partition_child.py) serves the demo cell's simulators on
127.0.0.1, runs a press-fit batch recorded in a journal, takes the loopback link DOWN while the
conveyor brings the part (`ip link set lo down`: every TCP link silent at once) and UP again
once the batch is Held. The controller detects the loss of each device on the link within its
bound (timeout × (retries + 1) + 2 polls, with room), holds, writes the safe state once the
devices answer again (read back from the simulators directly), and Unhold completes the batch,
the part pressed once; the journal verifies. The child reports as one JSON line.

`.ci/run` requires the namespace (CELLCTL_REQUIRE=netns): there, no namespace is a failure.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hil_tests.conftest import tool_missing
from hil_tests.support import with_room

ROOT = Path(__file__).resolve().parent.parent
#: `unshare -rn sh -c UP ARGS...`: a user and network namespace of the child's own, its
#: loopback up, then ARGS run there.
UP = 'ip link set lo up && exec "$@"'
IN_NETNS = ("unshare", "-rn", "sh", "-c", UP, "sh")
#: Seconds the child may take (it takes about 4 s).
CHILD_WITHIN = 90.0
#: The devices on the loopback link (the press sits on a pty).
LINKED = ("conveyor", "robot", "inspection")


@functools.cache
def _netns_problem() -> str | None:
    """Why a namespace's loopback cannot be taken down and up here, or None when it can."""
    try:
        done = subprocess.run(
            [*IN_NETNS, "sh", "-c", "ip link set lo down && ip link set lo up"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except FileNotFoundError:
        return "unshare is not installed"
    if done.returncode != 0:
        return f"unshare -rn cannot take a namespace's loopback down and up: {done.stderr}"
    return None


def partitioned(folder: Path) -> dict[str, Any]:
    """Run the child in its namespace; what it reports."""
    problem = _netns_problem()
    if problem is not None:
        tool_missing("netns", problem)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "served").mkdir()
    done = subprocess.run(
        [*IN_NETNS, sys.executable, "-m", "hil_tests.partition_child", str(folder)],
        capture_output=True,
        text=True,
        timeout=CHILD_WITHIN,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT), CELLCTL_LOG_FILE=str(folder / "log")),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0 and done.stdout.strip(), (
        f"the child failed (exit {done.returncode}):\n{done.stderr[-4000:]}"
    )
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def test_a_partition_mid_batch_holds_within_the_bound_and_unhold_completes(
    tmp_path: Path,
) -> None:
    result = partitioned(tmp_path / "child")
    said = json.dumps(result, indent=1)
    assert result["cut"], f"the batch never reached the moment to cut the link: {said}"
    assert result["held"] == "Held", said
    # Every device on the link tripped comm-loss, each within its bound; the press (a pty)
    # did not.
    trips = result["trips"]
    assert set(trips) == {f"comm-loss:{device}" for device in LINKED}, said
    for device in LINKED:
        bound = result["bounds"][device]
        assert trips[f"comm-loss:{device}"] <= with_room(bound), (
            f"{device} detected {trips[f'comm-loss:{device}']} s after the cut, bound "
            f"{bound} s: {said}"
        )
    assert result["held_after"] <= with_room(max(result["bounds"].values())), said
    # While the link was down the safe state could not reach the linked devices; once they
    # answered again it was written, every tag confirmed, and the simulators hold it.
    writes = result["safe_state_writes"]
    assert any(not w["ok"] for w in writes if w["after"] <= result["held_after"]), said
    assert any(w["ok"] and w["after"] > result["held_after"] for w in writes), said
    assert result["conveyor"] == [False, 0], said
    assert result["inspection_trigger"] is False, said
    # Held until the operator's Unhold; then the batch completed, the part pressed once.
    assert result["state_before_unhold"] == "Held", said
    assert result["outcome"] == "Complete", said
    assert result["parts_pressed"] == 1, said
    assert result["journal"]["ok"], said
