"""One batch's record in the journal: its first row written before any device is touched, the
controller's events queued as rows (a listener that never waits), each recorded write's intent
on disk before the write is sent and its confirmation after (the controller's WriteLedger), the
operator's commands with who gave them, and the batch_ended row with the run's exit code.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import secrets
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cellctl import __version__
from cellctl.control.commands import OperatorCommand
from cellctl.control.events import BatchEnded, Event, TagWritten
from cellctl.control.journal.events import (
    Body,
    call_intent_body,
    command_body,
    confirmation_body,
    intent_body,
    rows_for,
)
from cellctl.control.journal.rows import JournalRow, Kind, canonical_json, format_at
from cellctl.control.journal.store import (
    JournalStore,
    JournalUnavailable,
    NewRow,
    SqliteStore,
)
from cellctl.control.journal.writer import JournalWriter
from cellctl.control.ledger import IntentNotRecorded
from drivers.base import Value


def new_batch_id(now: float | None = None) -> str:
    """A batch id that sorts by its UTC start and reads as one: 'B-20261206-135501-3f2a'."""
    stamp = datetime.fromtimestamp(time.time() if now is None else now, UTC)
    return f"B-{stamp:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def os_user() -> str:
    """The name of the user this process runs as (who acted, when nobody was named)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's numeric uid)
        return f"uid {os.getuid()}"


def process_fields(user: str) -> dict[str, Any]:
    """Who and where, as every row that opens a record names them: the OS user, the process,
    the host and cellctl's version."""
    return {
        "os_user": user,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "cellctl_version": __version__,
    }


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def open_batch(store: JournalStore, batch: str, started: Mapping[str, Any]) -> JournalStore:
    """Write the batch_started row to a journal just opened, on disk when this returns;
    JournalUnavailable naming the path and why it cannot be (then the batch must not start,
    and the store is closed)."""
    try:
        row = NewRow(batch, format_at(time.time()), Kind.BATCH_STARTED, canonical_json(started))
        store.append([row])
    except BaseException:
        store.close()
        raise
    return store


class BatchRecorder:
    """The record of one running batch, on a JournalWriter (see the module docstring)."""

    def __init__(
        self, writer: JournalWriter, batch: str, *, intents_before: int = 0, calls_before: int = 0
    ) -> None:
        """`intents_before`, `calls_before`: how many the batch recorded before (a resumed
        batch numbers its intents on: "w3" names one write in the whole record)."""
        self.writer = writer
        self.batch = batch
        self._intents = intents_before
        self._calls = calls_before
        #: The batch_ended row once it is on disk: its hash is the chain's head for the batch.
        self.last: JournalRow | None = None
        #: True once batch_ended was queued (whether or not it reached the disk).
        self.ended = False

    # -- the controller's listener: queue only, never wait -----------------------------------

    def event(self, event: Event) -> None:
        """Queue the rows of a controller event."""
        if isinstance(event, TagWritten):
            return  # every write is recorded by its intent and confirmation rows
        if isinstance(event, BatchEnded):
            return  # the run writes batch_ended itself, with its exit code (end())
        for kind, body in rows_for(event):
            self.writer.append(self.batch, kind, body, at=event.at)

    def command(self, order: OperatorCommand) -> None:
        """Queue the row of an operator command: which, who, and how it was given."""
        body = command_body(order.command, order.user, order.cause)
        body["choice"] = order.choice
        self.writer.append(self.batch, Kind.COMMAND, body)

    # -- the WriteLedger ---------------------------------------------------------------------

    async def intent(self, tag: str, value: Value, path: str | None, step_id: str | None) -> object:
        """The write's intent, on disk before it returns; IntentNotRecorded when it cannot be."""
        self._refuse_when_failed()
        self._intents += 1
        intent_id = f"w{self._intents}"
        body = intent_body(intent_id, tag, value, path, step_id)
        return await self._durable_intent(Kind.INTENT, intent_id, body)

    async def call_intent(
        self, method: str, args: Mapping[str, Value], path: str | None, step_id: str | None
    ) -> object:
        """The call's intent, on disk before it returns; IntentNotRecorded when it cannot be.
        Its answer is the `call` row; a failure is a confirmation naming this intent."""
        self._refuse_when_failed()
        self._calls += 1
        intent_id = f"c{self._calls}"  # apart from the writes' ids: resume pairs those alone
        body = call_intent_body(intent_id, method, args, path, step_id)
        return await self._durable_intent(Kind.CALL_INTENT, intent_id, body)

    def _refuse_when_failed(self) -> None:
        """IntentNotRecorded when the writer has failed: nothing is queued (no id is used, no
        confirmation either)."""
        failed = self.writer.failed
        if failed is not None:
            raise IntentNotRecorded(f"journal cannot be written: {failed}")

    async def _durable_intent(self, kind: str, intent_id: str, body: Body) -> str:
        """Write an intent row and wait for it to be on disk; its id, or IntentNotRecorded."""
        try:
            await self.writer.durable(self.batch, kind, body)
        except JournalUnavailable as error:
            # The intent stays queued (it may reach the disk later): its confirmation says
            # that the write never left.
            self.confirmed(intent_id, "not sent: journal unavailable")
            raise IntentNotRecorded(f"journal cannot be written: {error.reason}") from None
        return intent_id

    def confirmed(self, token: object, error: str | None, *, unknown: bool = False) -> None:
        """Queue the confirmation of the write (or call) `token` (never waits)."""
        body = confirmation_body(str(token), error is None, error)
        body["unknown"] = unknown
        self.writer.append(self.batch, Kind.CONFIRMED, body)

    def unavailable(self) -> str | None:
        """Why the journal cannot be written now, or None."""
        return self.writer.failed

    # -- the end -------------------------------------------------------------------------------

    async def end(self, body: Body) -> JournalRow | None:
        """Write the batch_ended row and wait for it (and every row before it) to be on disk;
        the row, or None when the journal cannot be written (the row stays queued)."""
        self.ended = True
        try:
            self.last = await self.writer.durable(self.batch, Kind.BATCH_ENDED, body)
        except JournalUnavailable:
            return None
        return self.last


