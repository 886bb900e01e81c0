"""From the cell file to the driver layer: tags → point specs, devices → configs, CLI values.

Drivers take only these plain specs (drivers.points, drivers.config), never cellctl objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cellctl import textvalue
from cellctl.cell import (
    Cell,
    MemoryDevice,
    ModbusDevice,
    ModbusRtuDevice,
    ModbusTcpDevice,
    OpcuaDevice,
    Tag,
)
from cellctl.errors import (
    BadValue,
    MissingSecret,
    UnknownDevice,
    UnknownMethod,
    UnknownTag,
    did_you_mean,
)
from drivers.base import Value
from drivers.config import (
    MemoryConfig,
    ModbusRtuConfig,
    ModbusTcpConfig,
    OpcuaConfig,
    OpcuaSecurity,
    RequestLimits,
)
from drivers.points import (
    Access,
    DataType,
    MemoryPoint,
    MethodArg,
    MethodSpec,
    ModbusPoint,
    OpcuaPoint,
    Point,
)

DeviceConfig = ModbusTcpConfig | ModbusRtuConfig | OpcuaConfig | MemoryConfig


def get_tag(cell: Cell, tag_name: str) -> Tag:
    """The tag of that name; raises UnknownTag (with a 'did you mean' hint)."""
    tag = cell.tags.get(tag_name)
    if tag is None:
        hint = did_you_mean(tag_name, cell.tags)
        raise UnknownTag(f"unknown tag {tag_name!r}{hint} in cell {cell.cell}", tag=tag_name)
    return tag


def point_for(cell: Cell, tag_name: str) -> Point:
    """The driver-level point of a tag: Modbus table/address/type/word order, NodeId, or key."""
    tag = get_tag(cell, tag_name)
    device = cell.devices[tag.device]
    if isinstance(device, ModbusDevice):
        address = tag.address
        assert address is not None  # a valid cell gives every Modbus tag an address
        return ModbusPoint(
            name=tag_name,
            table=address.table,
            address=address.address,
            datatype=tag.datatype,
            bit=address.bit,
            word_order=tag.word_order or device.word_order,
            access=tag.access,
            length=tag.length or 1,
        )
    if isinstance(device, OpcuaDevice):
        assert tag.node is not None  # a valid cell gives every OPC UA tag a node
        return OpcuaPoint(tag_name, tag.node, tag.datatype, tag.access)
    return MemoryPoint(tag_name, tag.key or tag_name, tag.datatype, tag.access)


def points_by_device(cell: Cell, tag_names: Iterable[str] | None = None) -> dict[str, list[Point]]:
    """Points grouped by device name, in the cell file's order (all tags when names are None)."""
    names = list(cell.tags) if tag_names is None else list(dict.fromkeys(tag_names))
    grouped: dict[str, list[Point]] = {}
    for name in names:
        point = point_for(cell, name)
        grouped.setdefault(cell.tags[name].device, []).append(point)
    return grouped


def device_config(cell: Cell, device_name: str) -> DeviceConfig:
    """The driver's connection config of a device; an OPC UA password is read from its env var."""
    device = cell.devices.get(device_name)
    if device is None:
        hint = did_you_mean(device_name, cell.devices)
        raise UnknownDevice(
            f"unknown device {device_name!r}{hint} in cell {cell.cell}", device=device_name
        )
    if isinstance(device, ModbusTcpDevice):
        return ModbusTcpConfig(
            device_name, device.host, device.port, device.unit, **_modbus_common(device)
        )
    if isinstance(device, ModbusRtuDevice):
        return ModbusRtuConfig(
            device_name,
            device.port,
            device.unit,
            device.baudrate,
            device.parity,
            device.stopbits,
            device.bytesize,
            **_modbus_common(device),
        )
    if isinstance(device, OpcuaDevice):
        return OpcuaConfig(
            name=device_name,
            endpoint=device.endpoint,
            publishing_interval=device.publishing_interval,
            limits=_limits(device),
            security=_security(cell, device_name, device),
        )
    assert isinstance(device, MemoryDevice)
    return MemoryConfig(name=device_name, poll=device.poll)


def _limits(device: ModbusDevice | OpcuaDevice) -> RequestLimits:
    return RequestLimits(device.timeout, device.retries)


def _modbus_common(device: ModbusDevice) -> dict[str, Any]:
    """The keyword fields every Modbus config has (drivers.config.ModbusConfig)."""
    return {
        "poll": device.poll,
        "limits": _limits(device),
        "word_order": device.word_order,
        "max_gap": device.max_gap,
    }


def _security(cell: Cell, device_name: str, device: OpcuaDevice) -> OpcuaSecurity:
    def path(value: str | None) -> str | None:
        return None if value is None else str(cell.base_dir / Path(value).expanduser())

    password: str | None = None
    if device.password_env is not None:
        password = os.environ.get(device.password_env)
        if password is None:
            raise MissingSecret(
                f"device {device_name}: environment variable {device.password_env} "
                "(password_env) is not set",
                device=device_name,
                variable=device.password_env,
            )
    return OpcuaSecurity(
        policy=device.security,
        cert=path(device.cert),
        key=path(device.key),
        server_cert=path(device.server_cert),
        user=device.user,
        password=password,
        trust_dir=path(device.trust_dir),
    )


def method_spec(cell: Cell, name: str) -> MethodSpec:
    """The driver-level spec of a method: object node, browse name, typed args, result."""
    method = cell.methods.get(name)
    if method is None:
        hint = did_you_mean(name, cell.methods)
        raise UnknownMethod(f"unknown method {name!r}{hint} in cell {cell.cell}", method=name)
    args = tuple(MethodArg(arg, datatype) for arg, datatype in method.args.items())
    return MethodSpec(name, method.node, method.method, args, method.result)


def methods_by_device(cell: Cell) -> dict[str, list[MethodSpec]]:
    """Method specs grouped by device name, in the cell file's order."""
    grouped: dict[str, list[MethodSpec]] = {}
    for name, method in cell.methods.items():
        grouped.setdefault(method.device, []).append(method_spec(cell, name))
    return grouped


def text_type(tag: Tag) -> DataType:
    """The type a tag's value is typed as on the command line: engineering units, so a scaled
    integer tag takes any number (its raw value is rounded)."""
    return DataType.FLOAT64 if tag.scaled else tag.datatype


def parse_value(cell: Cell, tag_name: str, text: str) -> Value:
    """A command-line value for a tag, parsed by its type (cellctl.textvalue) and checked for
    a write.

    Raises UnknownTag, or BadValue for a read-only tag, a value of the wrong type or out of
    range (the tag's min/max, and the raw type's range after scale/offset).
    """
    tag = get_tag(cell, tag_name)
    subject = f"tag {tag_name} on device {tag.device}"
    if tag.access is not Access.RW:
        raise BadValue(f"{subject} is read-only")
    try:
        return tag.check_value(textvalue.parse(text, text_type(tag)))
    except BadValue as err:
        raise BadValue(f"{subject}: {err}") from None


def tag_units(cell: Cell) -> dict[str, str]:
    """Each tag's unit, for the tags that state one (the unit column of a tag table)."""
    return {name: tag.unit for name, tag in cell.tags.items() if tag.unit}
