"""Fail closed on the journal's filesystem: a journal on a read-only filesystem means the batch
does not start (exit 6, the path named, nothing written to the device); a journal whose disk
fills mid-batch holds the cell with its safe state (exit 6).

Root ignores file permissions, so the filesystems are real: a small tmpfs mounted over a folder
(and remounted read-only) inside `unshare -rm` (a user and mount namespace of the child's own;
the network is the host's, so the child reaches the simulator on 127.0.0.1). The child is a
Python script (NAMESPACED) that mounts, prepares, runs what the test asks and prints its result
as one JSON line; the disk is filled from outside the product, by that script, while the batch
waits.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cellctl.cell import ModbusTcpDevice
from cellctl.testing import Served, serve
from hil_tests.conftest import tool_missing

GENERIC = Path(__file__).resolve().parent / "cells" / "generic" / "cell.yaml"

#: A batch that waits at `fill` until plc.mode is 7 (the child fills the disk first), then
#: writes a speed the device must never see when the journal could not record its intent.
RECIPE = """\
recipe: journal-fs
version: 1
steps:
  - {id: start, set: {plc.run: true, plc.speed: 300}}
  - {id: fill, wait: "plc.mode == 7", timeout: 60s}
  - {id: faster, set: {plc.speed: 1000}}
  - {id: stop, set: {plc.run: false}}
"""

#: Seconds a namespaced child may take at most (a batch of a few steps, or a store filled).
CHILD_BOUND = 60.0

#: The child in the namespace. argv[1]: JSON {folder, size, journal (a journal made before the
#: remount, or null), readonly, action, ...}. Prints one JSON line: what happened.
NAMESPACED = r"""
import errno, json, os, subprocess, sys
from pathlib import Path

ask = json.loads(sys.argv[1])
folder = Path(ask["folder"])
subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={ask['size']}", "tmpfs", str(folder)],
               check=True)
if ask.get("journal"):
    from cellctl.control.journal.store import SqliteStore
    SqliteStore(folder / ask["journal"]).close()
if ask.get("readonly"):
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


def fill():
    # Write until the tmpfs refuses: from here on nothing more fits on it.
    with open(folder / "filler", "wb", buffering=0) as filler:
        while True:
            try:
                filler.write(b"\0" * 4096)
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
                return


if ask["action"] == "store":
    from cellctl.control.journal.store import JournalUnavailable, NewRow, SqliteStore
    written = 0
    try:
        store = SqliteStore(folder / "journal.sqlite")
        while written < 10_000:
            row = NewRow("B-fs", "2026-12-06T14:00:00.000000Z", "notice", '"' + "x" * 1000 + '"')
            store.append([row])
            written += 1
        print(json.dumps({"error": None, "written": written}))
    except JournalUnavailable as error:
        print(json.dumps({"error": str(error), "reason": error.reason, "written": written}))
