"""Logging: structlog JSON lines to a file; the console gets one plain line, no tracebacks.

The file is written by a thread of its own (a queue listener): a log call on the control loop
only enqueues a record, and the JSON is rendered and written off the loop, in order.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import errno
import logging
import os
import queue
import stat
import sys
import threading
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any

import structlog
from structlog.processors import ExceptionRenderer, JSONRenderer
from structlog.tracebacks import ExceptionDictTransformer

from cellctl.errors import CellctlError
from cellctl.files import NotARegularFile, special_kind

# Libraries that log tracebacks during outages (asyncua: "Publish iteration crashed").
NOISY_LIBRARIES = ("asyncua", "pymodbus", "transitions")

#: Seconds a flush waits for the log file's thread to write what was logged before it.
FLUSH_WAIT = 10.0
#: Seconds the log file's thread gathers records before it writes them in one go: it takes
#: the interpreter's lock a few times a second, not once per record from the control loop.
GATHER = 0.02


def default_log_file() -> Path:
    """Where the JSON log goes unless CELLCTL_LOG_FILE says otherwise."""
    override = os.environ.get("CELLCTL_LOG_FILE")
    if override:
        return Path(override)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "cellctl" / "cellctl.log"


class _NoTracebackConsole(logging.Formatter):
    """One line per record; exception text is left to the log file."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {record.getMessage()}"

    def formatException(self, ei: object) -> str:
        return ""


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (tests and terminals swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


class LogFileUnusable(CellctlError):
    """The log file that --log-file or CELLCTL_LOG_FILE names cannot be opened for appending."""


def _open_for_append(path: Path) -> int:
    """A descriptor appending to `path`, created if missing; raises OSError naming why not."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        # A character device (/dev/null, /dev/stderr) or a FIFO someone reads is fine; a
        # folder, a disk or a socket is not a log.
        kind = special_kind(mode)
        if kind is not None and not (stat.S_ISCHR(mode) or stat.S_ISFIFO(mode)):
            raise NotARegularFile(path, kind)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOCTTY | os.O_CLOEXEC
    try:
        # O_NONBLOCK: a FIFO nobody reads fails at once (ENXIO) instead of blocking forever.
        fd = os.open(path, flags | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno == errno.ENXIO:
            raise OSError(errno.ENXIO, "a FIFO that no process reads", str(path)) from err
        raise
    os.set_blocking(fd, True)
    return fd


class _JsonLinesFile(logging.Handler):
    """Appends each formatted record as one line to an open file.

    The first write that fails (a full disk, a reader gone) prints one warning on stderr and
    ends logging to the file: never a traceback per record, never a half-written line retried.
    """

    def __init__(self, path: Path, fd: int) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = fd

    @property
    def working(self) -> bool:
        """True until a write failed (or the handler was closed)."""
        return self._fd is not None

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record's JSON line; on an OSError, warn once and stop."""
        if self._fd is None:
            return
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)  # a broken log call: the stdlib's report, as everywhere
            return
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError as err:
            self._release()
            reason = err.strerror or str(err)
            with contextlib.suppress(OSError):  # stderr gone too: nowhere left to say it
                sys.stderr.write(
                    f"warning: cannot write the log file {self.path}: {reason}; "
                    "nothing more is logged to it\n"
                )

    def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # A close that fails loses nothing more than the write that failed.
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        """Close the file."""
        self._release()
        super().close()


class _NoCallerLogger(logging.Logger):
    """A logger whose records do not say where the call was made (nothing shows it)."""

    def findCaller(
        self, stack_info: bool = False, stacklevel: int = 1
    ) -> tuple[str, int, str, str | None]:
        """The stdlib's "unknown" caller, unless a stack was asked for."""
        # Neither the JSON lines nor the console's line show the caller, and finding it walks
        # the stack for every record, on the control loop (three records per step).
        if stack_info:
            return super().findCaller(stack_info, stacklevel)
        return "(unknown file)", 0, "(unknown function)", None


#: A record with this attribute true goes to the log file, never to the console.
_FILE_ONLY = "cellctl_file_only"
#: A library's record carries the caller's structlog context here (its thread has no other).
_CONTEXT = "cellctl_context"


class _Flush:
    """A mark on the queue: the writer sets `done` once every record before it is written."""

    def __init__(self) -> None:
        self.done = threading.Event()


class _Enqueue(QueueHandler):
    """Hands each record to the log file's thread; the caller renders nothing but a library's
    message, whose arguments may change once the call returned."""

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

    def dequeue(self, block: bool) -> Any:
        """The next record; once the queue is empty, wait GATHER (unless hurried) first."""
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
        try:
            self.file.handle(record)
        except Exception:  # the file's own emit reports its errors; this is a last guard
            self.file.handleError(record)

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
        self.file.close()


# The handlers this module installed, so a second configure replaces only its own.
_INSTALLED: list[logging.Handler] = []
# The log file's thread, when a file is open.
_WRITER: list[_Writer] = []


def active_log_file() -> Path | None:
    """The log file records still reach (None: none opened, or a write to it failed)."""
    for writer in _WRITER:
        if writer.file.working:
            return writer.file.path
    return None


