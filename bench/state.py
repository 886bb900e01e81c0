"""The bench's own journal and lock folder: no bench run writes to the user's journal or to the
machine's lock folder.

`isolated()` (entered once by `python -m bench`) makes a temporary folder and points
$CELLCTL_JOURNAL, $CELLCTL_LOCK_DIR (and $CELLCTL_LOG_FILE) into it for the bench process and
every child it starts (they inherit the environment), then removes it. The folder is on /dev/shm
when that is a tmpfs: figures 1-4 and 9 measure the controller, so their journal's work (rows,
hashes, commits) is counted but its fsync costs nothing, which keeps them comparable with the
runs before the journal and with raw libraries that record nothing. The journal's durability has
its own figures (10, 11) and figure 1's line "with the journal on disk": those journals are in
`disk_folder()`, on the disk where the user's journal would be.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

#: The RAM disk tried first for the bench's journal.
RAM_DISK = Path("/dev/shm")
#: Set while the bench is isolated: the folder it made (children see it too).
STATE_VARIABLE = "CELLCTL_BENCH_STATE"
#: Set while the bench is isolated: the user's default journal path before the bench changed it.
USER_JOURNAL_VARIABLE = "CELLCTL_BENCH_USER_JOURNAL"
#: The product's variables the bench points into its own folder.
JOURNAL_VARIABLE = "CELLCTL_JOURNAL"
LOCK_DIR_VARIABLE = "CELLCTL_LOCK_DIR"
LOG_FILE_VARIABLE = "CELLCTL_LOG_FILE"


def filesystem(path: Path) -> str:
    """The type of the filesystem holding `path` (the longest mount point above it)."""
    best, kind = "", "unknown"
    resolved = str(path.resolve())
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3:
                point = fields[1]
                inside = resolved.startswith(point.rstrip("/") + "/") or resolved == point
                if inside and len(point) > len(best):
                    best, kind = point, fields[2]
    return kind


def _ram_parent() -> Path:
    """/dev/shm when it is a tmpfs we may write to, else the system's temporary folder."""
    if RAM_DISK.is_dir() and os.access(RAM_DISK, os.W_OK) and filesystem(RAM_DISK) == "tmpfs":
        return RAM_DISK
    return Path(tempfile.gettempdir())


@contextlib.contextmanager
def isolated() -> Iterator[Path]:
    """For the block: $CELLCTL_JOURNAL, $CELLCTL_LOCK_DIR and $CELLCTL_LOG_FILE in a temporary
    folder of the bench's own (on the RAM disk when there is one), removed afterwards; the
    environment is restored. Nested use (or a child of an isolated bench) keeps the folder
    already chosen."""
    already = os.environ.get(STATE_VARIABLE)
    if already:
        yield Path(already)
        return
    from cellctl.control.journal.location import default_journal_path

    names = (
        STATE_VARIABLE,
        USER_JOURNAL_VARIABLE,
        JOURNAL_VARIABLE,
        LOCK_DIR_VARIABLE,
        LOG_FILE_VARIABLE,
    )
    saved = {name: os.environ.get(name) for name in names}
    folder = Path(tempfile.mkdtemp(prefix="cellctl-bench-", dir=_ram_parent()))
    locks = folder / "locks"
    locks.mkdir()
    os.environ[USER_JOURNAL_VARIABLE] = str(default_journal_path())
    os.environ[STATE_VARIABLE] = str(folder)
    os.environ[JOURNAL_VARIABLE] = str(folder / "journal.sqlite")
    os.environ[LOCK_DIR_VARIABLE] = str(locks)
    # Nor the user's log file: a run that names no --log-file logs here.
    os.environ[LOG_FILE_VARIABLE] = str(folder / "cellctl.log")
    try:
        yield folder
    finally:
        _restore(saved)
        shutil.rmtree(folder, ignore_errors=True)


def _restore(saved: Mapping[str, str | None]) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def journal_where(path: Path | None = None) -> str:
    """Where a run's journal is, for a detail line: `path`, else the default ($CELLCTL_JOURNAL),
    with its filesystem."""
    if path is None:
        from cellctl.control.journal.location import default_journal_path

        path = default_journal_path()
    kind = filesystem(path.parent if path.parent.exists() else Path(tempfile.gettempdir()))
    if kind == "tmpfs":
        return f"journal on tmpfs ({path.parent}: no fsync cost)"
    return f"journal on {kind} ({path.parent})"


@contextlib.contextmanager
def disk_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder on the disk where the user's journal lives (the nearest existing
    folder above it; never the journal itself, never /tmp which may be tmpfs), removed after."""
    from cellctl.control.journal.location import default_journal_path

    named = os.environ.get(USER_JOURNAL_VARIABLE)
    user = Path(named) if named else default_journal_path()
    parent = user.parent
    while not parent.is_dir() and parent != parent.parent:
        parent = parent.parent
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
