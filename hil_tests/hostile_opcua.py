"""An OPC UA server whose nodes misbehave on command, for the hostile-device tests: values of the
wrong type or of any size behind a node whose DataType says otherwise, bad and uncertain status
codes, a method that never returns, subscriptions that stop publishing (real asyncua server on
127.0.0.1, a free port, started from the address-space cache).

Run as `python -m hil_tests.hostile_opcua`, it serves huge values from a process of its own
(see serve_huge).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

from asyncua import ua
from asyncua.common.node import Node
from asyncua.server.server import Server

from drivers.sim.opcua_cache import default_cache_dir, init_with_cache

NAMESPACE = "urn:cellctl:test:hostile"
#: ns=2: the first namespace registered on a fresh server.
NS = 2


@dataclass(frozen=True)
class Variable:
    """A variable of the hostile server: its NodeId string, DataType and first value."""

    name: str
    varianttype: ua.VariantType
    initial: object
    writable: bool = False

    @property
    def node_id(self) -> str:
        """The NodeId as a cell file writes it."""
        return f"ns={NS};s={self.name}"


TEMP = Variable("Arm.Temp", ua.VariantType.Double, 20.5)
READY = Variable("Arm.Ready", ua.VariantType.Boolean, True)
LABEL = Variable("Arm.Label", ua.VariantType.String, "lot-1")
RUN = Variable("Arm.Run", ua.VariantType.Boolean, False, writable=True)
VARIABLES = (TEMP, READY, LABEL, RUN)
#: The method: Arm (object) 2:Move(slot: Int32) -> Boolean; it hangs while `hang` is set.
ARM = f"ns={NS};s=Arm"
MOVE = f"{NS}:Move"


class HostileServer:
    """A started asyncua server with VARIABLES and Arm.Move, and the ways it misbehaves."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.nodes: dict[str, Node] = {}
        #: While set, Move awaits `release` (for ever, unless a test sets it).
        self.hang = False
        self.release = asyncio.Event()
        #: Move calls received, and those that returned.
        self.calls = 0
        self.answered = 0

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        assert self.server.bserver is not None
        return int(self.server.bserver.port)

    @property
    def endpoint(self) -> str:
        """The URL the driver connects to."""
        return f"opc.tcp://127.0.0.1:{self.port}/arm"

    async def put(self, variable: Variable, value: ua.Variant, status: int | None = None) -> None:
        """Give a node any value (server side: no type check), with a status code if given."""
        code = ua.StatusCode(ua.UInt32(status)) if status is not None else ua.StatusCode()
        node_id = ua.NodeId(variable.name, NS)
        # asyncua refuses a value whose type differs from the node's current one; a hostile
        # device does not. A node without a value takes any value: clear it first.
        self.server.iserver.aspace[node_id].attributes[ua.AttributeIds.Value].value = None
        await self.server.write_attribute_value(node_id, ua.DataValue(value, StatusCode=code))

    async def restore(self) -> None:
        """Every variable back to its first value, Good; Move answers again."""
        for variable in VARIABLES:
            await self.put(variable, ua.Variant(variable.initial, variable.varianttype))
        self.hang = False

    def silence(self) -> int:
        """Stop publishing on every subscription alive now: no data changes, no keep-alives,
        while reads and calls are answered as before.
        Subscriptions created later publish. Returns how many were silenced."""
        silenced = 0
        for sub in self.server.iserver.subscription_service.subscriptions.values():
            # asyncua publishes from one task per subscription: without it, nothing is sent.
            task = sub._task
            if task is not None:
                task.cancel()
                sub._task = None
                silenced += 1
        return silenced

    async def _move(self, _parent: ua.NodeId, slot: ua.Variant) -> list[ua.Variant]:
        """Arm.Move: reachable slots are odd; hangs while `hang` is set."""
        self.calls += 1
        if self.hang:
            await self.release.wait()
        self.answered += 1
        return [ua.Variant(slot.Value % 2 == 1, ua.VariantType.Boolean)]

    async def _build(self) -> None:
        """The address space: the variables under Objects, and the Arm object with Move."""
        idx = await self.server.register_namespace(NAMESPACE)
        assert idx == NS
        objects = self.server.nodes.objects
        for variable in VARIABLES:
            node = await objects.add_variable(
                ua.NodeId(variable.name, NS),
                variable.name,
                ua.Variant(variable.initial, variable.varianttype),
                varianttype=variable.varianttype,
            )
            if variable.writable:
                await node.set_writable()
            self.nodes[variable.name] = node
        arm = await objects.add_object(ua.NodeId("Arm", NS), "Arm")
        await arm.add_method(
            ua.NodeId("Arm.Move", NS),
            ua.QualifiedName("Move", NS),
            self._move,
            [ua.VariantType.Int32],
            [ua.VariantType.Boolean],
        )


@contextlib.asynccontextmanager
async def hostile_server() -> AsyncIterator[HostileServer]:
    """A started HostileServer on 127.0.0.1 and a free port; stopped after (a hung call let go)."""
    server = Server()
    await init_with_cache(server, default_cache_dir())
    server.set_endpoint("opc.tcp://127.0.0.1:0/arm")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    server.disable_clock()
    hostile = HostileServer(server)
    await hostile._build()
    await server.start()
    try:
        yield hostile
    finally:
        hostile.release.set()
        await server.stop()


#: The huge values of the child server (`python -m hil_tests.hostile_opcua`): a 10 MB string
#: where the cell expects a short one, a 1,000,000-element Double array where it expects one.
HUGE_STRING = 10_000_000
HUGE_ARRAY = 1_000_000


async def serve_huge() -> None:
    """Serve with the huge values in a process of its own (so that the test's memory is the
    client's alone): print ``PORT <n>``; a line ``restore`` on stdin restores the values (and
    prints ``RESTORED``); the end of stdin stops the server."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with hostile_server() as hostile:
        await hostile.put(LABEL, ua.Variant("x" * HUGE_STRING, ua.VariantType.String))
        await hostile.put(TEMP, ua.Variant([0.5] * HUGE_ARRAY, ua.VariantType.Double))
        print(f"PORT {hostile.port}", flush=True)
        while line := await reader.readline():
            if line.strip() == b"restore":
                await hostile.restore()
                print("RESTORED", flush=True)


if __name__ == "__main__":
    asyncio.run(serve_huge())
