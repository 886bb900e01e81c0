"""One batch per cell at a time: a lock on each of the cell's devices, kept in a runtime folder
that every user of the machine shares (never in the journal, which each user may keep elsewhere).

The key is the device as the network or the serial line reaches it, not the cell's name or its
file: a Modbus TCP unit (host:port and unit id), a Modbus RTU unit (the serial port's real path
and unit id), an OPC UA server (host:port). So two copies of one cell file collide, and so do two
different cells that share a device; two cells with disjoint devices do not. Hosts are compared
as written (`localhost` is 127.0.0.1, case ignored): one device reached by two names is not
recognised. Memory devices live inside one process, which no other process can reach: they take
no lock.

Each device's lock is an `fcntl.flock` on a file `<sha256 of the key>.lock`; the holder writes
into it, as JSON, who holds it (batch, operator, pid, host, journal, started, cell, device). The
kernel releases a flock when its process ends in any way (SIGKILL included), so a lock left by a
dead process never blocks: the file stays, with the dead holder's details, until the next run
takes it and writes its own.

The folder: $CELLCTL_LOCK_DIR when set (tests; it must then be the same for every user); else
/run/lock/cellctl when /run/lock is a sticky folder anyone may write to (Debian and most Linux);
else `tempfile.gettempdir()`/cellctl-locks. The folder is made sticky and writable by all (mode
1777) and each lock file readable and writable by all (0666), so whoever runs the next batch can
take the lock, whoever held it before.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import os
import socket
import stat
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType

from cellctl import exitcodes
from cellctl.cell import Cell, ModbusRtuDevice, ModbusTcpDevice, OpcuaDevice, host_key
from cellctl.errors import CellctlError

#: The environment variable naming the lock folder (tests; the same for every user otherwise).
LOCK_DIR_VARIABLE = "CELLCTL_LOCK_DIR"
#: The system's folder for lock files (FHS), used when it is sticky and writable by all.
RUN_LOCK = Path("/run/lock")
#: Seconds a refused run waits for the holder's details to be written (the holder writes them
#: at once after its flock: only a run refused in that instant finds the file still empty).
DETAILS_WAIT = 0.5

_FOLDER_MODE = 0o1777
_FILE_MODE = 0o666


class CellBusy(CellctlError):
    """Another batch holds one of the cell's devices: the run is refused (exit 7), that batch,
    its operator and its process named."""

    exit_code = exitcodes.REFUSED

    def __init__(self, cell: str, device: str, key: str, holder: Holder | None) -> None:
        if holder is None:
            who = "another process (its details are not readable)"
        else:
            who = (
                f"batch {holder.batch} of cell {holder.cell}, operator {holder.operator}, "
                f"pid {holder.pid} on {holder.host}, started {holder.started}, "
                f"journal {holder.journal}"
            )
        super().__init__(
            f"cell {cell}: device {device} ({key}) is in use by {who}; one batch per cell at a "
            "time: wait for that batch to end, or end it"
        )
        self.cell = cell
        self.device = device
        self.key = key
        self.holder = holder


class CellLockUnavailable(CellctlError):
    """The lock folder or a lock file cannot be used: the run is refused (exit 7) rather than
    started unguarded; the message names the path and the fix."""

    exit_code = exitcodes.REFUSED


@dataclass(frozen=True)
class Holder:
    """Who holds a device's lock: written into the lock file as JSON."""

    batch: str
    operator: str
    pid: int
    host: str
    journal: str
    started: str
    cell: str
    device: str

    def to_json(self) -> str:
        """The lock file's text."""
        return json.dumps(asdict(self), sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Holder | None:
        """The holder written in a lock file; None when the text is not a whole holder."""
        try:
            found = json.loads(text)
            return cls(
                batch=str(found["batch"]),
                operator=str(found["operator"]),
                pid=int(found["pid"]),
                host=str(found["host"]),
                journal=str(found["journal"]),
                started=str(found["started"]),
                cell=str(found["cell"]),
                device=str(found["device"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def lock_folder(environ: Mapping[str, str] | None = None) -> Path:
    """The folder of the cell locks (see the module docstring): the same for every user."""
    env = os.environ if environ is None else environ
    named = env.get(LOCK_DIR_VARIABLE)
    if named:
        return Path(named)
    try:
        mode = RUN_LOCK.stat().st_mode
    except OSError:
        mode = 0
    if stat.S_ISDIR(mode) and mode & stat.S_ISVTX and mode & stat.S_IWOTH:
        return RUN_LOCK / "cellctl"
    return Path(tempfile.gettempdir()) / "cellctl-locks"


def device_keys(cell: Cell) -> dict[str, str]:
    """Each lockable device of `cell` by name: the key naming it as the link reaches it."""
    keys: dict[str, str] = {}
    for name, device in cell.devices.items():
        if isinstance(device, ModbusTcpDevice):
            keys[name] = f"modbus-tcp {host_key(device.host)}:{device.port} unit {device.unit}"
        elif isinstance(device, ModbusRtuDevice):
            keys[name] = f"modbus-rtu {os.path.realpath(device.port)} unit {device.unit}"
        elif isinstance(device, OpcuaDevice):
            # One OPC UA server per host and port (cellctl.cell.device_rules): the path and
            # the rest of the endpoint do not make another device.
            keys[name] = f"opcua {host_key(device.host)}:{device.port}"
    return keys


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _prepare_folder(folder: Path) -> None:
    """Make the folder (sticky, writable by all) unless it exists; refuse a folder that others
    cannot use, naming it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        info = folder.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != _FOLDER_MODE:
            folder.chmod(_FOLDER_MODE)  # mkdir's mode is cut by the umask
    except OSError as error:
        raise CellLockUnavailable(
            f"cell lock folder {folder}: {error.strerror or error}; "
            f"it must be a folder every user may write to (mode 1777), or set "
            f"{LOCK_DIR_VARIABLE} to one"
        ) from None


def _open_lock_file(path: Path) -> int:
    """The lock file's descriptor, read-write, made when missing (readable and writable by all).

    An existing file is opened without O_CREAT: with fs.protected_regular, O_CREAT on another
    user's file in a sticky folder is refused even when its mode allows writing.
    """
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(3):
        try:
            return os.open(path, flags)
        except FileNotFoundError:
            pass
        try:
            fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        except FileExistsError:
            continue  # another run made it meanwhile: open theirs
        os.fchmod(fd, _FILE_MODE)  # the umask cut the mode given to open
        return fd
    return os.open(path, flags)


def _alive(holder: Holder) -> bool:
    """False when the holder named a process of this host that is gone: those are a dead
    holder's details, which the new holder is about to overwrite."""
    if holder.host != socket.gethostname():
        return True
    try:
        os.kill(holder.pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: it exists
        return True
    return True


def _read_holder(path: Path) -> Holder | None:
    """The holder written in a lock file another process holds, waiting up to DETAILS_WAIT for
    a holder that took the flock but has not written them yet (the file is empty, or still
    names a process that is gone)."""
    deadline = time.monotonic() + DETAILS_WAIT
    while True:
        try:
            holder = Holder.from_json(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            holder = None
        if (holder is not None and _alive(holder)) or time.monotonic() >= deadline:
            return holder
        time.sleep(0.02)


class CellLock:
    """The locks of a cell's devices for one batch: `acquire()` takes them all or none (CellBusy
    naming the holder of the first one taken), `release()` lets them go; a context manager,
    also an async one (to sit in one `async with` beside what serves the cell)."""

    def __init__(
        self,
        cell: Cell,
        *,
        batch: str,
        operator: str,
        journal: str | Path,
        folder: Path | None = None,
    ) -> None:
        """The locks `cell`'s batch `batch` will hold, in `folder` (default: lock_folder())."""
        self.cell = cell
        self.batch = batch
        self.operator = operator
        # Absolute: the run refused may be in another folder, or another user's.
        self.journal = os.path.abspath(journal)
        self.folder = lock_folder() if folder is None else folder
        self.keys = device_keys(cell)
        #: The lock files held: path -> descriptor.
        self._held: dict[Path, int] = {}

    def path_of(self, key: str) -> Path:
        """The lock file of a device key."""
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.lock"

    @property
    def held(self) -> bool:
        """Whether the locks are held."""
        return bool(self._held)

    def acquire(self) -> None:
        """Take every device's lock without waiting; CellBusy when another process holds one
        (then none is kept), CellLockUnavailable when the folder or a file cannot be used."""
        if self._held or not self.keys:
            return
        _prepare_folder(self.folder)
        started = _now()
        host = socket.gethostname()
        try:
            # In one order for everyone (by path): two runs that each got one lock both see a
            # lock they cannot take, so neither starts, and neither waits for the other.
            for path, device, key in sorted((self.path_of(k), d, k) for d, k in self.keys.items()):
                self._take(path, device, key, started, host)
        except BaseException:
            self.release()
            raise

    def _take(self, path: Path, device: str, key: str, started: str, host: str) -> None:
        try:
            fd = _open_lock_file(path)
        except OSError as error:
            raise CellLockUnavailable(
                f"cell lock file {path} ({key}): {error.strerror or error}; every user must be "
                f"able to read and write it (mode 0666) in a folder of mode 1777"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise CellBusy(self.cell.cell, device, key, _read_holder(path)) from None
            raise CellLockUnavailable(
                f"cell lock file {path} ({key}): {error.strerror or error}"
            ) from None
        self._held[path] = fd
        holder = Holder(
            self.batch,
            self.operator,
            os.getpid(),
            host,
            self.journal,
            started,
            self.cell.cell,
            f"{device} ({key})",
        )
        text = holder.to_json().encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, text, 0)
        except OSError as error:  # the lock is held all the same: only the details are lost
            raise CellLockUnavailable(
                f"cell lock file {path}: cannot write who holds it: {error.strerror or error}"
            ) from None

    def release(self) -> None:
        """Let every held lock go (the files stay: removing one another run may have opened
        would let two runs hold 'the same' lock on two files)."""
        held, self._held = self._held, {}
        for fd in held.values():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)

    def __enter__(self) -> CellLock:
        self.acquire()
        return self

    async def __aenter__(self) -> CellLock:
        # flock without waiting, on files in a tmpfs: nothing here blocks the loop.
        self.acquire()
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
