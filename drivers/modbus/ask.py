"""One Modbus request as the driver sends it, and the check that an answer is its own."""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

from pymodbus.client import ModbusBaseClient
from pymodbus.pdu import DecodePDU, ModbusPDU

from drivers.points import ModbusTable

# The function code that reads each table.
READ_FC: dict[ModbusTable, int] = {
    ModbusTable.COIL: 1,
    ModbusTable.DISCRETE_INPUT: 2,
    ModbusTable.HOLDING_REGISTER: 3,
    ModbusTable.INPUT_REGISTER: 4,
}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class Undecodable(ModbusPDU):
    """An answer frame whose PDU cannot be decoded (an unknown function code, a byte count
    beyond the frame): what AnswerDecoder gives instead of nothing."""

    def __init__(self, pdu: bytes) -> None:
        super().__init__()
        #: The PDU as received: function code and data.
        self.pdu = pdu

    def describe(self) -> str:
        """What arrived, for a technician: its function code and size."""
        fc = f"function {self.pdu[0]}, " if self.pdu else ""
        return f"{fc}{_plural(len(self.pdu), 'byte')}"


class AnswerDecoder(DecodePDU):
    """pymodbus's decoder of answers, but an answer it cannot decode is Undecodable: a failed
    try the bus retries. (pymodbus raises on it inside the protocol's data_received: asyncio
    then logs a traceback and drops the connection, and the request waits for its timeout.)"""

    def __init__(self) -> None:
        super().__init__(is_server=False)

    def decode(self, frame: bytes) -> ModbusPDU:
        """The answer in `frame`, or Undecodable."""
        try:
            pdu: ModbusPDU | None = super().decode(frame)
        except Exception:  # pymodbus catches its own decode errors; anything else alike
            pdu = None
        return pdu if pdu is not None else Undecodable(bytes(frame))


@dataclass(frozen=True)
class Ask:
    """One Modbus request as the driver sends it: function code, address, count or values."""

    function: int
    address: int
    count: int = 1
    #: What a write sends: (0 or 1,) for fc 5, (word,) for fc 6, the words for fc 16.
    values: tuple[int, ...] = ()

    def send(self, client: ModbusBaseClient, unit: int) -> Awaitable[ModbusPDU]:
        """Send it as a new request (pymodbus gives it a fresh transaction id on TCP)."""
        a, n, fc = self.address, self.count, self.function
        if fc == 1:
            return client.read_coils(a, count=n, device_id=unit)
        if fc == 2:
            return client.read_discrete_inputs(a, count=n, device_id=unit)
        if fc == 3:
            return client.read_holding_registers(a, count=n, device_id=unit)
        if fc == 4:
            return client.read_input_registers(a, count=n, device_id=unit)
        if fc == 5:
            return client.write_coil(a, bool(self.values[0]), device_id=unit)
        if fc == 6:
            return client.write_register(a, self.values[0], device_id=unit)
        if fc == 16:
            return client.write_registers(a, list(self.values), device_id=unit)
        raise ValueError(f"function code {fc} is not one the driver sends")

    def mismatch(self, response: ModbusPDU) -> str | None:
        """Why `response` cannot answer this request (function, size or echo), or None."""
        fc = self.function
        if isinstance(response, Undecodable):
            return f"an answer that cannot be decoded ({response.describe()})"
        got = int(response.function_code)
        if response.isError():
            got &= 0x7F
            return None if got == fc else f"an exception answer to function {got}, sent {fc}"
        if got != fc:
            return f"a function {got} answer to a function {fc} request"
        if fc in (1, 2):
            size = (self.count + 7) // 8  # bits come back packed in whole bytes
            if len(response.bits) != 8 * size:
                return f"{len(response.bits) // 8} bytes of bits, expected {size}"
        elif fc in (3, 4):
            if len(response.registers) != self.count:
                return f"{_plural(len(response.registers), 'register')}, expected {self.count}"
        elif fc in (5, 6):
            echo = response.bits[:1] if fc == 5 else response.registers[:1]
            if response.address != self.address or [int(v) for v in echo] != [self.values[0]]:
                return (
                    f"an echo of {response.address} = {[int(v) for v in echo]}, "
                    f"expected {self.address} = {self.values[0]}"
                )
        elif response.address != self.address or response.count != self.count:
            return f"an echo of {response.count} at {response.address}, expected {self.count}"
        return None
