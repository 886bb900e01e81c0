"""The cell file: its model, the rules that span its entries, and loading with located errors.

- fields: the field types (names, Modbus addresses, NodeIds, endpoints, durations);
- devices: one model per driver; model: tags, methods, interlocks, heartbeats, ready, the Cell;
- rules (the context), device_rules, tag_rules, section_rules: the rules between entries;
- load: `load_cell`, the one load path, which reports every problem of a file at once;
- tags: from the model to the driver layer (points, configs, command-line values).

Other packages import from here, not from the modules above.
"""

from cellctl.cell.devices import (
    DRIVERS,
    Device,
    MemoryDevice,
    ModbusDevice,
    ModbusRtuDevice,
    ModbusTcpDevice,
    OpcuaDevice,
    SecurityPolicy,
    SimSpec,
    host_key,
)
from cellctl.cell.fields import (
    Address,
    DeviceName,
    MethodName,
    ModbusAddress,
    NodeId,
    TagName,
    check_node_id,
    parse_address,
)
from cellctl.cell.load import (
    cell_from_document,
    check_cell_file,
    load_cell,
    load_cell_and_bytes,
    read_cell,
)
from cellctl.cell.model import (
    INTEGER_TYPES,
    Cell,
    Heartbeat,
    Interlock,
    Method,
    Ready,
    Tag,
)

__all__ = [
    "DRIVERS",
    "INTEGER_TYPES",
    "Address",
    "Cell",
    "Device",
    "DeviceName",
    "Heartbeat",
    "Interlock",
    "MemoryDevice",
    "Method",
    "MethodName",
    "ModbusAddress",
    "ModbusDevice",
    "ModbusRtuDevice",
    "ModbusTcpDevice",
    "NodeId",
    "OpcuaDevice",
    "Ready",
    "SecurityPolicy",
    "SimSpec",
    "Tag",
    "TagName",
    "cell_from_document",
    "check_cell_file",
    "check_node_id",
    "host_key",
    "load_cell",
    "load_cell_and_bytes",
    "parse_address",
    "read_cell",
]
