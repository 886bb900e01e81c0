"""cellctl: control software for a microfactory production cell: PackML, recipes, Modbus, OPC UA."""

__version__ = "0.1.0"
