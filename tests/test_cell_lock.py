"""One batch per cell: the device locks of cellctl.io.celllock, across processes (a second taker
refused with the first named; released when the first ends, SIGKILL included) and within one
(the keys: copies of a cell file collide, disjoint cells do not)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cellctl import exitcodes
from cellctl.cell import Cell, load_cell
from cellctl.io.celllock import (
    LOCK_DIR_VARIABLE,
    CellBusy,
    CellLock,
    Holder,
    device_keys,
    lock_folder,
)
from cellctl.testing import cli, wait_until

CELL = """\
cell: {name}
devices:
  plc: {{driver: modbus-tcp, host: {host}, port: 1502, unit: 1}}
  panel: {{driver: opcua, endpoint: "opc.tcp://127.0.0.1:{opcua}/{path}"}}
  mem: {{driver: memory}}
"""

#: The child: take the cell's lock, then hold it until stdin closes (or the child is killed).
CHILD = """\
import sys
from pathlib import Path
from cellctl.cell import load_cell
from cellctl.io.celllock import CellLock
lock = CellLock(load_cell(Path(sys.argv[1])), batch="B-first", operator="alice",
                journal="/elsewhere/alice.sqlite", folder=Path(sys.argv[2]))
lock.acquire()
sys.stdin.read()
"""


def cell_file(
    folder: Path, file: str, *, name: str = "press", host: str = "127.0.0.1", opcua: int = 48400
) -> Cell:
    """A cell with a Modbus TCP device, an OPC UA server and a memory device, loaded."""
    path = folder / file
    text = CELL.format(name=name, host=host, opcua=opcua, path=file.removesuffix(".yaml"))
    path.write_text(text)
    return load_cell(path)


@pytest.fixture
def locks(tmp_path: Path) -> Path:
    """An empty lock folder of this test's own (never the machine's)."""
    return tmp_path / "locks"


def lock(cell: Cell, folder: Path, batch: str = "B-second") -> CellLock:
    return CellLock(cell, batch=batch, operator="bob", journal="/mine.sqlite", folder=folder)


@pytest.fixture
def first(tmp_path: Path, locks: Path) -> Iterator[subprocess.Popen[str]]:
    """A child process holding the lock of cell press (batch B-first, operator alice)."""
    cell = tmp_path / "first.yaml"
    cell.write_text(CELL.format(name="press", host="127.0.0.1", opcua=48400, path="first"))
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(cell), str(locks)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def holds() -> bool:
        assert child.poll() is None, f"the child ended: {child.communicate()[1]}"
        files = list(locks.glob("*.lock")) if locks.exists() else []
        texts = [f.read_text() for f in files]
        return len(files) == 2 and all(f'"pid": {child.pid}' in t for t in texts)

    try:
        wait_until(holds, 10.0, "the first process to hold the cell's locks")
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=10)


def test_second_process_refused_naming_the_first(
    first: subprocess.Popen[str], tmp_path: Path, locks: Path
) -> None:
    # Another copy of the cell file, elsewhere, and another batch: the same devices.
    copy = cell_file(tmp_path, "copy.yaml")
    taker = lock(copy, locks)
    with pytest.raises(CellBusy) as refused:
        taker.acquire()
    message = str(refused.value)
    assert "B-first" in message and "alice" in message and f"pid {first.pid}" in message
    assert "/elsewhere/alice.sqlite" in message and "cell press" in message
    assert refused.value.exit_code == exitcodes.REFUSED == 7
    assert refused.value.holder is not None and refused.value.holder.pid == first.pid
    assert not taker.held


def test_a_relative_journal_is_named_absolute_to_whoever_is_refused(
    tmp_path: Path, locks: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `run --journal j.sqlite`: a refused run in another folder must find that journal.
    monkeypatch.chdir(tmp_path)
    holder = CellLock(
        cell_file(tmp_path, "a.yaml"),
        batch="B-1",
        operator="al",
        journal=Path("j.sqlite"),
        folder=locks,
    )
    holder.acquire()
    try:
        with pytest.raises(CellBusy) as refused:
            lock(cell_file(tmp_path, "b.yaml"), locks).acquire()
    finally:
        holder.release()
    assert refused.value.holder is not None
    assert refused.value.holder.journal == str(tmp_path / "j.sqlite")


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_lock_released_when_the_holder_ends(
    first: subprocess.Popen[str], tmp_path: Path, locks: Path, how: str
) -> None:
    if how == "sigkill":
        first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)  # closes its stdin: the child that was not killed ends
    assert first.returncode == (-signal.SIGKILL if how == "sigkill" else 0)
    taker = lock(cell_file(tmp_path, "copy.yaml"), locks)
    taker.acquire()  # the dead holder's file (its details still in it) does not block
    try:
        holders = [Holder.from_json(f.read_text()) for f in locks.glob("*.lock")]
        assert {(h.batch, h.pid) for h in holders if h is not None} == {("B-second", os.getpid())}
        assert len(holders) == 2
    finally:
        taker.release()


def test_copies_collide_and_disjoint_cells_do_not(tmp_path: Path, locks: Path) -> None:
    held = lock(cell_file(tmp_path, "a.yaml"), locks, "B-a")
    held.acquire()
    try:
        # Another name, another file, another OPC UA server, the same Modbus unit
        # ("localhost" is 127.0.0.1).
        renamed = cell_file(tmp_path, "b.yaml", name="other", host="LOCALHOST", opcua=48401)
        with pytest.raises(CellBusy, match="B-a"):
            lock(renamed, locks).acquire()
        # Other devices entirely: a cell of its own.
        elsewhere = tmp_path / "c.yaml"
        elsewhere.write_text(
            "cell: press\ndevices:\n  plc: {driver: modbus-tcp, host: 10.0.0.9, port: 502}\n"
        )
        with lock(load_cell(elsewhere), locks) as other:
            assert other.held
    finally:
        held.release()
    with lock(cell_file(tmp_path, "b.yaml"), locks) as second:  # released: free again
        assert second.held


@pytest.mark.parametrize("taken", ["plc", "panel"])
def test_refused_run_keeps_no_lock(tmp_path: Path, locks: Path, taken: str) -> None:
    # The first holds one device; the second wants both (the locks are taken in one order:
    # each case has the one held first in that order or last).
    plc = "cell: plc\ndevices:\n  plc: {driver: modbus-tcp, host: 127.0.0.1, port: 1502}\n"
    panel = (
        'cell: panel\ndevices:\n  panel: {driver: opcua, endpoint: "opc.tcp://127.0.0.1:48400"}\n'
    )
    held, free = (plc, panel) if taken == "plc" else (panel, plc)
    (tmp_path / "held.yaml").write_text(held)
    (tmp_path / "free.yaml").write_text(free)
    with lock(load_cell(tmp_path / "held.yaml"), locks, "B-held"):
        with pytest.raises(CellBusy, match=f"device {taken}"):
            lock(cell_file(tmp_path, "both.yaml"), locks).acquire()
        with lock(load_cell(tmp_path / "free.yaml"), locks) as other:  # that one was let go
            assert other.held


def test_memory_devices_take_no_lock_and_files_are_shared(tmp_path: Path, locks: Path) -> None:
    memory = tmp_path / "memory.yaml"
    memory.write_text("cell: bench\ndevices:\n  mem: {driver: memory}\n")
    assert device_keys(load_cell(memory)) == {}
    with lock(load_cell(memory), locks) as alone:
        assert not alone.held and not locks.exists()
    keys = device_keys(cell_file(tmp_path, "a.yaml"))
    assert keys == {"plc": "modbus-tcp 127.0.0.1:1502 unit 1", "panel": "opcua 127.0.0.1:48400"}
    with lock(cell_file(tmp_path, "a.yaml"), locks):
        # Whoever runs the next batch can take the lock: the folder sticky and open to all.
        assert stat.S_IMODE(locks.stat().st_mode) == 0o1777
        for file in locks.glob("*.lock"):
            assert stat.S_IMODE(file.stat().st_mode) == 0o666
            assert json.loads(file.read_text())["operator"] == "bob"


RECIPE = """\
recipe: one-set
version: 1
steps:
  - {id: go, set: {plc.value: 1}}
