"""The asyncua address-space cache: built once per user and asyncua version, shared safely."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import asyncua
from asyncua.server.server import Server

log = logging.getLogger("drivers.sim.opcua")


def default_cache_dir() -> Path:
    """Where the asyncua address-space cache lives: $XDG_CACHE_HOME/cellctl or ~/.cache/cellctl."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cellctl"


# The cache is shared by every simulator of the user: pytest workers, `cellctl sim` and `demo`
# children may all build it at once on a fresh machine. Each build writes into its own hidden
# folder, made durable, then moved into place with ONE rename of the folder. The rename is
# atomic and never replaces a folder that holds files, so the first complete build wins and is
# never touched again: a reader only opens the shelf inside the final folder, so it never sees
# a half-written set, nor two builds mixed (dbm.dumb reopens PATH.dat by name on every lookup
# for as long as the server runs). A build killed midway leaves only its hidden folder, which
# no reader trusts and a later build removes. (A lock around build+install would also be
# correct, but makes every other start wait on it, and a crash would leave files at the
# trusted path for the next builder to clean up.)
_SHELF = "address-space"  # no dot in the name: asyncua also looks for SHELF.with_suffix(".db")
_BUILD_PREFIX = ".build-"
# A build folder is removed only when no live process holds its lock and it is older than this
# (the age covers the instant between creating the folder and locking it). A build takes 1-3 s.
_STALE_BUILD_AGE = 60.0  # seconds


async def init_with_cache(server: Server, cache_dir: Path) -> None:
    """`server.init()` from the address-space cache, building the cache on first use."""
    cache = _cache_path(cache_dir)
    if (cache / _SHELF).is_file():
        await server.init(shelf_file=cache / _SHELF)
        return
    build = await asyncio.to_thread(_Build.start, cache_dir)
    try:
        # The building server keeps its address space in memory: it never reads this shelf.
        await server.init(shelf_file=build.path / _SHELF)
        await asyncio.to_thread(build.install, cache)
    finally:
        await asyncio.to_thread(build.close)


def _cache_path(cache_dir: Path) -> Path:
    """The cache's folder, versioned because it is a pickle of asyncua's own node classes."""
    return cache_dir / f"asyncua-{asyncua.__version__}-address-space.d"


class _Build:
    """A private folder a cache is built in, locked (flock) for as long as its builder lives."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd
        self._installed = False

    @classmethod
    def start(cls, cache_dir: Path) -> _Build:
        """A fresh build folder in `cache_dir`, after removing those left by dead builds."""
        cache_dir.mkdir(parents=True, exist_ok=True)
        _remove_dead_builds(cache_dir)
        path = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=cache_dir))
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh folder: nobody else holds it
        return cls(path, fd)

    def install(self, cache: Path) -> None:
        """Move the finished build into place as `cache` (see `_install_cache`)."""
        try:
            self._installed = _install_cache(self.path, cache)
        except OSError as err:
            # The cache only saves time: this server already has its address space in memory.
            log.warning("cannot store the address-space cache %s: %s", cache, err)

    def close(self) -> None:
        """Remove the folder unless it was installed, and release the lock."""
        if not self._installed:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)


def _remove_dead_builds(cache_dir: Path) -> None:
    """Remove build folders whose builder died (its lock went with it) and that are not new."""
    for path in cache_dir.glob(f"{_BUILD_PREFIX}*"):
        try:
            # File ages are wall-clock times: compare them with the wall clock.
            if time.time() - path.lstat().st_mtime < _STALE_BUILD_AGE:
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            continue  # gone already, or not a folder of ours
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its builder is still running
        else:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)


def _install_cache(build: Path, cache: Path) -> bool:
    """Move a complete build into place with one atomic rename (true if it was this one); the
    first complete build wins."""
    shelf = build / _SHELF
    # shelve falls back to dbm.dumb here (SHELF.dat/.dir/.bak) while asyncua only loads a
    # cache when the bare SHELF (or SHELF.db) exists: without the marker it rebuilds every time.
    if not shelf.exists() and not shelf.with_suffix(".db").exists():
        shelf.touch()
    # Durable before it is visible: after a power cut the folder must not hold empty files.
    for part in build.iterdir():
        _fsync(part)
    _fsync(build)
    try:
        build.rename(cache)
    except OSError as err:
        # ENOTEMPTY/EEXIST: the folder exists. Another process installed its build first,
        # or something else left it there; this server runs from memory either way.
        if not (cache / _SHELF).is_file():
            log.warning(
                "address-space cache %s is incomplete and cannot be replaced (%s): delete that "
                "folder so the next simulator start can rebuild it",
                cache,
                err.strerror,
            )
        return False
    _fsync(cache.parent)
    return True


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's contents to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