elif ask["action"] == "run":
    child = subprocess.Popen(ask["argv"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    lines = []
    filled = False
    for line in child.stdout:
        lines.append(line.rstrip("\n"))
        if ask.get("fill_at") and ask["fill_at"] in line and not filled:
            fill()
            filled = True
            from pymodbus.client import ModbusTcpClient
            client = ModbusTcpClient(ask["host"], port=ask["port"], timeout=2, retries=0)
            assert client.connect()
            client.write_register(1, 7, device_id=1)  # plc.mode: the batch moves on
            client.close()
    code = child.wait()
    print(json.dumps({"code": code, "out": lines, "err": child.stderr.read(), "filled": filled}))
"""


@functools.cache
def _unshare_problem() -> str | None:
    """Why `unshare -rm` cannot mount a tmpfs here, or None when it can."""
    probe = "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d && rmdir $d"
    try:
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", probe], capture_output=True, text=True, timeout=20
        )
    except FileNotFoundError:
        return "unshare is not installed"
    if done.returncode != 0:
        return f"unshare -rm cannot mount a tmpfs here: {done.stderr.strip()}"
    return None


def namespaced(folder: Path, **ask: Any) -> dict[str, Any]:
    """Run NAMESPACED in `unshare -rm` with `folder` (made here) as its tmpfs; its result."""
    problem = _unshare_problem()
    if problem is not None:
        tool_missing("netns", problem)
    folder.mkdir(parents=True, exist_ok=True)
    ask = {"size": "64k", "journal": None, "readonly": False, **ask, "folder": str(folder)}
    done = subprocess.run(
        ["unshare", "-rm", sys.executable, "-c", NAMESPACED, json.dumps(ask)],
        capture_output=True,
        text=True,
        timeout=CHILD_BOUND,
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent)),
    )
    assert done.returncode == 0, f"the namespaced child failed:\n{done.stderr[-3000:]}"
    assert folder.exists() and not any(folder.iterdir()), "the tmpfs leaked out of the namespace"
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


# --- the harness: the journal's store itself ----------------------------------------------


def test_store_on_a_full_tmpfs_says_the_disk_is_full(tmp_path: Path) -> None:
    result = namespaced(tmp_path / "fs", action="store")
    assert result["error"] is not None, f"{result['written']} rows fitted on a 64 kB tmpfs"
    assert result["reason"].startswith("the disk is full"), result
    assert result["written"] > 0  # it filled while writing, not at opening
    assert str(tmp_path / "fs" / "journal.sqlite") in result["error"]


def test_store_on_a_read_only_tmpfs_cannot_be_written(tmp_path: Path) -> None:
    result = namespaced(tmp_path / "fs", action="store", journal="journal.sqlite", readonly=True)
    assert result["error"] is not None and result["written"] == 0, result
    assert str(tmp_path / "fs" / "journal.sqlite") in result["error"]


# --- `cellctl run` with its journal there -------------------------------------------------


@pytest.fixture
def generic(tmp_path: Path) -> Any:
    """The generic cell (one Modbus TCP device, safe state plc.run false) on its simulator."""
    (tmp_path / "served").mkdir()
    with serve(GENERIC, tmp_path / "served") as served:
        yield served


def plc(served: Served) -> ModbusTcpDevice:
    device = served.cell.devices["plc"]
    assert isinstance(device, ModbusTcpDevice)
    return device


async def _raw(served: Served, write: tuple[bool, int] | None = None) -> tuple[bool, int]:
    """plc.run (coil 0) and plc.speed (hr 0) as a raw pymodbus client reads them, after
    writing them when `write` is given."""
    from pymodbus.client import AsyncModbusTcpClient

    device = plc(served)
    client = AsyncModbusTcpClient(device.host, port=device.port, timeout=1.0, retries=0)
    try:
        assert await client.connect(), f"plc at {device.host}:{device.port}: no connection"
        if write is not None:
            assert not (await client.write_coil(0, write[0], device_id=device.unit)).isError()
            assert not (await client.write_register(0, write[1], device_id=device.unit)).isError()
        coils = await client.read_coils(0, count=1, device_id=device.unit)
        registers = await client.read_holding_registers(0, count=1, device_id=device.unit)
        assert not coils.isError() and not registers.isError(), (coils, registers)
        return bool(coils.bits[0]), int(registers.registers[0])
    finally:
        client.close()


def run_argv(served: Served, folder: Path, journal: Path) -> list[str]:
    recipe = folder / "journal-fs.yaml"
    recipe.write_text(RECIPE, encoding="utf-8")
    return [
        sys.executable,
        "-m",
        "cellctl",
        "--log-file",
        str(folder / "cellctl.log"),
        "run",
        str(recipe),
        "--cell",
        str(served.cell_file),
        "--journal",
        str(journal),
    ]


def test_run_with_its_journal_on_a_read_only_fs_does_not_start(
    generic: Served, tmp_path: Path
) -> None:
    # Values no run would leave: a write of any kind (the recipe's, the safe state's) shows.
    assert asyncio.run(_raw(generic, (True, 1234))) == (True, 1234)
    journal = tmp_path / "fs" / "journal.sqlite"
    argv = run_argv(generic, tmp_path, journal)
    # 1 MB: room for the batch's rows, were the filesystem writable.
    result = namespaced(
        tmp_path / "fs",
        size="1m",
        action="run",
        argv=argv,
        journal="journal.sqlite",
        readonly=True,
    )
    said = "\n".join(result["out"]) + result["err"]
    assert result["code"] == 6, said
    assert str(journal) in said
    assert asyncio.run(_raw(generic)) == (True, 1234), "a run whose journal failed wrote"


def test_a_journal_that_fills_mid_batch_holds_with_the_safe_state(
    generic: Served, tmp_path: Path
) -> None:
    asyncio.run(_raw(generic, (False, 0)))
    device = plc(generic)
    argv = run_argv(generic, tmp_path, tmp_path / "fs" / "journal.sqlite")
    result = namespaced(
        tmp_path / "fs",
        size="1m",
        action="run",
        argv=argv,
        fill_at="fill started",
        host=device.host,
        port=device.port,
    )
    said = "\n".join(result["out"]) + result["err"]
    assert result["filled"], f"the batch never reached its fill step:\n{said}"
    assert result["code"] == 6, said
    assert "outcome: Held" in result["out"], said
    assert "journal cannot be written: the disk is full" in said, said
    # The safe state (plc.run false) written; the step after the fill (speed 1000) not sent.
    assert asyncio.run(_raw(generic)) == (False, 300), said