"""


def test_run_refused_while_another_batch_holds_the_cell(
    first: subprocess.Popen[str],
    tmp_path: Path,
    locks: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `cellctl run` on a copy of the held cell: refused before it connects (nothing listens
    # at 127.0.0.1:1502: a run that got past the lock would fail to connect, exit 2).
    monkeypatch.setenv(LOCK_DIR_VARIABLE, str(locks))
    cell = tmp_path / "run-cell.yaml"
    cell.write_text(
        CELL.format(name="press", host="127.0.0.1", opcua=48400, path="run").replace(
            "unit: 1}", "unit: 1, timeout: 100ms, retries: 0}"
        )
        + 'tags:\n  plc.value: {device: plc, address: "hr:0", type: uint16, access: rw}\n'
    )
    recipe = tmp_path / "one-set.yaml"
    recipe.write_text(RECIPE)
    args = ("run", recipe, "--cell", cell, "--journal", tmp_path / "journal.sqlite")
    refused = cli(capsys, *args)
    assert refused.exit_code == exitcodes.REFUSED, refused
    assert "B-first" in refused.err and "alice" in refused.err, refused.err
    assert f"pid {first.pid}" in refused.err
    first.communicate(timeout=10)  # the first batch ends: the cell is free
    after = cli(capsys, *args)
    assert after.exit_code == exitcodes.DEVICE_FAILURE, after


def test_lock_folder_is_the_same_for_everyone(tmp_path: Path) -> None:
    assert lock_folder({LOCK_DIR_VARIABLE: str(tmp_path)}) == tmp_path
    # Not per user: neither HOME nor XDG_RUNTIME_DIR moves it.
    assert lock_folder({"HOME": "/home/a", "XDG_RUNTIME_DIR": "/run/user/1"}) == lock_folder({})
