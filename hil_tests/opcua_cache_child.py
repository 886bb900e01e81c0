"""One OPC UA simulator in its own process, started on a signal, for the address-space cache
tests (hil_tests/test_opcua_cache.py).

Usage: python hil_tests/opcua_cache_child.py

It uses the default cache folder (set XDG_CACHE_HOME), prints ``READY`` once its imports are
done, starts when it reads a line on stdin, prints ``ENDPOINT <url>`` once it listens on
127.0.0.1, and serves until stdin closes. Its one node ``ns=2;s=Robot.Busy`` reads true.
"""

from __future__ import annotations

import asyncio
import sys

from drivers.points import DataType, OpcuaPoint
from drivers.sim.image import ProcessImage
from drivers.sim.opcua_server import OpcuaSimServer

BUSY = OpcuaPoint("robot.busy", "ns=2;s=Robot.Busy", DataType.BOOL)


async def main() -> None:
    """Wait for the go line, serve, stop when stdin closes."""
    image = ProcessImage("robot", [BUSY])
    image.set(BUSY.name, True)
    server = OpcuaSimServer("opc.tcp://127.0.0.1:0/robot", image)
    print("READY", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await server.start()
    print(f"ENDPOINT {server.endpoint}", flush=True)
    try:
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await server.stop()


if __name__ == "__main__":
    asyncio.run(main())
