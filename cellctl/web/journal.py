"""The service as the web view sees it: every surface's Backend, plus the journal's history and
batch reports, read from the journal file (read-only, off every event loop: the web view calls
them in a worker thread, never on the control loop)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cellctl.cell import Cell
from cellctl.reports.reading import history_json, report_html_of
from cellctl.service.api import Accepted, Backend, Caller, Refused, Request, ServiceStatus
from cellctl.values import TagValue


class ServedWithJournal:
    """A service (any Backend) and its journal, as cellctl.web.app.WebBackend."""

    def __init__(self, service: Backend, journal: Path) -> None:
        self.service = service
        self.journal = journal
        self.cell: Cell = service.cell

    def status(self) -> ServiceStatus:
        """The service's status now."""
        return self.service.status()

    def tag_values(self) -> Mapping[str, TagValue]:
        """The latest value of every tag."""
        return self.service.tag_values()

    def listen(
        self,
        on_status: Callable[[ServiceStatus], None],
        on_tags: Callable[[Mapping[str, TagValue]], None],
    ) -> Callable[[], None]:
        """The service's status and tag changes."""
        return self.service.listen(on_status, on_tags)

    async def submit(self, caller: Caller, request: Request) -> Accepted | Refused:
        """A request through the service's command layer."""
        return await self.service.submit(caller, request)

    def security_refused(self, what: str, who: str, peer: str, reason: str) -> None:
        """A refused login, on the service's record."""
        self.service.security_refused(what, who, peer, reason)

    def batch_detail(self) -> dict[str, Any] | None:
        """The loaded batch's step tree."""
        return self.service.batch_detail()

    def recipes_info(self) -> list[dict[str, Any]]:
        """The released recipes and their parameters."""
        return self.service.recipes_info()

    def history(self, last: int) -> list[dict[str, Any]]:
        """The journal's last batches, as `cellctl history --json` prints them (blocking: call
        it in a worker thread)."""
        return history_json(self.journal, last)

    def report_html(self, batch: str) -> str | None:
        """A batch's HTML report, None for an unknown batch (blocking: a worker thread)."""
        return report_html_of(self.journal, batch)
