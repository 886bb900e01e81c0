"""The log file's thread: records and structlog events queued by the caller, rendered and
written in order off the control loop, with a bounded backlog and flushes that wait."""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any

import structlog

from cellctl.logfile import _JsonLinesFile

#: Seconds a flush waits for the log file's thread to write what was logged before it.
FLUSH_WAIT = 10.0

#: Seconds the log file's thread gathers records before it writes them in one go: it takes
#: the interpreter's lock a few times a second, not once per record from the control loop.
GATHER = 0.02

#: Items the log file's thread may have waiting (about 0.4 kB each): a caller that finds this
#: many blocks (at most FLUSH_WAIT) until the thread has written half of them, so a long batch
#: of steps leaves no growing backlog in memory and no record is ever dropped.
BACKLOG = 2000

#: A record with this attribute true goes to the log file, never to the console.
_FILE_ONLY = "cellctl_file_only"

#: A library's record carries the caller's structlog context here (its thread has no other).
_CONTEXT = "cellctl_context"

#: A structlog record with this attribute true is already on the log file's queue as an _Event.
_QUEUED = "cellctl_queued"

# structlog's method names, as its stdlib BoundLogger passes them, and their levels.
_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
    "fatal": logging.CRITICAL,
}


class _Event:
    """A structlog event on its way to the log file's thread: what the stdlib's record would
    carry, taken on the caller's thread; the record is built and rendered on the file's."""

    __slots__ = ("created", "event", "levelno", "logger", "method", "name")

    def __init__(
        self, logger: logging.Logger, method: str, levelno: int, event: dict[str, Any]
    ) -> None:
        self.created = time.time()
        self.logger = logger
        self.name = logger.name  # what add_logger_name reads from a record
        self.method = method
        self.levelno = levelno
        self.event = event

    def record(self) -> logging.LogRecord:
        """The stdlib's record for the event, as wrap_for_formatter would have had it made."""
        record = logging.LogRecord(
            self.name,
            self.levelno,
            "(unknown file)",
            0,
            self.event,
            None,
            None,
            "(unknown function)",
        )
        record.created = self.created
        record.msecs = int((self.created - int(self.created)) * 1000) + 0.0
        record._logger = self.logger
        record._name = self.method
        return record


class _Flush:
    """A mark on the queue: the writer sets `done` once every record before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Enqueue(QueueHandler):
    """Hands each record to the log file's thread; the caller renders nothing but a library's
    message, whose arguments may change once the call returned."""

    def __init__(self, writer: _Writer) -> None:
        super().__init__(writer.records)
        self.writer = writer

    def enqueue(self, record: Any) -> None:
        """Queue the record for the file's thread (waiting while its backlog is full)."""
        self.writer.put(record)

    def handle(self, record: logging.LogRecord) -> bool:
        """Queue the record unless _to_writer already queued its event."""
        if getattr(record, _QUEUED, False):
            return True
        return super().handle(record)

    def prepare(self, record: logging.LogRecord) -> Any:
        """A copy of the record that no later change by the caller reaches."""
        # A copy: another handler may still format the original (it sets attributes). Its
        # attributes, as copy.copy would take them, at a fraction of the cost.
        original, record = record, logging.LogRecord.__new__(logging.LogRecord)
        record.__dict__.update(original.__dict__)
        if not hasattr(record, "_logger"):
            # A library's record: message and context now. structlog's own record holds a
            # fresh event dict of values its caller passed and no longer changes.
            record.msg = record.getMessage()
            record.args = None
            setattr(record, _CONTEXT, structlog.contextvars.get_contextvars())
        elif isinstance(event := record.msg, dict) and event.get("exc_info") is True:
            # The exception being handled now, on this thread: the file's thread has none.
            record.msg = {**event, "exc_info": sys.exc_info()}
        return record


class _Writer(QueueListener):
    """The log file's thread: takes records off the queue, renders and writes them in order."""

    def __init__(self, file: _JsonLinesFile) -> None:
        records: queue.SimpleQueue[Any] = queue.SimpleQueue()
        super().__init__(records, file)
        self.records = records
        self.file = file
        #: Set by a flush or a stop: the thread writes what is queued without gathering more.
        self._hurry = threading.Event()
        #: Set by the thread once a full backlog is down to half (a caller waits for it).
        self._room = threading.Event()
        self._room_wanted = False
        self._formatter: Any = file.formatter

    def put(self, item: Any) -> None:
        """Queue an item; while BACKLOG items wait, block until the thread wrote half."""
        records = self.records
        if records.qsize() >= BACKLOG and self._thread is not None:
            self._room.clear()
            self._room_wanted = True
            self._hurry.set()
            # Checked again after asking: the thread may have drained it meanwhile. A thread
            # stuck on a FIFO nobody reads holds the caller FLUSH_WAIT, then the item is queued.
            if records.qsize() >= BACKLOG // 2:
                self._room.wait(FLUSH_WAIT)
        records.put_nowait(item)

    def dequeue(self, block: bool) -> Any:
        """The next record; once the queue is empty, wait GATHER (unless hurried) first."""
        if self._room_wanted and self.records.qsize() < BACKLOG // 2:
            self._room_wanted = False
            self._room.set()
        try:
            return self.records.get_nowait()
        except queue.Empty:
            pass
        if self._hurry.wait(GATHER):
            self._hurry.clear()
        return self.records.get()

    def handle(self, record: Any) -> None:
        """Write one record (or mark a flush done); never let the thread die on a record."""
        if isinstance(record, _Flush):
            record.done.set()
            return
        if isinstance(record, _Event):
            self._write_event(record)
            return
        try:
            self.file.handle(record)
        except Exception:  # the file's own emit reports its errors; this is a last guard
            self.file.handleError(record)

    def _write_event(self, item: _Event) -> None:
        """Render a structlog event as the file's ProcessorFormatter renders its record."""
        if not self.file.working:
            return
        try:
            # ProcessorFormatter.format for a structlog record, without the records: the
            # processors read the time and name from `_record` and remove it before rendering.
            event = {**item.event, "_record": item, "_from_structlog": True}
            for processor in self._formatter.processors:
                event = processor(item.logger, item.method, event)
            line = str(event)
        except Exception:
            # The stdlib's path for the same event, so a broken event is reported as before.
            self.handle(item.record())
            return
        self.file.write_line(line)

    def flush(self) -> bool:
        """Wait until every record enqueued before this call is written; False on FLUSH_WAIT."""
        if self._thread is None:
            return True
        mark = _Flush()
        self.records.put_nowait(mark)
        self._hurry.set()
        return mark.done.wait(FLUSH_WAIT)

    def stop(self) -> None:
        """Write what is queued, end the thread (bounded by FLUSH_WAIT), close the file."""
        thread = self._thread
        if thread is not None:
            self.enqueue_sentinel()
            self._hurry.set()
            thread.join(FLUSH_WAIT)  # a writer stuck on a FIFO nobody reads stays stuck alone
            self._thread = None
            if thread.is_alive():
                # Still inside a write: closing would free the descriptor for reuse under it.
                return
        self.file.close()
