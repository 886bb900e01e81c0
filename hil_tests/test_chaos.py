"""Chaos: batches of press-fit on the demo cell's simulators under seeded random fault schedules.

Every networked device (the conveyor on Modbus TCP, the robot and the inspection station on
OPC UA) is reached through a fault proxy; the press is on its Modbus RTU line. A seed draws,
up front, a schedule of faults at step starts of the batch (chaos_support.draw): link drops,
freezes (held until the controller detects the loss, or short blips), a link down, latency
with jitter, answers cut in pieces, a device's simulator killed and restarted, the light
curtain broken, an operator Hold, a conveyor or robot fault (Stop) or a press fault (Abort);
in some seeds a child `cellctl run` SIGKILLed mid-batch and taken up with `cellctl resume`.
The test plays the operator: Held, it waits for every fault to end, checks the safe state on
every device with raw clients, and Unholds (skip for a write or call of unknown outcome, a
re-run otherwise), bounded in time.

After each seed: the batch ended Complete, Stopped or Aborted; after every trip the safe state
was on every device (once its link was back, before Unhold); `cellctl audit verify` passes;
the simulators' own witnesses agree with the journal (chaos_support's docstring says what
duplicated, reordered and processed twice mean); every long loss was detected within
timeout × (retries + 1) + 2 poll periods, with room (× 3 + 1 s).

A failure message starts with the seed and the command that runs it again. Default suite:
DEFAULT_SEEDS; extended tier (`pytest -m extended`): EXTENDED_SEEDS; `--chaos-seeds N` runs
seeds 1..N, `--chaos-seed S` seed S alone.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cellctl.control.commands import Accepted, OperatorCommand
from cellctl.control.events import BatchEnded, StepStarted
from cellctl.control.machine import Command, State
from cellctl.control.operator import FailureChoice
from cellctl.testing import Harness, Served, cli, controller_for, serve
from drivers.sim.faultproxy import FaultProxy
from hil_tests.chaos_support import (
    SAFE_WITHIN,
    Injector,
    Schedule,
    chaos_cell,
    counting,
    draw,
    intents,
    journal_rows,
    order_problems,
    proxies_for,
    safe_state_held,
    skipped,
    step_choices,
)
from hil_tests.run_support import DEMO_CELL, PRESS_FIT, opcua_value, run_child
from hil_tests.support import with_room
from hil_tests.test_run_faults import Lines

#: Model time factor of the simulators: a 2-part batch takes about a second.
SPEED = 8.0
#: The default suite's seeds (14 kills the controller) and the extended tier's.
DEFAULT_SEEDS = [2, 7, 13, 14]
EXTENDED_SEEDS = list(range(100, 140))
#: Seconds a seed's batch may take to end, faults and operator included.
BATCH_LIMIT = 40.0
#: The tags only the controller's heartbeat writes (not recorded as intents).
HEARTBEATS = frozenset({"conveyor.heartbeat", "press.heartbeat"})
ENDED = (State.COMPLETE, State.STOPPED, State.ABORTED)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The seeds: fixed ones per tier, or those --chaos-seed / --chaos-seeds name."""
    if "seed" not in metafunc.fixturenames:
        return
    one = metafunc.config.getoption("chaos_seed")
    many = metafunc.config.getoption("chaos_seeds")
    extended = metafunc.definition.get_closest_marker("extended") is not None
    if one is not None:
        seeds = [] if extended else [one]
    elif many is not None:
        seeds = [] if extended else list(range(1, many + 1))
    else:
        seeds = EXTENDED_SEEDS if extended else DEFAULT_SEEDS
    metafunc.parametrize("seed", seeds, ids=[f"seed-{s}" for s in seeds])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The demo cell on simulators shared by every seed (each seed puts its own proxies in
    front of them)."""
    with serve(DEMO_CELL, tmp_path_factory.mktemp("chaos"), SPEED) as served:
        yield served


@dataclass
class Outcome:
    """What one seed's batch did, for the checks."""

    state: State | None = None
    problems: list[str] = field(default_factory=list)
    timeline: str = ""
    journal: Path | None = None


