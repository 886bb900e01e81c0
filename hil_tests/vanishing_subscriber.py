"""An OPC UA client that subscribes to a `cellctl serve`'s PackML.State and CurrentStep and is
then killed (SIGKILL) by the test, never closing its session: hil_tests/test_service_clients.py.

Usage: python -m hil_tests.vanishing_subscriber URL SESSION_TIMEOUT_MS

It asks for that session timeout (asyncua's servers grant 5 s at least: the session and its
subscription outlive the killed client that long after its last request), prints
``SUBSCRIBED`` once the first value of both variables has arrived, then ``State=<value>`` and
``CurrentStep=<value>`` for every notification, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from asyncua import ua
from asyncua.client.client import Client

from cellctl.service.api import NAMESPACE, PACKML

#: What it watches.
WATCHED = ("State", "CurrentStep")


class Printer:
    """asyncua's data-change handler: one line per notification, SUBSCRIBED after both firsts."""

    def __init__(self, names: dict[ua.NodeId, str]) -> None:
        self._names = names
        self._seen: set[str] = set()
        self._said = False

    def datachange_notification(self, node: Any, value: object, data: object) -> None:
        """A value of a watched variable arrived."""
        name = self._names.get(node.nodeid, str(node.nodeid))
        print(f"{name}={value}", flush=True)
        self._seen.add(name)
        if not self._said and self._seen >= set(WATCHED):
            self._said = True
            print("SUBSCRIBED", flush=True)


async def main(url: str, session_timeout_ms: int) -> None:
    """Connect, subscribe, and wait to be killed."""
    client = Client(url, timeout=10, watchdog_intervall=3600.0)
    client.session_timeout = session_timeout_ms
    await client.connect()
    idx = await client.get_namespace_index(NAMESPACE)
    nodes = {ua.NodeId(ua.String(f"{PACKML}.{n}"), ua.Int16(idx)): n for n in WATCHED}
    subscription = await client.create_subscription(100, Printer(nodes))
    await subscription.subscribe_data_change([client.get_node(n) for n in nodes])
    await asyncio.Event().wait()  # until SIGKILL: the session is never closed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
