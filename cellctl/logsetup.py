"""Logging: structlog JSON lines to a file; the console gets one plain line, no tracebacks.

The file is written by a thread of its own (a queue listener): a log call on the control loop
only enqueues a record, and the JSON is rendered and written off the loop, in order.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from structlog.processors import ExceptionRenderer, JSONRenderer
from structlog.tracebacks import ExceptionDictTransformer

from cellctl.logfile import LogFileUnusable, _JsonLinesFile, _open_for_append
from cellctl.logwriter import (
    _CONTEXT,
    _FILE_ONLY,
    _METHOD_LEVELS,
    _QUEUED,
    _Enqueue,
    _Event,
    _Writer,
)

# Libraries that log tracebacks during outages (asyncua: "Publish iteration crashed").
NOISY_LIBRARIES = ("asyncua", "pymodbus", "transitions")


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
        if isinstance(record.msg, dict):  # a structlog event: its text and its own fields
            return f"{record.levelname.lower()}: {_console_text(record.msg)}"
        return f"{record.levelname.lower()}: {record.getMessage()}"

    def formatException(self, ei: object) -> str:
        return ""


#: Fields every record of a batch carries (bound context) or the file adds: not repeated on
#: the console's one line.
_CONTEXT_FIELDS = frozenset(
    {
        "event",
        "recipe",
        "version",
        "sha256",
        "operator",
        "batch",
        "timestamp",
        "level",
        "logger",
        "exc_info",
        "stack_info",
    }
)


def _console_text(event: dict[str, Any]) -> str:
    """A structlog event as one readable line: its text, then its own fields (key=value)."""
    fields = ", ".join(f"{k}={v}" for k, v in event.items() if k not in _CONTEXT_FIELDS)
    text = str(event.get("event", ""))
    return f"{text} ({fields})" if fields else text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (tests and terminals swap it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


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


def flush_logs() -> bool:
    """Wait (at most FLUSH_WAIT) until the log file holds every record logged so far; False
    when it did not within that time."""
    return all([writer.flush() for writer in _WRITER])


def _to_writer(logger: Any, method: str, event_dict: Any) -> Any:
    """structlog's last processor: the event goes to the log file's thread as it is; the
    stdlib's record is made only when a handler besides the file's would take it."""
    wrapped = _routed(logger, method, event_dict)
    if wrapped is None:
        raise structlog.DropEvent
    return wrapped


def _routed(logger: Any, method: str, event_dict: Any) -> Any:
    """_to_writer's work, returning None where it drops the event (log_info raises nothing)."""
    wrapped = (event_dict,), {"extra": {"_logger": logger, "_name": method}}
    levelno = _METHOD_LEVELS.get(method)
    if not _WRITER or levelno is None or not isinstance(logger, logging.Logger):
        return wrapped
    if logger.disabled or logger.filters:
        return wrapped  # the stdlib decides, as it always did
    if not logger.isEnabledFor(levelno):
        return None  # what the stdlib's logger would do with it
    writer = _WRITER[0]
    others = False
    node: logging.Logger | None = logger
    while node is not None:
        for handler in node.handlers:
            if isinstance(handler, _Enqueue):
                continue
            if levelno >= handler.level:
                others = True
        if not node.propagate:
            break
        node = node.parent
    if event_dict.get("exc_info") is True:
        # The exception being handled now, on this thread: the file's thread has none.
        event_dict = {**event_dict, "exc_info": sys.exc_info()}
    writer.put(_Event(logger, method, levelno, event_dict))
    if not others:
        return None
    wrapped[1]["extra"][_QUEUED] = True
    return wrapped


def log_info(bound: Any, event: str, fields: Callable[[], dict[str, Any]]) -> None:
    """`bound.info(event, **fields())`, the same record, for an event logged many times a
    second on the control loop (the controller's, several per step); `fields` is called only
    when the record is made (not below the logger's level).

    With configure_logging's processors this runs them itself, as structlog's BoundLogger
    would, without its three calls that each repack the keywords; any other configuration
    (a test's capture_logs, a logger bound before configure_logging) goes through structlog.
    """
    processors = getattr(bound, "_processors", None)
    if (
        type(bound) is not structlog.stdlib.BoundLogger
        or processors is None
        or len(processors) != 2
        or processors[0] is not structlog.contextvars.merge_contextvars
        or processors[1] is not _to_writer
    ):
        bound.info(event, **fields())
        return
    logger = bound._logger
    if (
        _WRITER
        and isinstance(logger, logging.Logger)
        and not logger.disabled
        and not logger.filters
        and not logger.isEnabledFor(logging.INFO)
    ):
        return  # what _to_writer decides once the record is made, decided first
    # What BoundLoggerBase._process_event and _proxy_to_logger do with these processors.
    event_dict = bound._context.copy()
    event_dict.update(fields())
    event_dict["event"] = event
    event_dict = structlog.contextvars.merge_contextvars(logger, "info", event_dict)
    wrapped = _routed(logger, "info", event_dict)
    if wrapped is not None:  # None: dropped (the file's thread has it, nobody else wants it)
        args, kwargs = wrapped
        logger.info(*args, **kwargs)


def _stop_writer() -> None:
    """End the log file's thread once everything queued is written (at exit, or replaced)."""
    while _WRITER:
        _WRITER.pop().stop()


def log_internal_error(error: BaseException) -> Path | None:
    """Log a bug's traceback for the log file alone; the file that holds it (None: none does)."""
    # File only: the caller prints the console's one line, which points at the file.
    logging.getLogger("cellctl").error("internal error", exc_info=error, extra={_FILE_ONLY: True})
    if not flush_logs():
        return None  # not written in time (a FIFO nobody reads): the console says it all
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


#: The log file's JSON encoder, made once: json.dumps(event, default=_json_default) builds a
#: new one per line; this one writes the same bytes (json.dumps' defaults, the same default).
_ENCODER = json.JSONEncoder(default=_json_default)


def _encode(event: Any, **_dumps_kw: Any) -> str:
    """JSONRenderer's serializer: the event as json.dumps(event, default=_json_default)."""
    return _ENCODER.encode(event)


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
                JSONRenderer(_encode, default=_json_default),
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
        _install(root, _Enqueue(writer))

    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)

    structlog.configure(
        processors=[*_caller_processors(), _to_writer],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # After the factory, which sets structlog's own class (it finds the caller past its frames).
    logging.setLoggerClass(_NoCallerLogger)


# Before logging's own shutdown (registered earlier, so run later): the queue is written first.
atexit.register(_stop_writer)


def log_file_only(logger: logging.Logger, level: int, message: str, *args: object) -> None:
    """A record for the log file alone: the console prints the same text already (an error
    the CLI reports itself)."""
    logger.log(level, message, *args, extra={_FILE_ONLY: True})
