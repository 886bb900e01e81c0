"""What `cellctl run` and `cellctl demo` do before anything touches a device: every input
checked (recipe, cell, parameters, answers, breakpoints), the devices and tags the batch uses
found, the cell served by simulators with --sim, and every device asked once."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cellctl.cell import Cell
from cellctl.cli.validate import open_recipe
from cellctl.control.interlocks import interlock_tags
from cellctl.control.operator import (
    Operator,
    ScriptedOperator,
    check_answered,
    parse_answers,
)
from cellctl.errors import BadValue, CellctlError, did_you_mean
from cellctl.io.drivers import DevicesUnreachable, devices_for_tags
from cellctl.io.session import TagIO
from cellctl.recipe import LoadedRecipe, step_ids
from cellctl.recipe.plan import make_plan
from drivers.base import Value

if TYPE_CHECKING:  # imported when --sim is given: it loads every simulator
    from cellctl.io.sim import CellSimulator


@dataclass
class RunOptions:
    """Everything `cellctl run` was asked to do."""

    recipe: Path
    cell: Path | None = None
    params: list[str] = field(default_factory=list)
    sim: bool = False
    speed: float = 1.0
    step: bool = False
    breaks: list[str] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    operator: str | None = None
    interactive: bool = False
    #: The demo's plant fault (e.g. "light-curtain"), raised mid-batch and cleared again.
    fault: str | None = None
    #: Seconds the run stays, once the batch ended, for the safe state to be confirmed.
    safe_wait: float = 300.0
    #: The journal the batch is recorded in (None: the user's default, see journal.location).
    journal: Path | None = None


@dataclass
class Prepared:
    """A run whose inputs were all checked: nothing has touched a device yet."""

    loaded: LoadedRecipe
    parameters: dict[str, Value]
    operator: Operator | None
    devices: list[str]
    tags: list[str]


class NeedsTerminal(CellctlError):
    """Stepping and breakpoints need somebody at a terminal."""


def prepare(options: RunOptions) -> Prepared:
    """Load and check the recipe, cell, parameters, answers and breakpoints; raises CellctlError."""
    loaded = open_recipe(options.recipe, options.cell)
    # Nothing a run does needs the parsed YAML any more (it locates problems found while
    # loading): dropped, it frees about half the memory a long recipe takes.
    loaded.document = None
    recipe, cell = loaded.recipe, loaded.cell
    plan = make_plan(loaded, options.params)  # checks every -p
    parameters = {p.name: p.value for p in plan.parameters}
    answers = parse_answers(recipe, options.answers)
    ids = step_ids(recipe)
    for wanted in options.breaks:
        if wanted not in ids:
            raise BadValue(
                f"--break {wanted}: recipe {recipe.recipe} has no step {wanted!r}"
                f"{did_you_mean(wanted, ids)}"
            )
    if not options.interactive:
        if options.step or options.breaks:
            raise NeedsTerminal(
                "--step and --break wait for keys at a terminal; stdin/stdout is not one"
            )
        check_answered(recipe, answers)
    tags = list(
        dict.fromkeys(
            [
                *plan.reads,
                *plan.writes,
                *interlock_tags(cell),
                *cell.safe_state,
                *cell.ready_tags,
            ]
        )
    )
    # The devices of those tags (`ready`'s included: every batch prepares the cell), of
    # Resetting's values and of the heartbeat (their tags are written, never polled), and those
    # the recipe only calls methods on.
    written = [*cell.reset_values, *cell.heartbeat_tags]
    # The parts counter is read before Start and after the end, never watched: a counter that
    # fails is a count unknown, not a hold.
    counter = [recipe.parts.counter] if recipe.parts is not None else []
    used = set(devices_for_tags(cell, [*tags, *written, *counter])) | set(plan.devices)
    devices = [name for name in cell.devices if name in used]
    operator = None if options.interactive else ScriptedOperator(answers, options.operator)
    return Prepared(loaded, parameters, operator, devices, tags)


@contextlib.asynccontextmanager
async def served(
    cell: Cell, options: RunOptions
) -> AsyncIterator[tuple[Cell, CellSimulator | None]]:
    """The cell to connect to: served by in-process simulators with --sim, else as written."""
    if not options.sim:
        yield cell, None
        return
    from cellctl.io.sim import CellSimulator

    simulator = CellSimulator(cell, speed=options.speed)
    if options.fault is not None:
        fault_of(simulator, options.fault)  # a fault no model has: refused before a port opens
    async with simulator:
        yield simulator.served_cell, simulator


async def all_answer(io: TagIO, tags: list[str]) -> None:
    """Read every tag once before anything is written: a device that accepted the connection
    but does not answer (or refuses a tag) ends the run with exit 2, nothing written."""
    failed: dict[str, str] = {}
    for value in (await io.read(tags)).values():
        if value.error is not None or value.value is None:
            failed.setdefault(value.device, value.error or f"{value.tag}: no value")
    if failed:
        raise DevicesUnreachable(failed)


def fault_of(simulator: CellSimulator, fault: str) -> tuple[str, str]:
    """(device, fault) for 'device:fault' or a fault name that one plant model has."""
    known = {(d, f) for d, m in simulator.models.items() for f in m.faults()}
    device, _, name = fault.rpartition(":")
    matches = [(d, f) for d, f in known if f == name and device in ("", d)]
    if len(matches) != 1:
        names = ", ".join(sorted(f"{d}:{f}" for d, f in known))
        raise BadValue(f"--fault {fault}: no single plant model has it; known: {names}")
    return matches[0]
