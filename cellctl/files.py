"""Regular files only: what cellctl reads and writes is never a FIFO, a device or a folder."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def special_kind(mode: int) -> str | None:
    """What a file of `mode` is when it is not a regular file ('a folder', …); None if it is."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


class NotARegularFile(OSError):
    """A path names a folder, FIFO, device or socket where a regular file is needed."""

    def __init__(self, path: Path, kind: str) -> None:
        reason = f"is {kind}, not a regular file"
        super().__init__(errno.EINVAL, reason, str(path))


def read_regular(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of the regular file at `path`; raises OSError otherwise.

    The file is checked before it is opened: opening a FIFO blocks until a writer comes, and
    opening a device can have effects of its own (a watchdog starts, a tape rewinds).
    """
    kind = special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise NotARegularFile(path, kind)
    # O_NONBLOCK: should a FIFO replace the file after the check, open returns at once and the
    # second check refuses it; on a regular file the flag changes nothing.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    with open(fd, "rb") as stream:
        kind = special_kind(os.fstat(fd).st_mode)
        if kind is not None:
            raise NotARegularFile(path, kind)
        return stream.read(limit)
