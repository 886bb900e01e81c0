"""Logging: structlog JSON lines to a file; the console gets one plain line, no tracebacks."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer

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


# The handlers this module installed, so a second configure replaces only its own.
_INSTALLED: list[logging.Handler] = []


def _shared_processors() -> list[structlog.types.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(log_file: Path | None = None, debug: bool = False) -> Path | None:
    """Route structlog and the stdlib (pymodbus, asyncua) to a JSON file; quiet the console.

    Returns the log file in use, or None when it cannot be opened (logging then stays
    console-only, warnings and above, still without tracebacks).
    """
    shared = _shared_processors()
    root = logging.getLogger()
    for handler in _INSTALLED:
        root.removeHandler(handler)
        handler.close()
    _INSTALLED.clear()
    root.setLevel(logging.DEBUG if debug else logging.INFO)

    console = _StderrHandler()
    console.setLevel(logging.DEBUG if debug else logging.ERROR)
    console.setFormatter(_NoTracebackConsole())
    # Library records never reach the console unless --debug: their tracebacks are noise there.
    if not debug:
        console.addFilter(lambda record: not record.name.startswith(NOISY_LIBRARIES))
    root.addHandler(console)
    _INSTALLED.append(console)

    path = log_file or default_log_file()
    used: Path | None = path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        used = None
    else:
        file_handler.setFormatter(
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
        root.addHandler(file_handler)
        _INSTALLED.append(file_handler)

    for name in NOISY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    return used
