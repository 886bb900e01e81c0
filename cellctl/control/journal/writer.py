"""The journal's writer thread: rows queued from the control loop, committed off it.

`append` queues a row and returns at once (safe-state and heartbeat writes never wait for the
journal); `durable` queues one and returns once the commit holding it is on disk (a recipe's
write waits for its intent). The thread commits everything queued in one transaction (group
commit), so a burst of rows costs one fsync; rows nobody waits for wait up to LINGER seconds
for a durable one to share its commit.

A failed commit marks the writer failed: `on_failure(reason)` is called (on the loop), every
durable wait fails with JournalUnavailable, and the rows that could not be written stay queued,
in order: `close()` tries them once more (a run never goes on after a failure: the batch holds
and `resume` takes it up), and `retry()` is there for a caller that finds the journal writable
again. The queue is bounded; a row that
finds it full is counted, and a notice row saying how many were lost is written before the next
one, so none disappears unsaid.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cellctl.control.journal.rows import JournalRow, Kind, canonical_json, field_problem, format_at
from cellctl.control.journal.store import JournalStore, JournalUnavailable, NewRow

#: Rows the writer keeps in memory while the journal cannot be written (about 0.5 kB each).
BACKLOG = 100_000
#: Rows in one transaction at most: a long backlog is written in several commits.
GROUP = 1000
#: Seconds close() waits for the thread to write what is queued.
CLOSE_WAIT = 10.0
#: Seconds rows nobody waits for may stay queued for a durable row to share their commit: a
#: step's end, the next step's start and its write's intent then cost one fsync, not two. A
#: crash loses at most this much of such rows (a lost confirmation reads as unknown outcome).
LINGER = 0.05


@dataclass
class _Pending:
    """A queued row (None: a flush's mark) and who waits for its commit."""

    row: NewRow | None
    future: asyncio.Future[JournalRow | None] | None = None
    loop: asyncio.AbstractEventLoop | None = None


def _settle(future: asyncio.Future[JournalRow | None], result: JournalRow | None) -> None:
    if not future.done():  # the waiter may have been cancelled
        future.set_result(result)


def _fail(future: asyncio.Future[JournalRow | None], error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


class JournalWriter:
    """Appends rows to a store from its own thread (see the module docstring)."""

    def __init__(
        self,
        store: JournalStore,
        *,
        on_failure: Callable[[str], None] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        backlog: int = BACKLOG,
    ) -> None:
        """Start the thread. `on_failure(reason)` runs on `loop` (default: the running loop;
        with none, on the writer's thread) when a commit fails or the thread dies."""
        self.store = store
        self.on_failure = on_failure
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._limit = backlog
        self._cond = threading.Condition()
        self._queue: deque[_Pending] = deque()
        self._failed: str | None = None
        self._closing = False
        self._dropped = 0
        self._dropped_batch: str | None = None
        #: When a row came to an empty queue (monotonic): the start of its LINGER.
        self._first_queued = 0.0
        #: The group being committed, and whether its commit returned: the thread's death
        #: requeues an unwritten group, and fails the waits of a written one.
        self._in_flight: list[_Pending] = []
        self._group_written = False
        self._thread = self._start()

    def _start(self) -> threading.Thread:
        # A daemon: a process that ends without close() is not held up by it (an open SQLite
        # transaction is rolled back by the next opener); close() is how rows are flushed.
        thread = threading.Thread(target=self._run, name="cellctl-journal", daemon=True)
        thread.start()
        return thread

    @property
    def failed(self) -> str | None:
        """Why the last commit failed, or None while the journal is written."""
        return self._failed

    @property
    def backlog(self) -> int:
        """Rows queued and not yet on disk."""
        with self._cond:
            return sum(1 for p in self._queue if p.row is not None)

    @property
    def dropped(self) -> int:
        """Rows not kept since the last notice about it (the backlog was full)."""
        return self._dropped

    def _new_row(
        self, batch: str | None, kind: str, body: Mapping[str, Any], at: float | None
    ) -> NewRow:
        """The row to queue; TypeError/ValueError now, on the caller's thread, for a body or a
        field that cannot be journaled (a bug), so that it never blocks the writer."""
        row = NewRow(
            batch, format_at(time.time() if at is None else at), str(kind), canonical_json(body)
        )
        problem = field_problem(row.batch, row.at, row.kind, row.body)
        if problem is not None:
            raise ValueError(f"cannot journal a row: {problem}")
        return row

    def append(
        self, batch: str | None, kind: str, body: Mapping[str, Any], *, at: float | None = None
    ) -> None:
        """Queue a row (`at`: the event's time.time(), default now); never waits, never raises
        for the journal's state. A row that finds the backlog full is counted, not kept."""
        row = self._new_row(batch, kind, body, at)
        report = None
        with self._cond:
            if len(self._queue) >= self._limit:
                if self._dropped == 0:
                    report = f"the journal's backlog is full ({self._limit} rows): rows are lost"
                    self._dropped_batch = batch
                self._dropped += 1
            else:
                self._note_dropped()
                self._queue.append(_Pending(row))
                if len(self._queue) == 1:
                    # Not woken: an idle thread looks every LINGER seconds, and rows nobody
                    # waits for are committed LINGER after the first of them came (_linger),
                    # so a step costs one thread switch (its durable intent), not two.
                    self._first_queued = time.monotonic()
        if report is not None:
            self._report(report)

    def _note_dropped(self) -> None:
        """Queue the notice of rows lost to a full backlog, once there is room (lock held)."""
        if self._dropped and len(self._queue) < self._limit:
            text = (
                f"{self._dropped} journal rows were lost: the journal could not be written "
                f"and its backlog of {self._limit} rows was full"
            )
            body = canonical_json({"text": text, "level": "error"})
            at = format_at(time.time())
            self._queue.append(_Pending(NewRow(self._dropped_batch, at, Kind.NOTICE, body)))
            self._dropped = 0

    async def durable(
        self, batch: str | None, kind: str, body: Mapping[str, Any], *, at: float | None = None
    ) -> JournalRow:
        """Queue a row and return it once the commit that holds it is on disk; JournalUnavailable
        at once when the writer has failed, or when that commit fails (the row stays queued)."""
        row = self._new_row(batch, kind, body, at)
        stored = await self._wait_for(row)
        assert stored is not None  # a row's future is settled with the row as stored
        return stored

    async def flush(self) -> None:
        """Return once every row queued before the call is on disk; JournalUnavailable when the
        writer has failed or fails meanwhile."""
        await self._wait_for(None)

    async def _wait_for(self, row: NewRow | None) -> JournalRow | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[JournalRow | None] = loop.create_future()
        with self._cond:
            if self._failed is not None:
                raise JournalUnavailable(self.store.where, self._failed)
            if self._closing:
                raise JournalUnavailable(self.store.where, "the journal writer is closed")
            if row is not None and len(self._queue) >= self._limit:
                raise JournalUnavailable(self.store.where, "the journal's backlog is full")
            self._note_dropped()
            self._queue.append(_Pending(row, future, loop))
            self._cond.notify()
        return await future

    def retry(self) -> None:
        """Try the backlog again (after a failure); a thread that died is started again."""
        with self._cond:
            self._failed = None
            self._cond.notify()
            if not self._thread.is_alive() and not self._closing:
                self._thread = self._start()

    def close(self, timeout: float = CLOSE_WAIT) -> None:
        """Write what is queued (one more try after a failure), stop the thread within
        `timeout` seconds, close the store; JournalUnavailable naming how many rows could not
        be written."""
        with self._cond:
            self._closing = True
            self._failed = None
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            left = sum(1 for p in self._queue if p.row is not None) + self._dropped
            reason = self._failed
        if self._thread.is_alive():
            raise JournalUnavailable(
                self.store.where,
                f"the journal writer did not finish within {timeout:g} s: "
                f"{left} rows not known to be written",
            )
        self.store.close()
        if left:
            raise JournalUnavailable(
                self.store.where, f"{left} rows could not be written: {reason or 'closed'}"
            )

    def _run(self) -> None:
        """The thread: commit what is queued, group by group, until closed."""
        try:
            while self._write_next():
                pass
        except BaseException as error:  # a bug: it must reach on_failure, not die unseen
            with self._cond:
                group, self._in_flight = self._in_flight, []
                if not self._group_written:  # kept, in order, at the front
                    self._queue.extendleft(reversed(group))
            for pending in group if self._group_written else ():
                if pending.future is not None and pending.loop is not None:
                    failure = JournalUnavailable(self.store.where, "the journal writer died")
                    self._call(pending.loop, _fail, pending.future, failure)
            reason = f"the journal writer thread died: {type(error).__name__}: {error}"
            self._failed_with(reason, always=True)

    def _write_next(self) -> bool:
        """Wait for rows and commit one group; False once closed (or failed while closing)."""
        with self._cond:
            while (not self._queue or self._failed is not None) and not self._closing:
                # Rows nobody waits for do not wake the thread (append): while none is queued
                # it looks again every LINGER seconds.
                self._cond.wait(None if self._failed is not None else LINGER)
            if not self._queue or self._failed is not None:
                return False  # closing: nothing left, or a last try failed
            self._linger()
            group = [self._queue.popleft() for _ in range(min(GROUP, len(self._queue)))]
            self._in_flight, self._group_written = group, False
        rows = [p.row for p in group if p.row is not None]
        try:
            stored = self.store.append(rows) if rows else []
        except Exception as error:
            reason = error.reason if isinstance(error, JournalUnavailable) else str(error)
            with self._cond:
                self._queue.extendleft(reversed(group))  # kept, in order, at the front
                self._in_flight = []
            self._failed_with(reason)
            return not self._closing
        self._group_written = True  # a bug from here on must not queue these rows again
        written = iter(stored)
        for pending in group:
            result = next(written) if pending.row is not None else None
            if pending.future is not None and pending.loop is not None:
                self._call(pending.loop, _settle, pending.future, result)
        self._in_flight = []
        return True

    def _linger(self) -> None:
        """Wait (lock held) until LINGER after the first queued row came for a durable row, a
        flush, a full group or the close while only rows nobody waits for are queued, so that
        they share its commit."""
        deadline = min(time.monotonic(), self._first_queued) + LINGER
        while (
            not self._closing
            and self._failed is None
            and len(self._queue) < GROUP
            and not any(p.future is not None for p in self._queue)
        ):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cond.wait(left)

    def _failed_with(self, reason: str, *, always: bool = False) -> None:
        """Mark the writer failed: fail every durable wait (their rows stay queued) and report
        the reason (once per failure, unless `always`)."""
        with self._cond:
            first = self._failed is None
            self._failed = reason
            waiting = [p for p in self._queue if p.future is not None]
            for pending in waiting:
                future, loop = pending.future, pending.loop
                pending.future = pending.loop = None
                if future is not None and loop is not None:
                    error = JournalUnavailable(self.store.where, reason)
                    self._call(loop, _fail, future, error)
        if first or always:
            self._report(reason)

    def _report(self, reason: str) -> None:
        """Call on_failure(reason) on the loop, or here when there is none."""
        if self.on_failure is None:
            return
        if self._loop is None or not self._call(self._loop, self.on_failure, reason):
            self.on_failure(reason)

    @staticmethod
    def _call(loop: asyncio.AbstractEventLoop, func: Callable[..., None], *args: Any) -> bool:
        """Run func(*args) on `loop` from any thread; False when the loop is closed."""
        try:
            loop.call_soon_threadsafe(func, *args)
        except RuntimeError:  # the loop is closed: nobody waits on it any more
            return False
        return True