def ended_body(
    ended: BatchEnded | None,
    exit_code: int,
    *,
    state: str | None = None,
    parts: Mapping[str, Any] | None = None,
) -> Body:
    """The body of the batch_ended row: the controller's end (None: the batch never ran), the
    run's exit code, and the parts made when the recipe names a counter (`parts`: the fields
    of cellctl.control.parts.PartsCount.ended_fields; else `parts` is null)."""
    body = _ended(ended, exit_code, state)
    if parts is not None:
        body.update(parts)
    return body


def _ended(ended: BatchEnded | None, exit_code: int, state: str | None) -> Body:
    if ended is None:
        return {
            "state": state or "not started",
            "duration": 0.0,
            "steps_done": 0,
            "faults": [],
            "cause": None,
            "parts": None,
            "exit_code": exit_code,
        }
    return {
        "state": ended.state,
        "duration": ended.duration,
        "steps_done": ended.steps_done,
        "faults": list(ended.faults),
        "cause": ended.cause,
        "parts": None,
        "exit_code": exit_code,
    }


class WriteRecord:
    """The record of one `cellctl write` (no batch): a `write` row per tag on disk before the
    write is sent (who, what, the cell), then its confirmation row. Synchronous: a one-shot
    command has nothing else to do on its loop meanwhile."""

    def __init__(self, store: SqliteStore, about: Mapping[str, Any]) -> None:
        self.store = store
        #: What every write row says besides the tag and value: the cell, who, from where.
        self.about = dict(about)
        self._id = f"cmd-{secrets.token_hex(4)}"
        self._count = 0

    def _append(self, kind: str, body: Body) -> None:
        self.store.append([NewRow(None, format_at(time.time()), kind, canonical_json(body))])

    def intent(self, tag: str, value: Value) -> str:
        """Record the write about to be sent (on disk when this returns); JournalUnavailable
        when it cannot be (then it must not be sent)."""
        self._count += 1
        intent_id = f"{self._id}-{self._count}"
        self._append(Kind.WRITE, {**self.about, "intent": intent_id, "tag": tag, "value": value})
        return intent_id

    def confirmed(self, intent_id: str, error: str | None, *, unknown: bool = False) -> None:
        """Record what the device answered (on disk when this returns)."""
        body = confirmation_body(intent_id, error is None, error)
        body["unknown"] = unknown
        self._append(Kind.CONFIRMED, body)

    def close(self) -> None:
        """Close the journal."""
        self.store.close()
