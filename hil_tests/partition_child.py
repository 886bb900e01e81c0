"""The child of hil_tests/test_partition.py, run in a network namespace of its own whose loopback
link is up (`unshare -rn`): the demo cell's simulators on 127.0.0.1 there, a press-fit batch of
one part recorded in a journal, the loopback link taken DOWN as the conveyor brings the part
and UP again, Unhold.
argv[1]: a folder for the served cell and the journal. Prints what happened as one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cellctl.cell import ModbusTcpDevice, OpcuaDevice, load_cell
from cellctl.control.events import Event, SafeStateWritten, StepStarted, TripCleared, Tripped
from cellctl.control.journal.store import SqliteStore
from cellctl.control.journal.verify import verify
from cellctl.control.machine import Command, State
from cellctl.testing import Served, controller_for, held_or_ended, wait_event
from hil_tests.run_support import PRESS_FIT, ConveyorOutputs, edit_cell, read_conveyor, serve_demo

#: Seconds the batch may take to reach Held, or to end, at each stage.
BATCH = 20.0
#: Seconds the devices have to answer again once the link is up: the reconnect backoff (up to
#: 5 s), and on a Modbus TCP connection that outlived the partition, the kernel's retransmit
#: timer, which doubles while the link is down (seen past 10 s once on a loaded machine).
BACK_WITHIN = 25.0
#: The devices on the loopback link (the press is on a serial line: a pty, not the link).
LINKED = ("conveyor", "robot", "inspection")


def link(state: str) -> None:
    """`ip link set lo STATE`."""
    subprocess.run(["ip", "link", "set", "lo", state], check=True, capture_output=True)


def bounds(cell_file: Path) -> dict[str, float]:
    """Each linked device's detection bound: timeout × (retries + 1) + 2 poll periods (or
    publishing intervals)."""
    cell = load_cell(cell_file)
    found: dict[str, float] = {}
    for name in LINKED:
        device = cell.devices[name]
        if isinstance(device, OpcuaDevice):
            period = device.publishing_interval
        else:
            assert isinstance(device, ModbusTcpDevice)
            period = device.poll
        found[name] = device.timeout * (device.retries + 1) + 2 * period
    return found


def part_awaited(event: Event) -> bool:
    """The conveyor's wait for the part begins: the conveyor runs, the cycle has begun."""
    return isinstance(event, StepStarted) and event.step_id == "wait-part"


async def partition(served: Served, folder: Path) -> dict[str, Any]:
    """The batch, the partition and its healing; what happened (seconds from the link going
    down)."""
    cell_file = folder / "cell.yaml"
    edit_cell(served.cell_file, cell_file, "conveyor", timeout="300ms", retries=1)
    for device in ("robot", "inspection"):
        edit_cell(cell_file, cell_file, device, timeout="300ms", retries=1)
    journal = folder / "journal.sqlite"
    press = served.simulator.models["press"]
    cycles = int(press.get("cycles"))
    result: dict[str, Any] = {"bounds": bounds(cell_file)}
    async with controller_for(cell_file, PRESS_FIT, ["parts=1"], journal=journal) as run:
        down: list[float] = []

        def cut(event: Event) -> None:
            if not down and part_awaited(event):
                link("down")
                down.append(event.at)

        run.controller.listeners.append(cut)
        batch = asyncio.ensure_future(run.run_batch())
        try:
            held = await held_or_ended(run, BATCH)
            result["held"] = held.value
            result["cut"] = bool(down)
            if held is not State.HELD or not down:
                return result
            since = down[0]
            trips = run.of(Tripped)
            result["trips"] = {t.interlock: round(t.at - since, 3) for t in trips}
            result["held_after"] = round(
                next(e.at for e in run.events if getattr(e, "target", None) is State.HELD) - since,
                3,
            )
            up = time.time()
            link("up")
            for name in {t.interlock for t in trips}:
                await wait_event(
                    run,
                    lambda e, n=name: isinstance(e, TripCleared) and e.interlock == n,  # type: ignore[misc]
                    BACK_WITHIN,
                    f"{name} to clear",
                )
            result["cleared_after_up"] = round(time.time() - up, 3)
            result["safe_state_writes"] = [
                {"reason": e.reason, "ok": e.ok, "after": round(e.at - since, 3)}
                for e in run.of(SafeStateWritten)
            ]
            # On the simulators themselves, read past the controller: the conveyor stopped,
            # the inspection trigger off.
            deadline = time.monotonic() + BACK_WITHIN
            conveyor = await read_conveyor(served.cell)
            while conveyor != ConveyorOutputs(False, 0) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)  # a poll interval; the deadline rules
                conveyor = await read_conveyor(served.cell)
            result["conveyor"] = [conveyor.run, conveyor.speed_rpm]
            # This runs on the simulators' loop: their image is read directly.
            trigger = served.simulator.images["inspection"].get("inspection.trigger")
            result["inspection_trigger"] = trigger
            result["state_before_unhold"] = run.controller.state.value
            await run.controller.command(Command.UNHOLD, cause="test: the link is back")
            async with asyncio.timeout(BATCH):
                ended = await batch
            result["outcome"] = ended.state.value
        finally:
            link("up")
            batch.cancel()
    result["parts_pressed"] = int(press.get("cycles")) - cycles
    store = SqliteStore(journal, readonly=True)
    try:
        verdict = verify(store)
    finally:
        store.close()
    result["journal"] = {"ok": verdict.ok, "rows": verdict.checked, "problem": verdict.problem}
    return result


def main() -> None:
    """Serve, run, report."""
    folder = Path(sys.argv[1])
    with serve_demo(folder / "served") as served:
        result = served.loop.run(partition(served, folder), timeout=120)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