# Above pytest's own 60 s: a seed's bounds (BATCH_LIMIT) fail first, naming the seed.
@pytest.mark.timeout(150)
def test_chaos(seed: int, demo: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    check_seed(seed, demo, tmp_path, capsys)


@pytest.mark.extended
@pytest.mark.timeout(150)
def test_chaos_extended(
    seed: int, demo: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    check_seed(seed, demo, tmp_path, capsys)


def check_seed(seed: int, demo: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the seed's schedule and check everything; one failure naming the seed."""
    schedule = draw(seed)
    outcome = Outcome()
    try:
        if schedule.kill_at is None:
            in_process(schedule, demo, tmp_path, capsys, outcome)
        else:
            killed(schedule, demo, tmp_path, capsys, outcome)
    except Exception:  # a hang or a crash of the seed is reported with the seed too
        outcome.problems.append(traceback.format_exc())
    if outcome.problems:
        pytest.fail(
            f"seed {seed}: rerun with `pytest hil_tests/test_chaos.py --chaos-seed {seed}`\n"
            f"{schedule.describe()}\nended: {outcome.state}\nmoments:\n{outcome.timeline}\n"
            "problems:\n- " + "\n- ".join(outcome.problems),
            pytrace=False,
        )


# --- a batch in this process -------------------------------------------------------------------


def in_process(
    schedule: Schedule,
    demo: Served,
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    outcome: Outcome,
) -> None:
    """The batch run by a controller on the simulators' loop, faults injected as it goes."""
    journal = folder / "journal.sqlite"
    outcome.journal = journal
    before = demo.on_loop(lambda: {n: i.write_count for n, i in demo.simulator.images.items()})
    with counting(demo) as made:
        demo.loop.run(
            _batch(schedule, demo, folder, journal, outcome), timeout=2 * BATCH_LIMIT + 10
        )
    check_record(schedule, demo, journal, before, made, outcome, capsys)


async def _batch(
    schedule: Schedule, demo: Served, folder: Path, journal: Path, outcome: Outcome
) -> None:
    cell_file = folder / "cell.yaml"
    async with proxies_for(demo) as proxies:
        bounds = chaos_cell(demo, cell_file, proxies)
        async with controller_for(
            cell_file, PRESS_FIT, params=[f"parts={schedule.parts}"], journal=journal
        ) as run:

            async def hold(cause: str) -> object:
                return await run.commands.submit(OperatorCommand("chaos", Command.HOLD, cause))

            injector = Injector(demo, proxies, bounds, schedule, hold, run.events)
            run.controller.listeners.append(injector.listen)
            task = asyncio.ensure_future(run.run_batch())
            try:
                await operate(run, injector, task, demo, outcome)
                ended = task.result()
                outcome.state = ended.state
                # The faults still in force end (the controller stays open meanwhile, so a
                # loss is still detected), then the devices are safe where a trip ended it.
                await injector.calm(BATCH_LIMIT)
                await injector.finish()
                if ended.state is not State.COMPLETE:
                    wrong = await safe_state_held(demo)
                    if wrong:
                        outcome.problems.append(
                            f"ended {ended.state}: the safe state is not on the devices: {wrong}"
                        )
            finally:
                task.cancel()
                outcome.timeline = injector.timeline(run.events)
            check_detections(injector, outcome)
            outcome.problems += [
                f"an event {e!r} after the batch ended"
                for e in run.events[run.events.index(run.of(BatchEnded)[0]) + 1 :]
                if isinstance(e, StepStarted)
            ]


async def operate(
    run: Harness,
    injector: Injector,
    task: asyncio.Future[BatchEnded],
    demo: Served,
    outcome: Outcome,
) -> None:
    """Play the operator until the batch ends: Held, wait for the faults to end, check the
    safe state on every device, Unhold (bounded by BATCH_LIMIT)."""
    deadline = time.monotonic() + BATCH_LIMIT
    controller = run.controller
    while not task.done():
        held = asyncio.ensure_future(controller.wait_for({State.HELD}))
        either: set[asyncio.Future[Any]] = {task, held}
        try:
            await asyncio.wait(
                either,
                timeout=deadline - time.monotonic(),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            held.cancel()
        if task.done():
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"the batch neither ended nor was Held within {BATCH_LIMIT} s: {controller.state}"
            )
        injector.note(f"Held ({controller.cause or 'see the events'})")
        await injector.calm(deadline - time.monotonic())
        # The operator's own pause after a Hold of theirs: a length of time, not a condition.
        await asyncio.sleep(max(0.0, injector.not_before - time.monotonic()))
        # Every link is back: the safe state of every trip is on every device, before Unhold.
        wrong = await safe_state_held(demo)
        if wrong:
            outcome.problems.append(
                f"Held, every link back for {SAFE_WITHIN:.0f} s, but the devices hold {wrong} "
                "instead of the safe state"
            )
        await unhold(run, injector, deadline)


#: The press-fit steps an operator does not run again when their outcome is unknown: a call
#: that starts a move, a rising edge that starts a press cycle. The others write level outputs
#: (the conveyor's run and speed) or release the press: sending them again changes nothing.
NOT_AGAIN = frozenset({"pick", "place", "press"})


async def unhold(run: Harness, injector: Injector, deadline: float) -> None:
    """Unhold as an operator would, choosing for a failed step: skip a step in NOT_AGAIN
    whose outcome is unknown (it may have been done), re-run otherwise; again while a trip
    that is clearing still blocks it."""
    controller = run.controller
    while controller.state is State.HELD:
        failure = controller.executor.failure
        choice = None
        if failure is not None:
            unknown = failure.outcome_unknown and failure.step_id in NOT_AGAIN
            choice = FailureChoice.SKIP if unknown else FailureChoice.RETRY
        answer = await run.commands.submit(
            OperatorCommand("chaos", Command.UNHOLD, "chaos: faults over", choice)
        )
        if isinstance(answer, Accepted):
            step = f" {choice} {failure.step_id}" if failure is not None else ""
            injector.note(f"Unhold{step}")
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"Unhold refused until the deadline: {answer}")
        await asyncio.sleep(0.05)  # a trip that is clearing: ask again, within the deadline


def check_detections(injector: Injector, outcome: Outcome) -> None:
    """Every loss held until detected was detected within the bound, with room."""
    for found in injector.detections:
        room = with_room(found.bound)
        if found.tripped is None or found.tripped - found.began > room:
            took = "never" if found.tripped is None else f"{found.tripped - found.began:.2f} s"
            outcome.problems.append(
                f"{found.fault.describe()}: comm loss detected {took}, bound {found.bound:.2f} s "
                f"(with room {room:.2f} s)"
            )


def check_record(
    schedule: Schedule,
    demo: Served,
    journal: Path,
    before: dict[str, int],
    made: dict[str, dict[str, int]],
    outcome: Outcome,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The journal verifies; the devices' own witnesses agree with it."""
    if outcome.state not in ENDED:
        outcome.problems.append(f"the batch ended {outcome.state}, not one of {ENDED}")
    verified = cli(capsys, "audit", "verify", "--journal", journal)
    if verified.exit_code != 0:
        outcome.problems.append(f"audit verify: exit {verified.exit_code}: {verified}")
    rows = journal_rows(journal)
    writes = demo.on_loop(
        lambda: [w for n, i in demo.simulator.images.items() for w in i.writes_since(before[n])]
    )
    writes.sort(key=lambda w: w.at)
    safe = dict(demo.cell.safe_state)
    outcome.problems += order_problems(writes, intents(rows), safe, HEARTBEATS)
    reruns = step_choices(rows)
    parts = schedule.parts
    press, robot = made["press"], made["robot"]
    allowed = parts + reruns.get("press", 0)
    for what in ("rising_edges", "cycles_started", "cycles_done"):
        if press.get(what, 0) > allowed:
            outcome.problems.append(
                f"press {what} {press.get(what, 0)} > {allowed} (parts {parts} + re-runs of "
                f"the press step {reruns.get('press', 0)}): a part processed twice"
            )
    whole = outcome.state is State.COMPLETE and not reruns.get("press") and not skipped(rows)
    if whole and press.get("cycles_done", 0) != parts:
        outcome.problems.append(
            f"Complete, but the press made {press.get('cycles_done', 0)} cycles for {parts}"
        )
    picks = parts + reruns.get("pick", 0)
    if robot.get("pick_calls", 0) > picks:
        outcome.problems.append(
            f"robot Pick called {robot.get('pick_calls', 0)} times for {picks} (parts + re-runs)"
        )


# --- a controller killed, and resumed -----------------------------------------------------------


def killed(
    schedule: Schedule,
    demo: Served,
    folder: Path,
    capsys: pytest.CaptureFixture[str],
    outcome: Outcome,
) -> None:
    """A child `cellctl run` through the proxies, SIGKILLed at a step start; then `cellctl
    resume` (Held: the safe state on every device) and `resume --choice` to its end."""
    journal = folder / "journal.sqlite"
    outcome.journal = journal
    cell = folder / "cell.yaml"
    before = demo.on_loop(lambda: {n: i.write_count for n, i in demo.simulator.images.items()})
    with counting(demo) as made:
        proxies_cm = proxies_for(demo)
        proxies = demo.loop.run(proxies_cm.__aenter__())
        try:
            bounds = chaos_cell(demo, cell, proxies)
            injector = demo.on_loop(
                lambda: Injector(demo, proxies, bounds, schedule, _no_hold, events=[])
            )
            try:
                ended = kill_child(schedule, demo, cell, journal, injector, folder)
            finally:
                demo.loop.run(injector.calm(BATCH_LIMIT))
                demo.loop.run(injector.finish())
                outcome.timeline = injector.timeline()
                demo.on_loop(lambda: _drop_all(proxies))  # the links the dead child held
            if ended is not None:  # the batch ended before the kill: nothing to resume
                outcome.state = State(ended)
            else:
                outcome.state = resumed(demo, cell, journal, capsys, outcome)
        finally:
            demo.loop.run(proxies_cm.__aexit__(None, None, None))
    check_record(schedule, demo, journal, before, made, outcome, capsys)


def _drop_all(proxies: dict[str, FaultProxy]) -> None:
    for proxy in proxies.values():
        proxy.drop()


async def _no_hold(cause: str) -> object:
    """A child run has no operator to Hold it (its schedule draws no Hold)."""
    raise AssertionError(f"no operator Hold in a child run: {cause}")


def kill_child(
    schedule: Schedule, demo: Served, cell: Path, journal: Path, injector: Injector, folder: Path
) -> str | None:
    """Run the batch in a child, faults at its step starts, SIGKILL it at `kill_at`; the
    state it ended in if it ended first, else None (killed)."""
    assert schedule.kill_at is not None
    child = run_child(PRESS_FIT, cell, schedule.parts, journal, folder)
    out = Lines(child)
    try:
        seen = 0
        deadline = time.monotonic() + BATCH_LIMIT
        while seen < schedule.kill_at and child.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"step start #{schedule.kill_at} not reached:\n{out.lines}")
            starts = sum(1 for line in list(out.lines) if STEP_LINE.match(line))
            for _ in range(starts - seen):
                demo.on_loop(injector.step_started)
            seen = starts
            time.sleep(0.005)  # a poll interval on the child's output; the deadline rules
        if child.poll() is None:
            injector.note(f"SIGKILL at step start #{seen}")
            child.send_signal(signal.SIGKILL)  # no cleanup: nothing more from the controller
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    lines = out.rest(5)
    if child.returncode == -signal.SIGKILL:
        return None
    injector.note(f"the child ended first, exit {child.returncode}")
    found = [line.removeprefix("outcome: ") for line in lines if line.startswith("outcome: ")]
    assert found, "\n".join(lines)
    return found[0]


#: resume's line for a step in progress that is not run again when its outcome is unknown.
NOT_AGAIN_LINE = re.compile(r"^unknown outcome: (press\.cycle_start := true|robot\.\w+ was called)")
#: A `cellctl run` line (off a terminal) that says a step started.
STEP_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d+ )?step \S+ \S+ started")


def resumed(
    demo: Served, cell: Path, journal: Path, capsys: pytest.CaptureFixture[str], outcome: Outcome
) -> State | None:
    """`cellctl resume` (Held, the safe state written: checked raw on every device), then
    `resume --choice` (skip what NOT_AGAIN names, else retry) to the end; its end state."""
    held = cli(capsys, "resume", "--cell", cell, "--journal", journal)
    if held.exit_code == 1 and "nothing to resume" in held.err:
        return None  # killed after batch_ended: the record says how it ended
    if held.exit_code != 3 or "Traceback" in held.out + held.err:
        outcome.problems.append(f"resume: exit {held.exit_code}, not 3 (Held): {held}")
        return None
    wrong = demo.loop.run(safe_state_held(demo))
    if wrong:
        outcome.problems.append(f"resumed Held, but the devices hold {wrong}, not the safe state")
    # As in the batch: what may have started a move or a press cycle is skipped, not redone.
    again = not any(NOT_AGAIN_LINE.search(line) for line in held.out.splitlines())
    choice = "retry" if again else "skip"
    ended = cli(capsys, "resume", "--cell", cell, "--journal", journal, "--choice", choice)
    if ended.outcome is None or "Traceback" in ended.out + ended.err:
        outcome.problems.append(f"resume --choice skip: exit {ended.exit_code}: {ended}")
        return None
    return State(ended.outcome)


# --- what a seed found, pinned down ---------------------------------------------------------------


def test_a_restarted_opcua_simulator_serves_what_its_model_did_while_it_was_down(
    demo: Served,
) -> None:
    """A robot killed mid-move and restarted: its move ended meanwhile (its model says not
    busy), and the restarted server says so too, not the busy of the moment it was built
    (seed 26 of the chaos schedules: the batch then waited for `not robot.busy` forever)."""
    server = demo.simulator.servers["robot"]
    model = demo.simulator.models["robot"]

    async def restart() -> object:
        await server.stop()
        model.set("busy", True)
        await server.prepare()  # built while the robot is busy ...
        model.set("busy", False)  # ... whose move ends before the endpoint opens:
        await server.publish("robot", model.image.take_dirty())  # as the runner does it
        await server.start()
        return await opcua_value(demo.cell, "robot.busy")

    try:
        assert demo.loop.run(restart()) is False
    finally:
        demo.on_loop(lambda: model.set("busy", False))
