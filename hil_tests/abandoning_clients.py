"""OPC UA clients that open sessions with a subscription each and are then killed (SIGKILL) by
the test, never closing them: hil_tests/test_hostile_clients_opcua.py.

Usage: python -m hil_tests.abandoning_clients URL NODE_ID SESSIONS

Each session asks for a session timeout of an hour and a subscription to NODE_ID publishing
every millisecond (what a careless or hostile client may ask: the server decides what it
grants). Prints ``READY`` once every subscription exists, then waits to be killed.
"""

from __future__ import annotations

import asyncio
import sys

from asyncua.client.client import Client

#: What each session asks for.
SESSION_TIMEOUT_MS = 3_600_000
PUBLISHING_INTERVAL_MS = 1.0
#: Sessions opened at once (a connect is four round trips).
AT_ONCE = 10


class Ignore:
    """asyncua's data-change handler that does nothing with what arrives."""

    def datachange_notification(self, node: object, value: object, data: object) -> None:
        """A value arrived."""


async def open_one(url: str, node_id: str) -> Client:
    """One session with its subscription."""
    client = Client(url, timeout=10, watchdog_intervall=3600.0)
    client.session_timeout = SESSION_TIMEOUT_MS
    await client.connect()
    subscription = await client.create_subscription(PUBLISHING_INTERVAL_MS, Ignore())
    await subscription.subscribe_data_change(client.get_node(node_id))
    return client


async def main(url: str, node_id: str, count: int) -> None:
    """Open `count` sessions, say so, and wait to be killed."""
    held: list[Client] = []
    for start in range(0, count, AT_ONCE):
        chunk = min(AT_ONCE, count - start)
        held += await asyncio.gather(*(open_one(url, node_id) for _ in range(chunk)))
    print("READY", flush=True)
    await asyncio.Event().wait()  # until SIGKILL: no session is ever closed


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
