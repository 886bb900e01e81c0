"""Modbus TCP and RTU driver: a client per bus, batched reads, confirmed writes, polling.

bus.py: one pymodbus client per TCP gateway or serial line (connect loop, bounded and retried
requests); line.py: that client, and a serial line's quiet after a failed try; ask.py: one
request and the check that an answer is its own; device.py: one unit's reads, writes and
health; driver.py: ModbusDriver (a device plus its poller) and make_modbus_drivers;
subscription.py: one subscriber of the poller.
"""

from drivers.modbus.driver import ModbusDriver, make_modbus_drivers

__all__ = ["ModbusDriver", "make_modbus_drivers"]
