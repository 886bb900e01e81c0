"""Defaults the command line needs without importing the service (no imports: `cellctl
--help` stays fast)."""

#: Where `cellctl serve` listens and the remote CLI connects unless told (the demo cell's
#: simulated robot takes OPC UA's registered port 4840 on loopback, hence 4850).
DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4850"
