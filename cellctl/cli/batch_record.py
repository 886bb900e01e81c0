"""The batch's record for `cellctl run` (cellctl.cli.batch): the record opened from the run's
options (cellctl.control.batch_record does the work, for `serve` too), and what the summary
names. BatchRun delegates to these functions; `cellctl resume` (cellctl.cli.resume_run)
overrides the BatchRun methods that call them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cellctl.cli.prepare import Prepared, RunOptions
from cellctl.cli.views.summary import BatchIdentity
from cellctl.control.batch_record import (
    close_record,
    count_start,
    end_record,
    hold_on_failure,
    parts_fields,
    start_record,
)
from cellctl.control.batch_record import parts_count as recipe_parts_count
from cellctl.control.journal.location import default_journal_path
from cellctl.control.journal.recorder import BatchRecorder, os_user
from cellctl.control.journal.store import JournalStore
from cellctl.control.machine import Mode
from cellctl.control.parts import PartsCount

__all__ = [
    "close_record",
    "count_start",
    "end_record",
    "hold_on_failure",
    "open_record",
    "parts_count",
    "parts_fields",
]


def parts_count(prepared: Prepared) -> PartsCount | None:
    """The parts counter the recipe names (read before Start and at the end), or None."""
    return recipe_parts_count(prepared.loaded)


def open_record(
    options: RunOptions,
    prepared: Prepared,
    mode: Mode,
    open_store: Callable[[Path], JournalStore],
    on_failure: Callable[[str], None],
) -> tuple[BatchRecorder, BatchIdentity]:
    """The journal opened (by `open_store`) and the batch_started row on disk: the recorder
    (its writer calls `on_failure`) and what the summary names; JournalUnavailable naming the
    path and why when it cannot be (nothing else has happened yet)."""
    path = options.journal if options.journal is not None else default_journal_path()
    operator = options.operator or os_user()
    recorder = start_record(
        path,
        prepared.loaded,
        prepared.parameters,
        operator=operator,
        mode=mode,
        sim=options.sim,
        open_store=open_store,
        on_failure=on_failure,
    )
    named = BatchIdentity(recorder.batch, path, dict(prepared.parameters), operator, time.time())
    return recorder, named
