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

#: Bytes a log file grows to before it is rotated: renamed NAME.1 (the older NAME.1 to NAME.2,
#: ...), and a new NAME begun.
MAX_BYTES = 10 * 1024 * 1024
#: Rotated files kept (NAME.1 .. NAME.3); the oldest beyond them is dropped.
BACKUPS = 3


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
    A regular file is rotated past `max_bytes` (see MAX_BYTES). Several processes may share
    it: each counts what it wrote, and one that finds the file rotated by another (once its
    count reaches the bound) only opens the new one; its lines until then went to the rotated
    file, none lost (a stat per line to notice sooner would cost more than it saves).
    """

    def __init__(
        self, path: Path, fd: int, *, max_bytes: int = MAX_BYTES, backups: int = BACKUPS
    ) -> None:
        super().__init__()
        self.path = path
        self._fd: int | None = fd
        self.max_bytes = max_bytes
        self.backups = backups
        info = os.fstat(fd)
        #: The file's size as this process knows it (None: not a regular file, never rotated).
        self._size: int | None = info.st_size if stat.S_ISREG(info.st_mode) else None

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
        if self._size is not None and self._size + len(data) > self.max_bytes:
            self._rotate(len(data))
        if self._fd is None:
            return
        if self._size is not None:
            self._size += len(data)
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

    def _rotate(self, more: int) -> None:
        """Rotate the file when it (on disk, whoever wrote it) cannot take `more` bytes; a
        file another process rotated meanwhile is only reopened. A rotation that fails is
        said once and not tried again: the lines go on to the file as it is."""
        assert self._fd is not None
        try:
            mine = os.fstat(self._fd)
            try:
                named = os.stat(self.path)
            except FileNotFoundError:
                named = None
            if named is not None and named.st_ino == mine.st_ino:
                if mine.st_size + more <= self.max_bytes:  # our count was behind: not yet
                    self._size = mine.st_size
                    return
                for older in range(self.backups - 1, 0, -1):
                    source = Path(f"{self.path}.{older}")
                    if source.exists():
                        os.replace(source, f"{self.path}.{older + 1}")
                os.replace(self.path, f"{self.path}.1")
            fd = _open_for_append(self.path)
        except OSError as err:
            self._size = None
            with contextlib.suppress(OSError):
                sys.stderr.write(
                    f"warning: cannot rotate the log file {self.path}: "
                    f"{err.strerror or err}; it grows on\n"
                )
            return
        old, self._fd = self._fd, fd
        with contextlib.suppress(OSError):
            os.close(old)
        self._size = os.fstat(fd).st_size

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
