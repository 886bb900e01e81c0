"""A bus's pymodbus client, and the quiet a serial line needs after a failed try."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.framer import FramerType
from pymodbus.logging import Log
from pymodbus.pdu import DecodePDU

from drivers.config import ModbusRtuConfig, ModbusTcpConfig, RequestLimits

# The shortest quiet a serial line needs after a failed try before the next request. The RTU
# frame gap is only 3.5 characters (2 ms at 19200 baud), but a USB–RS-485 adaptor hands bytes
# over in bursts up to its latency timer apart (16 ms by default on FTDI chips) and the OS adds
# its own delay: 50 ms covers both, and is spent only after a failure.
TURNAROUND_MIN = 0.05


def turnaround(config: ModbusRtuConfig) -> float:
    """How long a serial line must stay quiet after a failed try: max(3.5 characters, 50 ms)."""
    parity = 0 if config.parity == "N" else 1
    bits = 1 + config.bytesize + parity + config.stopbits  # start, data, parity, stop bits
    return max(3.5 * bits / config.baudrate, TURNAROUND_MIN)


class LineBusy(Exception):
    """A serial line did not stay quiet for a turnaround before the request's deadline."""


class SerialQuiet:
    """When a serial line may carry the next request: quiet for a turnaround after a failed try.

    What arrives meanwhile is a late answer to the failed try. On TCP (turnaround 0) transaction
    ids tell answers apart: nothing is ever owed.
    """

    def __init__(self, turnaround: float, timeout: float) -> None:
        self.turnaround = turnaround
        self._timeout = timeout
        # After a failed try, the loop time from which the line must stay quiet for a
        # turnaround before the next request (None: nothing can be on its way).
        self._answer_due: float | None = None
        self._heard = -math.inf  # loop time of the last bytes received

    def answer_may_come(self, sent: float) -> None:
        """A try sent at loop time `sent` got no answer, or a wrong one: its own may still come."""
        if self.turnaround > 0:
            # pymodbus would have given up on the answer at sent + timeout: the line must be
            # quiet for a turnaround after that (or after the last byte heard, if later).
            due = sent + self._timeout
            self._answer_due = max(due, self._answer_due or due)

    async def wait(self, deadline: float) -> None:
        """Wait until the line was quiet for a turnaround after a failed try.

        pymodbus drops what arrives meanwhile, as no request is waiting. Raises LineBusy when
        the line cannot be quiet before `deadline`.
        """
        loop = asyncio.get_running_loop()
        while self._answer_due is not None:
            quiet_at = max(self._answer_due, self._heard) + self.turnaround
            now = loop.time()
            if now >= quiet_at:
                self._answer_due = None
                return
            if quiet_at > deadline:
                raise LineBusy
            await asyncio.sleep(quiet_at - now)

    def on_packet(self, sending: bool, data: bytes) -> bytes:
        """pymodbus's trace_packet hook, called in the loop for every chunk sent or received."""
        if not sending:
            self._heard = asyncio.get_running_loop().time()
        return data


def make_client(
    config: ModbusTcpConfig | ModbusRtuConfig,
    limits: RequestLimits,
    on_connection: Callable[[bool], None],
    on_packet: Callable[[bool, bytes], bytes],
    decoder: DecodePDU,
) -> ModbusBaseClient:
    """A pymodbus client for the bus (inside the running loop, as pymodbus needs) that decodes
    answers with `decoder`."""
    # reconnect_delay=0 turns pymodbus's reconnect off: the bus's connect loop does it, with
    # jitter.
    # retries=0: pymodbus would resend the same request (same transaction id); the bus
    # retries itself with fresh requests.
    client: ModbusBaseClient
    if isinstance(config, ModbusTcpConfig):
        client = AsyncModbusTcpClient(
            config.host,
            port=config.port,
            timeout=limits.timeout,
            retries=0,
            reconnect_delay=0,
            trace_connect=on_connection,
        )
    else:
        client = AsyncModbusSerialClient(
            config.port,
            framer=FramerType.RTU,
            baudrate=config.baudrate,
            bytesize=config.bytesize,
            parity=config.parity,
            stopbits=config.stopbits,
            timeout=limits.timeout,
            retries=0,
            reconnect_delay=0,
            trace_packet=on_packet,
            trace_connect=on_connection,
        )
    # pymodbus drops a TCP connection after a run of unanswered requests (retries + 3 by
    # default); counted in tries now, so keep that run as long in requests.
    client.set_max_no_responses((limits.retries + 1) * (limits.retries + 3))
    # pymodbus appends the last 20 chunks received, in hex, to each error it logs (one read
    # ends in such an error after a timeout): a device that floods the link turns each into
    # megabytes of log, built in the event loop. Keep none: the error's text is enough.
    Log.MAX_FRAMES = 0
    # The framer's decoder is what client.register() extends: the one place to plug one in.
    client.ctx.framer.decoder = decoder
    return client
