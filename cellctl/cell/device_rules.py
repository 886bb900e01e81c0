"""The rules between devices: units and serial lines, ports and endpoints, security, sim signals."""

from __future__ import annotations

from cellctl.cell.devices import (
    ModbusRtuDevice,
    ModbusTcpDevice,
    OpcuaDevice,
    host_key,
)
from cellctl.cell.rules import Loc, Rules


def check_devices(rules: Rules) -> None:
    """Each device against the others: one unit per bus, one setting per serial line, one
    protocol per TCP port; and each OPC UA device's security, each sim signal's tag."""
    units: dict[tuple[str, int], str] = {}
    lines: dict[str, str] = {}
    servers: dict[tuple[str, int], str] = {}
    for name, device in rules.devices.items():
        if isinstance(device, ModbusTcpDevice | ModbusRtuDevice):
            _check_unit(rules, name, device, units)
        if isinstance(device, ModbusRtuDevice):
            _check_line(rules, name, device, lines)
        if isinstance(device, ModbusTcpDevice | OpcuaDevice):
            _check_server(rules, name, device, servers)
        if isinstance(device, OpcuaDevice):
            _check_security(rules, name, device)
        if device.sim is not None:
            _check_sim_signals(rules, name, device.sim.signals)


def _check_unit(
    rules: Rules,
    name: str,
    device: ModbusTcpDevice | ModbusRtuDevice,
    units: dict[tuple[str, int], str],
) -> None:
    """One unit id per bus: a TCP host:port (a gateway) or a serial line."""
    bus = (
        f"{host_key(device.host)}:{device.port}"
        if isinstance(device, ModbusTcpDevice)
        else device.port
    )
    first = units.setdefault((bus, device.unit), name)
    if first != name:
        rules.add(
            ("devices", name, "unit"),
            "unit-conflict",
            f"device {name}: unit {device.unit} on {bus} is already device "
            f"{first} (line {rules.line(('devices', first))})",
        )


def _serial(device: ModbusRtuDevice) -> tuple[int, str, int, int]:
    return device.baudrate, device.parity, device.stopbits, device.bytesize


def _check_line(rules: Rules, name: str, device: ModbusRtuDevice, lines: dict[str, str]) -> None:
    """The devices on one serial line share its baud rate, parity, stop bits and byte size."""
    first = lines.setdefault(device.port, name)
    other = rules.devices[first]
    if _serial(other) != _serial(device):
        rules.add(
            ("devices", name, "port"),
            "serial-conflict",
            f"device {name}: baudrate, parity, stopbits and bytesize on "
            f"{device.port} must be those of device {first} "
            f"(line {rules.line(('devices', first))}): one line, one setting",
        )


def _check_sim_signals(rules: Rules, name: str, signals: dict[str, str]) -> None:
    """A sim signal names a tag of the device it simulates."""
    for signal, tag in signals.items():
        owner = rules.tags.get(tag)
        if tag not in rules.raw_tags or (owner is not None and owner.device != name):
            loc: Loc = ("devices", name, "sim", "signals", signal)
            rules.add(
                loc,
                "unknown-tag",
                f"device {name}: sim signal {signal!r} names {tag!r}, which is "
                f"not a tag of device {name}",
            )


def _check_server(
    rules: Rules,
    name: str,
    device: ModbusTcpDevice | OpcuaDevice,
    servers: dict[tuple[str, int], str],
) -> None:
    """One TCP port serves one thing: one OPC UA server, or Modbus units behind one gateway."""
    key = (host_key(device.host), device.port)
    first = servers.setdefault(key, name)
    if first == name:
        return
    other = rules.devices[first]
    where = "endpoint" if isinstance(device, OpcuaDevice) else "port"
    at = f"{first} (line {rules.line(('devices', first))})"
    if isinstance(device, ModbusTcpDevice) and isinstance(other, ModbusTcpDevice):
        return  # units behind one gateway share its connection
    if isinstance(device, OpcuaDevice) and isinstance(other, OpcuaDevice):
        if device.endpoint.rstrip("/") == other.endpoint.rstrip("/"):
            message = f"endpoint {device.endpoint} is already device {at}"
        else:
            message = (
                f"endpoint {device.endpoint} shares host and port with device {at}; "
                "an OPC UA server serves one address space per port: use another port"
            )
    else:
        message = f"{key[0]}:{key[1]} is already used by device {at} with another protocol"
    rules.add(("devices", name, where), "endpoint-conflict", f"device {name}: {message}")


def _check_security(rules: Rules, name: str, device: OpcuaDevice) -> None:
    """Credentials and trust settings that only make sense together, and never in clear text."""
    loc: Loc = ("devices", name)
    if device.security != "None":
        for field in ("cert", "key"):
            if getattr(device, field) is None:
                rules.add(
                    (*loc, "security"),
                    "missing",
                    f"device {name}: security {device.security} needs {field!r} "
                    "(the client certificate and its private key)",
                )
    if device.user is not None and device.password_env is None:
        rules.add(
            (*loc, "user"),
            "missing",
            f"device {name}: user {device.user!r} needs password_env, the name of the "
            "environment variable that holds the password",
        )
    if device.user is not None and device.server_cert is None and device.trust_dir is None:
        # The driver refuses it too: a server not known would receive the password.
        rules.add(
            (*loc, "user"),
            "untrusted-server",
            f"device {name}: user {device.user!r} needs the server's certificate: pin it "
            "with server_cert or name a trust_dir that holds it, or any server answering at "
            f"{device.endpoint} would receive the password",
        )
    if device.password_env is not None and device.user is None:
        rules.add((*loc, "password_env"), "missing", f"device {name}: password_env needs a user")
    for field in ("server_cert", "trust_dir"):
        if device.security == "None" and getattr(device, field) is not None:
            # Without a secure channel no certificate is asked for: the setting would
            # look like protection and check nothing.
            rules.add(
                (*loc, field),
                "insecure-trust",
                f"device {name}: {field} is checked only on a secured channel: set "
                "security to Basic256Sha256_Sign or Basic256Sha256_SignAndEncrypt "
                f"(with cert and key), or remove {field}",
            )
    if device.user is not None and device.security != "Basic256Sha256_SignAndEncrypt":
        # The driver refuses it too: without encryption the password may cross the network
        # in clear text.
        rules.add(
            (*loc, "user"),
            "insecure-password",
            f"device {name}: user {device.user!r} needs security "
            "Basic256Sha256_SignAndEncrypt, or the password could cross the network in "
            "clear text",
        )
