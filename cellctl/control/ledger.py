"""The write ledger: what a recipe's write (and Resetting's, and Unholding's restores) and a
recipe's call of a device method tell the batch record before they leave for the device and
once the device answered.

`intent` returns only once the intent is durable (on disk): a write whose intent could not be
recorded is not sent (IntentNotRecorded). Safe-state and heartbeat writes never go through it:
they never wait for the record. The default, NO_LEDGER, records nothing (tests, and callers
without a journal).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from cellctl import exitcodes
from cellctl.errors import CellctlError
from drivers.base import Value


class IntentNotRecorded(CellctlError):
    """A write's intent could not be made durable: the write was not sent."""

    exit_code = exitcodes.JOURNAL


class WriteLedger(Protocol):
    """Records each write as an intent before it is sent and a confirmation after."""

    async def intent(self, tag: str, value: Value, path: str | None, step_id: str | None) -> object:
        """Record the write about to be sent; its token once on disk. IntentNotRecorded when it
        cannot be (then the write must not be sent)."""
        ...

    async def call_intent(
        self, method: str, args: Mapping[str, Value], path: str | None, step_id: str | None
    ) -> object:
        """Record the call about to be made (a device action, as a write); its token once on
        disk. IntentNotRecorded when it cannot be (then the call must not be made)."""
        ...

    def confirmed(self, token: object, error: str | None, *, unknown: bool = False) -> None:
        """Record how the write (or call) of `token` ended: None for confirmed, else the error;
        `unknown`: it may have reached the device (its outcome is unknown). Never waits."""
        ...

    def unavailable(self) -> str | None:
        """Why writes cannot be recorded now (the batch may not go on), or None."""
        ...


class NoLedger:
    """A ledger that records nothing: every write goes out at once."""

    async def intent(self, tag: str, value: Value, path: str | None, step_id: str | None) -> object:
        """Nothing to record."""
        return None

    async def call_intent(
        self, method: str, args: Mapping[str, Value], path: str | None, step_id: str | None
    ) -> object:
        """Nothing to record."""
        return None

    def confirmed(self, token: object, error: str | None, *, unknown: bool = False) -> None:
        """Nothing to record."""

    def unavailable(self) -> str | None:
        """Always available."""
        return None


#: The ledger of a controller without a journal.
NO_LEDGER = NoLedger()
