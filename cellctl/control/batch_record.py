"""A batch's record in the journal, for every controller that runs batches (`cellctl run`,
`cellctl resume`, `cellctl serve`): the journal opened and the batch_started row on disk before
any device is touched, the parts counter's reads, the batch_ended row, the journal's failure
mid-batch and the record's close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from cellctl.control.controller import Controller
from cellctl.control.events import BatchEnded
from cellctl.control.journal.events import batch_started_body
from cellctl.control.journal.recorder import (
    BatchRecorder,
    ended_body,
    file_sha256,
    new_batch_id,
    open_batch,
    os_user,
    process_fields,
)
from cellctl.control.journal.rows import JournalRow, Kind, canonical_json, format_at
from cellctl.control.journal.store import JournalStore, JournalUnavailable, NewRow, SqliteStore
from cellctl.control.journal.writer import JournalWriter
from cellctl.control.machine import Mode
from cellctl.control.parts import PartsCount, read_count
from cellctl.control.resume import RESUMED, ResumePoint, refuse_unfinished
from cellctl.recipe import LoadedRecipe, Recipe
from drivers.base import Value

__all__ = [
    "close_record",
    "count_start",
    "end_record",
    "hold_on_failure",
    "parts_count",
    "parts_fields",
    "reopen_record",
    "start_record",
]

# The batch module's logger: what the record says in the log is the run's.
log = logging.getLogger("cellctl.cli.batch")


def parts_count(loaded: LoadedRecipe) -> PartsCount | None:
    """The parts counter the recipe names (read before Start and at the end), or None."""
    counted = loaded.recipe.parts
    if counted is None:
        return None
    tag = loaded.cell.tags[counted.counter]
    return PartsCount(counted.counter, tag.datatype)


def parts_fields(parts: PartsCount | None) -> dict[str, Any] | None:
    """The batch_ended row's parts fields, or None when the recipe names no counter."""
    return None if parts is None else parts.ended_fields()


def start_record(
    path: Path,
    loaded: LoadedRecipe,
    parameters: Mapping[str, Value],
    *,
    operator: str | None,
    mode: Mode,
    sim: bool,
    open_store: Callable[[Path], JournalStore],
    on_failure: Callable[[str], None],
) -> BatchRecorder:
    """The journal at `path` opened (by `open_store`) and the batch_started row on disk: the
    recorder (its writer calls `on_failure`); JournalUnavailable naming the path and why when
    it cannot be, UnfinishedBatchFirst when a crashed batch of the cell comes first."""
    refuse_unfinished(path, loaded.cell.cell)  # a crashed batch of the cell comes first
    batch = new_batch_id()
    user = os_user()
    cell_file = loaded.cell.source
    # The hash of the bytes that were validated; a cell not loaded from its file here (the
    # testing kit's) is hashed as the file is now.
    cell_sha256 = loaded.cell.sha256 or ""
    if not cell_sha256 and cell_file is not None:
        try:
            cell_sha256 = file_sha256(cell_file)
        except OSError as error:  # say so in the record, not a traceback
            cell_sha256 = f"unreadable: {error.strerror or error}"
    identity = loaded.identity
    body = batch_started_body(
        cell=loaded.cell.cell,
        cell_sha256=cell_sha256,
        recipe=identity.name,
        version=identity.version,
        recipe_sha256=identity.sha256,
        parameters=parameters,
        operator=operator or user,
        mode=mode,
    )
    body.update(
        cell_file=None if cell_file is None else str(cell_file),
        recipe_file=str(loaded.path),
        sim=sim,
        **process_fields(user),
    )
    store = open_batch(open_store(path), batch, body)
    writer = JournalWriter(store, on_failure=on_failure)
    return BatchRecorder(writer, batch)


def hold_on_failure(
    controller: Controller | None, recorder: BatchRecorder | None, reason: str
) -> None:
    """The journal failed mid-batch: the batch fails closed (Held with the safe state)."""
    if controller is not None and recorder is not None:
        # Called from the writer's thread's context: the hold's tasks name the batch too.
        with structlog.contextvars.bound_contextvars(batch=recorder.batch):
            controller.journal_failed(reason)


async def close_record(
    recorder: BatchRecorder,
    controller: Controller | None,
    code: int,
    parts: PartsCount | None,
) -> JournalUnavailable | None:
    """Write batch_ended when the summary did not (the batch never ran), then write what
    is queued and close the journal; what could not be written, or None."""
    recorder.writer.on_failure = None  # the batch is over: nothing more to hold
    if not recorder.ended:
        ran = controller is not None and controller.started_at is not None
        state = str(controller.state) if ran and controller is not None else None
        await recorder.end(ended_body(None, code, state=state, parts=parts_fields(parts)))
    try:
        # Off the loop: close() joins the writer's thread (bounded).
        await asyncio.to_thread(recorder.writer.close)
    except JournalUnavailable as problem:
        log.error("the journal could not be closed: %s", problem)
        return problem
    return None


async def end_record(
    recorder: BatchRecorder, ended: BatchEnded, code: int, parts: PartsCount | None
) -> JournalRow | None:
    """Write the batch_ended row (on disk when this returns): the row, or None."""
    return await recorder.end(ended_body(ended, code, parts=parts_fields(parts)))


async def count_start(
    parts: PartsCount | None, controller: Controller | None, recorder: BatchRecorder | None
) -> None:
    """Read the parts counter fresh from its device (Idle, after Resetting, before Start)
    and record it, on disk before Start (`resume` counts from it)."""
    if parts is None or controller is None:
        return
    parts.start, parts.start_error = await read_count(controller.io, parts.counter)
    if recorder is None:
        return
    # A journal that fails: the writer's on_failure holds the batch, the summary says so.
    with contextlib.suppress(JournalUnavailable):
        await recorder.writer.durable(recorder.batch, Kind.NOTICE, parts.start_body())


def reopen_record(
    path: Path,
    point: ResumePoint,
    recipe: Recipe,
    rows: Sequence[JournalRow],
    *,
    operator: str,
    choice: str | None,
    on_failure: Callable[[str], None],
) -> BatchRecorder:
    """A crashed batch's record taken up: the `resumed` notice row on disk (who, from which
    process, where the batch stands), and its recorder, whose intent ids go on from the ones
    before the crash ("w3" or "c2" names one in the record)."""
    user = os_user()
    body = {
        "text": f"resumed by {operator}: taken up Held {point.describe(recipe)}",
        "level": "warning",
        RESUMED: True,
        "operator": operator,
        **process_fields(user),
        "choice": choice,
        "point": point.to_json(),
    }
    store = SqliteStore(path, create=False)
    try:
        row = NewRow(point.batch, format_at(time.time()), Kind.NOTICE, canonical_json(body))
        store.append([row])
    except BaseException:
        store.close()
        raise
    writer = JournalWriter(store, on_failure=on_failure)
    return BatchRecorder(
        writer,
        point.batch,
        intents_before=sum(1 for row in rows if row.kind == Kind.INTENT),
        calls_before=sum(1 for row in rows if row.kind == Kind.CALL_INTENT),
    )
