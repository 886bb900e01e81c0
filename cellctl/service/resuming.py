"""A service that starts on a journal holding an unfinished batch of its cell (its controller
was killed mid-batch) takes that batch up first: Held at its step, the safe state written,
never running until a client unholds it (as `cellctl resume` does, through the service)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellctl.control.batch_record import reopen_record
from cellctl.control.journal.recorder import BatchRecorder
from cellctl.control.journal.rows import JournalRow
from cellctl.control.journal.store import SqliteStore
from cellctl.control.machine import State
from cellctl.control.parts import recorded_start
from cellctl.control.resume import (
    ABANDONED,
    ResumePoint,
    ResumeRefused,
    UnfinishedBatch,
    batch_alive,
    close_abandoned,
    ever_started,
    recorded_recipe,
    resume_point,
    unfinished_batches,
)
from cellctl.errors import CellctlError
from cellctl.recipe import Recipe
from cellctl.recipe.plan import make_plan
from cellctl.service.core import CellService, ServedBatch
from cellctl.service.detail import BatchDetail

__all__ = ["CannotTakeUp", "resume_unfinished", "unfinished_of"]


class CannotTakeUp(CellctlError):
    """The cell's unfinished batch cannot be taken up by the service (its recipe changed or
    is gone, its record does not say where it stood): the service does not start."""


def _text(value: Any) -> str:
    """A recorded parameter as `-p` takes it again."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def unfinished_of(journal: Path, cell: str) -> tuple[UnfinishedBatch, list[JournalRow]] | None:
    """The latest batch of `cell` in `journal` that never ended and whose process is gone,
    with its rows; None when there is none."""
    if not journal.exists():
        return None
    store = SqliteStore(journal, readonly=True)
    try:
        for found in reversed(unfinished_batches(store)):
            if found.cell == cell and not batch_alive(found.process):
                return found, list(store.rows(found.batch))
    finally:
        store.close()
    return None


async def resume_unfinished(service: CellService) -> str | None:
    """Take up the cell's unfinished batch, if there is one: Held at its step. What the
    service says of it (a line for its start), or None; CannotTakeUp when it cannot be."""
    journal = service.options.journal
    hit = await asyncio.to_thread(unfinished_of, journal, service.cell.cell)
    if hit is None:
        return None
    found, rows = hit
    batch, started = found.batch, found.started
    if not ever_started(rows):
        # Loaded, perhaps reset, never started: nothing of the recipe ran; it is closed.
        cause = "loaded but never started when its service stopped: closed at the next start"
        await asyncio.to_thread(close_abandoned, journal, [found], cause)
        return f"batch {batch} was loaded but never started: closed ({ABANDONED})"
    try:
        recipe_file = recorded_recipe(found)
    except CellctlError as problem:
        raise CannotTakeUp(
            f"{problem} (end the batch with `cellctl resume {batch} --choice abort` while the "
            "service is stopped)"
        ) from None
    loaded = await asyncio.to_thread(service.shelf.load_file, recipe_file)
    recorded: Mapping[str, Any] = started.get("parameters") or {}
    plan = make_plan(loaded, [f"{k}={_text(v)}" for k, v in recorded.items()])
    parameters = {p.name: p.value for p in plan.parameters}
    try:
        point = resume_point(loaded.recipe, batch, rows)
    except ResumeRefused as refused:
        raise CannotTakeUp(
            f"batch {batch} cannot be taken up where it stood: {refused}; end it with "
            f"`cellctl resume {batch} --choice abort` while the service is stopped"
        ) from None
    holder: list[ServedBatch] = []
    recorder = await asyncio.to_thread(
        _reopen, journal, point, loaded.recipe, rows, service, holder
    )
    operator = str(started.get("operator") or "service")
    served = service.make_served(loaded, parameters, recorder, operator, State.STOPPED)
    served.detail = BatchDetail.of(plan)
    holder.append(served)
    if served.parts is not None:
        if started.get("sim") is True:
            served.parts.start_error = "its count was on the simulators that died with it"
        else:
            served.parts.start, served.parts.start_error = recorded_start(
                rows, served.parts.counter
            )
    controller = served.controller
    await service.take_up(
        served, lambda: controller.resume_batch(point, stop_when_held=lambda: False)
    )
    return (
        f"batch {batch} ({loaded.identity}) never ended: taken up Held "
        f"{point.describe(loaded.recipe)}"
    )


def _reopen(
    journal: Path,
    point: ResumePoint,
    recipe: Recipe,
    rows: Sequence[JournalRow],
    service: CellService,
    holder: list[ServedBatch],
) -> BatchRecorder:
    """The batch's record reopened by the service (its writer's failure holds the batch)."""
    return reopen_record(
        journal,
        point,
        recipe,
        rows,
        operator="service",
        choice=None,
        on_failure=lambda reason: service.journal_failed(holder, reason),
    )
