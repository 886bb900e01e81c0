"""The JSON log file: opened for appending (regular files only), one JSON line per record."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import sys
from pathlib import Path

from cellctl.errors import CellctlError
from cellctl.files import NotARegularFile, special_kind


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
            line = self.format(record)
        except Exception:
            self.handleError(record)  # a broken log call: the stdlib's report, as everywhere
            return
        self.write_line(line)

    def write_line(self, line: str) -> None:
        """Append one rendered line; on an OSError, warn once and stop."""
        if self._fd is None:
            return
        data = (line + "\n").encode("utf-8", "backslashreplace")
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
