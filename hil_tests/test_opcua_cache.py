"""The OPC UA simulators' shared address-space cache: built at once by several processes on a
fresh machine, and never trusted half-written (real asyncua servers and clients)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shelve
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import asyncua
import pytest
from asyncua.client.client import Client
from asyncua.ua.object_ids import ObjectIds

from drivers.opcua_types import ns0_node
from drivers.points import DataType, OpcuaPoint
from drivers.sim.image import ProcessImage
from drivers.sim.opcua_server import OpcuaSimServer

CHILD = Path(__file__).with_name("opcua_cache_child.py")
BUSY = OpcuaPoint("robot.busy", "ns=2;s=Robot.Busy", DataType.BOOL)
CACHE = f"asyncua-{asyncua.__version__}-address-space.d"
SHELF = "address-space"
AN_HOUR_AGO = 3600.0


async def read_busy_and_a_standard_node(endpoint: str) -> tuple[object, object]:
    """Robot.Busy and a node of the standard address space (one a cached shelf would serve)."""
    async with Client(endpoint, timeout=5) as client:
        busy = await client.get_node(BUSY.node_id).read_value()
        name = await client.get_node(ns0_node(ObjectIds.RootFolder)).read_browse_name()
    return busy, name.Name


def names(folder: Path) -> list[str]:
    """The names in a folder, sorted."""
    return sorted(p.name for p in folder.iterdir())


def assert_one_complete_cache(cache_dir: Path) -> None:
    """The cache folder holds one installed cache whose shelf serves the standard nodes."""
    shelf = cache_dir / CACHE / SHELF
    assert shelf.is_file(), names(cache_dir)
    with shelve.open(str(shelf), "r") as nodes:
        assert len(nodes) > 1000  # the whole standard address space
        root = nodes[ns0_node(ObjectIds.RootFolder).to_string()]
        assert root.nodeid == ns0_node(ObjectIds.RootFolder)


@contextlib.asynccontextmanager
async def child_simulator(xdg: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """hil_tests/opcua_cache_child.py with XDG_CACHE_HOME=xdg, once its imports are done."""
    env = {**os.environ, "XDG_CACHE_HOME": str(xdg), "PYTHONPATH": str(CHILD.parent.parent)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            assert await child.stdout.readline() == b"READY\n"
        yield child
    finally:
        if child.returncode is None:
            assert child.stdin is not None
            child.stdin.close()  # its end of serving
            try:
                async with asyncio.timeout(10):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()


@pytest.mark.extended  # 8-10 s of cache builds: the default suite keeps the cache's load
@pytest.mark.asyncio
async def test_two_simulators_starting_at_once_on_an_empty_cache_both_serve(
    tmp_path: Path,
) -> None:
    async with child_simulator(tmp_path) as one, child_simulator(tmp_path) as two:
        # Both past their imports: start both now, so both find no cache and build it.
        for child in (one, two):
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            await child.stdin.drain()
        endpoints = []
        for child in (one, two):
            assert child.stdout is not None
            async with asyncio.timeout(30):
                line = (await child.stdout.readline()).decode()
            assert line.startswith("ENDPOINT "), line
            endpoints.append(line.split()[1])
        for endpoint in endpoints:
            assert await read_busy_and_a_standard_node(endpoint) == (True, "Root")
    for child in (one, two):
        assert child.returncode == 0
    cache_dir = tmp_path / "cellctl"
    # One cache, complete; the losing build is gone.
    assert await asyncio.to_thread(names, cache_dir) == [CACHE]
    assert_one_complete_cache(cache_dir)
    # A third start loads that cache and serves from it.
    server = OpcuaSimServer("opc.tcp://127.0.0.1:0/robot", robot_image(), cache_dir=cache_dir)
    await server.start()
    try:
        assert await read_busy_and_a_standard_node(server.endpoint) == (True, "Root")
    finally:
        await server.stop()


def robot_image() -> ProcessImage:
    """The robot's process image with Robot.Busy true."""
    image = ProcessImage("robot", [BUSY])
    image.set(BUSY.name, True)
    return image


def half_written(shelf: Path) -> None:
    """The most a killed build can leave: every file of the set, the marker too, but the data
    cut short (a data file of zeros that the index points past)."""
    shelf.parent.mkdir(parents=True, exist_ok=True)
    shelf.touch()
    root = ns0_node(ObjectIds.RootFolder).to_string()
    Path(f"{shelf}.dir").write_text(f"{root!r}, (0, 4096)\n", encoding="latin-1")
    Path(f"{shelf}.dat").write_bytes(bytes(16))


@pytest.mark.extended  # 8 s: a killed build
@pytest.mark.asyncio
async def test_a_half_written_cache_of_a_killed_build_is_never_used_and_is_removed(
    tmp_path: Path,
) -> None:
    dead, alive = tmp_path / ".build-killed", tmp_path / ".build-running"
    # Where the cache lived before it was a folder, its files installed one by one, unsynced.
    old_layout = tmp_path / f"asyncua-{asyncua.__version__}-address-space"
    half_written(old_layout)
    for folder in (dead, alive):
        half_written(folder / SHELF)
        # Left an hour ago: older than any build takes.
        old = folder.stat().st_mtime - AN_HOUR_AGO
        os.utime(folder, (old, old))
    # A builder still running holds its folder's lock, however old the folder.
    running = os.open(alive, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(running, fcntl.LOCK_EX)
        server = OpcuaSimServer("opc.tcp://127.0.0.1:0/robot", robot_image(), cache_dir=tmp_path)
        await server.start()
        try:
            assert await read_busy_and_a_standard_node(server.endpoint) == (True, "Root")
        finally:
            await server.stop()
        old_files = {old_layout.name + suffix for suffix in ("", ".dir", ".dat")}
        assert await asyncio.to_thread(names, tmp_path) == sorted(
            {".build-running", CACHE, *old_files}
        )
    finally:
        os.close(running)
    assert_one_complete_cache(tmp_path)
