"""Logging: structlog JSON lines to a file; the console gets one plain line, no tracebacks."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

from cellctl.errors import CellctlError
from cellctl.files import NotARegularFile, special_kind

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


#: A record with this attribute true goes to the log file, never to the console.
_FILE_ONLY = "cellctl_file_only"

# The handlers this module installed, so a second configure replaces only its own.
_INSTALLED: list[logging.Handler] = []


def active_log_file() -> Path | None:
    """The log file records still reach (None: none opened, or a write to it failed)."""
    for handler in _INSTALLED:
        if isinstance(handler, _JsonLinesFile) and handler.working:
            return handler.path
    return None


def log_internal_error(error: BaseException) -> Path | None:
    """Log a bug's traceback for the log file alone; the file that holds it (None: none does)."""
    # File only: the caller prints the console's one line, which points at the file.
    logging.getLogger("cellctl").error("internal error", exc_info=error, extra={_FILE_ONLY: True})
    return active_log_file()  # after the write: a write that failed leaves no file


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


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


def _file_handler(
    log_file: Path | None, shared: list[structlog.types.Processor]
) -> logging.Handler | None:
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
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                # show_locals=False: locals may hold secrets (passwords, certificates).
                ExceptionRenderer(ExceptionDictTransformer(show_locals=False)),
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    return handler


def configure_logging(log_file: Path | None = None, debug: bool = False) -> None:
    """Route structlog and the stdlib (pymodbus, asyncua) to a JSON file; quiet the console.

    A file named by `log_file` or CELLCTL_LOG_FILE that cannot be opened raises
    LogFileUnusable; when the default one cannot, logging stays console-only (errors, still
    without tracebacks); active_log_file() says which file is in use.
    """
    shared = _shared_processors()
    root = logging.getLogger()
    for handler in _INSTALLED:
        root.removeHandler(handler)
        handler.close()
    _INSTALLED.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    _install(root, _console_handler(debug))
    # Opened after the console is set: a LogFileUnusable raised here is still said there.
    file_handler = _file_handler(log_file, shared)
    if file_handler is not None:
        _install(root, file_handler)

    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
