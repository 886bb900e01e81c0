"""The service's own record (the rows of no batch), and where each request is recorded: in the
batch's record while a batch is loaded, else in the service's."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cellctl.control.journal.events import command_body
from cellctl.control.journal.rows import Kind
from cellctl.control.journal.store import JournalUnavailable, SqliteStore
from cellctl.control.journal.writer import JournalWriter
from cellctl.service.api import Accepted, Caller, RefusalKind, Refused, Request
from cellctl.service.served import ServedBatch

# The service's logger, not this module's: its lines read as the service's wherever they come from.
log = logging.getLogger("cellctl.service")


class ServiceRecord:
    """The service's own writer, and the rows of requests and refused logins or certificates."""

    def __init__(self, journal: Path, served: Callable[[], ServedBatch | None]) -> None:
        self._journal = journal
        self._served = served
        #: The service's own writer, once open() ran.
        self.writer: JournalWriter | None = None

    def open(self) -> None:
        """Open the service's own writer on the journal."""
        self.writer = JournalWriter(SqliteStore(self._journal), on_failure=self._unrecorded)

    async def close(self) -> None:
        """Close the service's own writer (its queued rows on disk first), if it was opened."""
        if self.writer is not None:
            with contextlib.suppress(JournalUnavailable):
                await asyncio.to_thread(self.writer.close)

    def _unrecorded(self, reason: str) -> None:
        log.error("the service's record cannot be written: %s", reason)

    def note(self, kind: str, body: Mapping[str, Any]) -> None:
        """A row of the service's own (no batch): started, stopped, requests outside a batch,
        refused logins and certificates."""
        if self.writer is not None:
            self.writer.append(None, kind, body)

    def _target(self) -> tuple[JournalWriter | None, str | None]:
        """Where a request is recorded: the batch's record while one is loaded, else the
        service's."""
        served = self._served()
        if served is not None and served.recorder.writer.on_failure is not None:
            return served.recorder.writer, served.recorder.batch
        return self.writer, None

    def request(self, caller: Caller, request: Request, answer: Accepted | Refused) -> None:
        """Every request, accepted or refused, on record with its user."""
        writer, batch = self._target()
        if writer is None:
            return
        source = " ".join(p for p in (caller.via, caller.peer) if p)
        if isinstance(answer, Accepted):
            body = command_body(request.describe(), caller.name, source)
            body.update(role=caller.role.label, result=answer.result)
            writer.append(batch, Kind.COMMAND, body)
        else:
            writer.append(
                batch,
                Kind.REFUSED,
                {
                    "command": request.describe(),
                    "reason": answer.reason,
                    "blocked": answer.kind is not RefusalKind.STATE,
                    "operator": caller.name,
                    "role": caller.role.label,
                    "source": source,
                    "refusal": answer.kind.value,
                },
            )

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """Record a refused login or certificate."""
        log.warning("%s refused: %s from %s: %s", what, who, peer, reason)
        writer, batch = self._target()
        if writer is not None:
            writer.append(
                batch,
                Kind.REFUSED,
                {
                    "command": what,
                    "reason": reason,
                    "blocked": True,
                    "operator": who,
                    "source": peer,
                    "refusal": "login" if what == "login" else "certificate",
                },
            )
