"""The rules of tags: device, addressing by driver, Modbus tables and types, overlaps."""

from __future__ import annotations

from cellctl.cell.model import Tag
from cellctl.cell.rules import Loc, Rules
from drivers import codecs
from drivers.points import Access, DataType, ModbusTable

MODBUS_DRIVERS = ("modbus-tcp", "modbus-rtu")
_TABLE_NAMES = {
    ModbusTable.COIL: "coil",
    ModbusTable.DISCRETE_INPUT: "discrete input",
    ModbusTable.HOLDING_REGISTER: "holding register",
    ModbusTable.INPUT_REGISTER: "input register",
}


def check_tags(rules: Rules) -> None:
    """Each valid tag: its device exists, its fields fit its type and its device's driver."""
    for name, tag in rules.tags.items():
        loc: Loc = ("tags", name)
        rules.known_device(loc, f"tag {name}", tag.device)
        _check_numbers(rules, name, tag)
        driver = rules.drivers.get(tag.device)
        if driver is not None:
            _check_addressing(rules, name, tag, driver)


def _check_addressing(rules: Rules, name: str, tag: Tag, driver: str) -> None:
    """The addressing keys of the device's driver, and only those."""
    loc: Loc = ("tags", name)
    subject = f"tag {name}"
    on = f"device {tag.device} is {driver}"
    if driver in MODBUS_DRIVERS:
        allowed, required = {"address", "length", "word_order"}, "address"
    elif driver == "opcua":
        allowed, required = {"node"}, "node"
    else:
        allowed, required = {"key"}, None
    for field in ("address", "node", "key", "length", "word_order"):
        if getattr(tag, field) is not None and field not in allowed:
            rules.add((*loc, field), "wrong-driver", f"{subject}: {field!r} does not apply, {on}")
    if required is not None and getattr(tag, required) is None:
        example = "address: hr:0" if required == "address" else "node: ns=2;s=Name"
        rules.add(
            loc,
            "missing",
            f"{subject}: missing required key {required!r} ({on}; e.g. {example})",
        )
    if driver in MODBUS_DRIVERS and tag.address is not None:
        _check_modbus(rules, name, tag)


def _check_modbus(rules: Rules, name: str, tag: Tag) -> None:
    """A Modbus address that can hold the tag's type and access."""
    loc: Loc = ("tags", name)
    subject = f"tag {name}"
    address = tag.address
    assert address is not None
    table = address.table
    datatype = tag.datatype
    if (table.is_bit_table or address.bit is not None) and datatype is not DataType.BOOL:
        what = "a register bit" if address.bit is not None else f"a {_TABLE_NAMES[table]}"
        rules.add(
            (*loc, "type"),
            "type-mismatch",
            f"{subject}: {address} is {what}, which holds a bool, not {datatype.value}",
        )
        return
    if datatype is DataType.STRING and tag.length is None:
        rules.add(
            loc,
            "missing",
            f"{subject}: missing required key 'length' (a string's size in registers)",
        )
    if tag.length is not None and datatype is not DataType.STRING:
        rules.add(
            (*loc, "length"),
            "type-mismatch",
            f"{subject}: length applies to strings only, not {datatype.value}",
        )
    if tag.access is Access.RW and not table.writable:
        rules.add(
            (*loc, "access"),
            "read-only",
            f"{subject}: {address} is a {_TABLE_NAMES[table]}, read-only by protocol; "
            "access rw is not possible",
        )
    end = _span(tag)[1]
    if end > 0x10000:
        rules.add(
            (*loc, "address"),
            "bad-address",
            f"{subject}: {datatype.value} at {address} runs past address 65535",
        )


def _check_numbers(rules: Rules, name: str, tag: Tag) -> None:
    """Scale, offset, min and max only on numbers."""
    loc: Loc = ("tags", name)
    subject = f"tag {name}"
    if tag.datatype in (DataType.BOOL, DataType.STRING):
        for field, default in (("scale", 1.0), ("offset", 0.0), ("min", None), ("max", None)):
            if getattr(tag, field) != default:
                rules.add(
                    (*loc, field),
                    "type-mismatch",
                    f"{subject}: {field} applies to numbers, not {tag.datatype.value}",
                )


def check_overlaps(rules: Rules) -> None:
    """Two tags on one device must not share a register, bit, coil, node or key."""
    _check_same_handle(rules)
    whole: dict[tuple[str, ModbusTable, int], str] = {}
    bits: dict[tuple[str, ModbusTable, int], dict[int, str]] = {}
    for name, tag in rules.tags.items():
        address = tag.address
        if rules.drivers.get(tag.device) not in MODBUS_DRIVERS or address is None:
            continue
        start, end = _span(tag)
        clash: str | None = None
        for register in range(start, min(end, 0x10000)):
            slot = (tag.device, address.table, register)
            if address.bit is None:
                clash = clash or whole.get(slot) or next(iter(bits.get(slot, {}).values()), None)
            else:
                clash = clash or whole.get(slot) or bits.get(slot, {}).get(address.bit)
        if clash is not None:
            first = rules.tags[clash]
            rules.add(
                ("tags", name, "address"),
                "address-overlap",
                f"tag {name}: {address} overlaps tag {clash} ({_describe_span(first)}, "
                f"line {rules.line(('tags', clash))}) on device {tag.device}",
            )
            continue
        for register in range(start, min(end, 0x10000)):
            slot = (tag.device, address.table, register)
            if address.bit is None:
                whole[slot] = name
            else:
                bits.setdefault(slot, {})[address.bit] = name


def _check_same_handle(rules: Rules) -> None:
    """Two tags on one OPC UA node or one memory key are a copy-and-paste error."""
    first: dict[tuple[str, str], str] = {}
    for name, tag in rules.tags.items():
        driver = rules.drivers.get(tag.device)
        if driver == "opcua" and tag.node is not None:
            field, handle = "node", tag.node
        elif driver == "memory":
            field, handle = "key", tag.key or name
        else:
            continue
        other = first.setdefault((tag.device, handle), name)
        if other != name:
            rules.add(
                ("tags", name, field),
                "address-overlap",
                f"tag {name}: {field} {handle} is already tag {other} "
                f"(line {rules.line(('tags', other))}) on device {tag.device}",
            )


def _span(tag: Tag) -> tuple[int, int]:
    """The first and one-past-last address a Modbus tag occupies."""
    address = tag.address
    assert address is not None
    if address.table.is_bit_table or address.bit is not None:
        return address.address, address.address + 1
    datatype = tag.datatype
    width = (tag.length or 1) if datatype is DataType.STRING else codecs.register_count(datatype)
    return address.address, address.address + width


def _describe_span(tag: Tag) -> str:
    start, end = _span(tag)
    assert tag.address is not None
    if end - start <= 1:
        return f"{tag.address}, {tag.datatype.value}"
    return f"{tag.address.table.value}:{start}..{end - 1}, {tag.datatype.value}"
