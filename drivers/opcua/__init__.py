"""The OPC UA driver: an asyncua client with its own reconnect loop, node checks, subscriptions.

driver.py: OpcuaDriver (reads, writes, calls, subscriptions); session.py: its session (connect,
keep-alive, reconnect, background tasks); requests.py: bounded service calls and the checks of
the server's nodes against the cell file; watch.py: one subscribe() call; security.py:
policies, certificates, trust; nodes.py: NodeIds, browse paths, readings; faults.py: which
failures are passing and how they are named.
"""

from drivers.opcua.driver import RECHECKS, OpcuaDriver
from drivers.opcua.requests import RECONNECT_CAP

__all__ = ["RECHECKS", "RECONNECT_CAP", "OpcuaDriver"]