def flush_logs() -> None:
    """Wait (at most FLUSH_WAIT) until the log file holds every record logged so far."""
    for writer in _WRITER:
        writer.flush()


def _stop_writer() -> None:
    """End the log file's thread once everything queued is written (at exit, or replaced)."""
    while _WRITER:
        _WRITER.pop().stop()


def log_internal_error(error: BaseException) -> Path | None:
    """Log a bug's traceback for the log file alone; the file that holds it (None: none does)."""
    # File only: the caller prints the console's one line, which points at the file.
    logging.getLogger("cellctl").error("internal error", exc_info=error, extra={_FILE_ONLY: True})
    flush_logs()
    return active_log_file()  # after the write: a write that failed leaves no file


def _caller_context(_logger: Any, _name: str, event_dict: Any) -> Any:
    """A library record's context, as merge_contextvars adds it on the caller's thread."""
    for key, value in getattr(event_dict["_record"], _CONTEXT, {}).items():
        event_dict.setdefault(key, value)
    return event_dict


def _record_time(_logger: Any, _name: str, event_dict: Any) -> Any:
    """When the record was made, as TimeStamper(fmt="iso", utc=True) writes it."""
    made = datetime.datetime.fromtimestamp(event_dict["_record"].created, tz=datetime.UTC)
    event_dict["timestamp"] = made.isoformat().replace("+00:00", "Z")
    return event_dict


def _json_default(value: object) -> Any:
    """A dataclass in a record (a safe write in an event) as its fields, as asdict gives them."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return repr(value)


def _caller_processors() -> list[structlog.types.Processor]:
    """What structlog adds on the caller's thread, before the record is enqueued: what only
    the caller knows, its context (_Enqueue takes the exception it handles)."""
    return [structlog.contextvars.merge_contextvars]


def _file_processors() -> list[structlog.types.Processor]:
    """What the file's thread adds to every record: level, logger, time (of the record)."""
    return [structlog.stdlib.add_log_level, structlog.stdlib.add_logger_name, _record_time]


def _install(root: logging.Logger, handler: logging.Handler) -> None:
    root.addHandler(handler)
    _INSTALLED.append(handler)


def _console_handler(debug: bool) -> logging.Handler:
    """One plain line per record on stderr: errors only, unless --debug."""
    console = _StderrHandler()
    console.setLevel(logging.DEBUG if debug else logging.ERROR)
    console.setFormatter(_NoTracebackConsole())
    console.addFilter(lambda record: not getattr(record, _FILE_ONLY, False))
    # Library records never reach the console unless --debug: their tracebacks are noise there.
    if not debug:
        console.addFilter(lambda record: not record.name.startswith(NOISY_LIBRARIES))
    return console


def _file_handler(log_file: Path | None) -> _JsonLinesFile | None:
    """JSON lines appended to the log file; None when the default file cannot be opened.

    Raises LogFileUnusable when the file `log_file` or CELLCTL_LOG_FILE names cannot.
    """
    path = log_file or default_log_file()
    named = (
        f"--log-file {path}"
        if log_file is not None
        else f"CELLCTL_LOG_FILE={path}"
        if os.environ.get("CELLCTL_LOG_FILE")
        else None
    )
    try:
        if named is None:  # only the default's folder is ours to make
            path.parent.mkdir(parents=True, exist_ok=True)
        handler = _JsonLinesFile(path, _open_for_append(path))
    except OSError as err:
        if named is not None:
            raise LogFileUnusable(f"{named}: cannot open it: {err.strerror or err}") from err
        return None
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            # A library's record: its caller's context, which its copy carries.
            foreign_pre_chain=[_caller_context],
            processors=[
                *_file_processors(),
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # show_locals=False: locals may hold secrets (passwords, certificates).
                ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
                JSONRenderer(default=_json_default),
            ],
        )
    )
    return handler


def configure_logging(log_file: Path | None = None, debug: bool = False) -> None:
    """Route structlog and the stdlib (pymodbus, asyncua) to a JSON file; quiet the console.

    A file named by `log_file` or CELLCTL_LOG_FILE that cannot be opened raises
    LogFileUnusable; when the default one cannot, logging stays console-only (errors, still
    without tracebacks); active_log_file() says which file is in use. The file is written by
    a thread of its own: flush_logs() waits for it, and it writes everything queued at exit.
    """
    root = logging.getLogger()
    for handler in _INSTALLED:
        root.removeHandler(handler)
        handler.close()
    _INSTALLED.clear()
    _stop_writer()  # after the removal: nothing more reaches its queue
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    _install(root, _console_handler(debug))
    # Opened after the console is set: a LogFileUnusable raised here is still said there.
    file_handler = _file_handler(log_file)
    if file_handler is not None:
        writer = _Writer(file_handler)
        writer.start()
        _WRITER.append(writer)
        _install(root, _Enqueue(writer.records))

    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)

    structlog.configure(
        processors=[*_caller_processors(), structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # After the factory, which sets structlog's own class (it finds the caller past its frames).
    logging.setLoggerClass(_NoCallerLogger)


# Before logging's own shutdown (registered earlier, so run later): the queue is written first.
atexit.register(_stop_writer)
